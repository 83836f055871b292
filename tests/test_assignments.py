"""The classroom tool (nanorlhf/assignments): the table, the ast surgery, make, grade and a subset of
selftest.

The full selftest (every catalogued wrong answer and right alternative through the unit and diff layers, on
three seeds; minutes) is a command: python -m nanorlhf.assignments selftest.
"""

import ast
import contextlib
import io
import json
import re
from pathlib import Path

import pytest

from nanorlhf.assignments import checks, source
from nanorlhf.assignments.__main__ import _env, clip_words, leaks, main, score
from nanorlhf.assignments.bugs import ALTERNATIVES, BUGS, apply
from nanorlhf.assignments.exercises import BY_NAME, EXERCISES
from nanorlhf.precision import SPEEDUP_ENV

ROOT = Path(__file__).resolve().parent.parent


def _git_checkout() -> bool:
    try:
        source.tracked_files(ROOT)
        return True
    except source.SourceError:
        return False


# make, grade and selftest copy the files git tracks: without a checkout (a tarball) they refuse, by design
needs_git = pytest.mark.skipif(not _git_checkout(), reason="needs a git checkout")


def run(*argv):
    """main(argv) in this process: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(list(argv))
    return rc, out.getvalue(), err.getvalue()


def test_table_names_real_functions_and_tests():
    assert len(EXERCISES) >= 12
    for ex in EXERCISES:
        text = (ROOT / ex.file).read_text()
        for fn in ex.functions:
            source.body_span(text, fn, ex.file)  # raises if the function is missing
        assert set(ex.prerequisites) <= set(BY_NAME) and ex.unit, ex.name
        for node in ex.unit + ex.learning:
            path, name = node.split("::")
            tree = ast.parse((ROOT / path).read_text())
            assert name in {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}, node


def test_blank_and_transplant_round_trip_every_exercise():
    for ex in EXERCISES:
        text = (ROOT / ex.file).read_text()
        for fn in ex.functions:
            body = source.extract(text, fn, ex.file)
            blanked = source.replace(text, fn, source.blank_body(ex.message), ex.file)
            assert source.is_blank(source.extract(blanked, fn, ex.file))
            assert f'raise NotImplementedError("exercise {ex.name}: see ASSIGNMENTS.md#{ex.name}")' in blanked
            assert body not in blanked
            doc = ast.get_docstring(source._find_def(ast.parse(text), fn, ex.file))
            if doc:  # the docstring (the contract) stays
                assert doc == ast.get_docstring(source._find_def(ast.parse(blanked), fn, ex.file))
            assert source.replace(blanked, fn, body, ex.file) == text


def test_catalogue_has_25_wrong_answers_that_apply_to_the_reference():
    assert len(BUGS) >= 25 and len({b.name for b in BUGS + ALTERNATIVES}) == len(BUGS + ALTERNATIVES)
    assert {b.exercise for b in BUGS} == set(BY_NAME)  # every exercise has wrong answers to catch
    assert sum(b.only == "diff" for b in BUGS) >= 10  # the comparison with the reference is proven too
    for bug in BUGS + ALTERNATIVES:
        ex = BY_NAME[bug.exercise]
        text = (ROOT / ex.file).read_text()
        wrong = apply(text, bug, ex.file)  # each edit's `old` occurs exactly once
        assert wrong != text
        ast.parse(wrong)


def test_leak_check_finds_a_copied_body(tmp_path):
    body = source.extract((ROOT / "nanorlhf/ppo.py").read_text(), "gae")
    (tmp_path / "notes.py").write_text("# my notes\n" + "\n".join(body.splitlines()[3:7]) + "\n")
    (tmp_path / "clean.py").write_text("x = 1\n")
    assert leaks(tmp_path, ["notes.py", "clean.py"], [body]) and not leaks(tmp_path, ["clean.py"], [body])


def test_assignments_md_has_a_section_per_exercise():
    text = (ROOT / "ASSIGNMENTS.md").read_text()
    for ex in EXERCISES:
        assert f"\n### {ex.name}\n" in text, ex.name
        section = text.split(f"\n### {ex.name}\n")[1].split("\n### ")[0]
        assert ex.file in section and "Then run" in section and "Checks" in section, ex.name


def test_bad_input_is_one_line_and_exit_2(tmp_path):
    rc, _, err = run("make", "--out", str(tmp_path / "x"), "--only", "gae,nosuch", "--verify=false")
    assert rc == 2 and "nosuch" in err and err.count("\n") == 1
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "f").write_text("keep me")
    rc, _, err = run("make", "--out", str(tmp_path / "full"), "--verify=false")
    assert rc == 2 and "not empty" in err and (tmp_path / "full" / "f").read_text() == "keep me"
    rc, _, err = run("grade", str(tmp_path / "missing"))
    assert rc == 2 and "not a directory" in err
    rc, _, err = run("selftest", "--bugs", "nosuch")
    assert rc == 2 and "nosuch" in err
    # --json that cannot be written: refused before any work, not a traceback after all of it
    (tmp_path / "a_file").write_text("keep me")
    for bad in (tmp_path / "a_file" / "grade.json", tmp_path):
        rc, out, err = run("selftest", "--bugs", "pairs_reversed", "--json", str(bad))
        assert rc == 2 and err.count("\n") == 1 and "--json" in err and not out, err
    assert (tmp_path / "a_file").read_text() == "keep me"


@pytest.mark.parametrize("text,said", [
    ('{"exercises": ["gae"', "not JSON"),
    ('["gae"]', "expected"),
    ('{"exercises": ["gae", "nosuch"], "bug": null}', "unknown exercise 'nosuch'"),
    ('{"exercises": [], "bug": "nosuch"}', "unknown bug 'nosuch'"),
])
def test_grade_corrupt_manifest_is_one_line_naming_the_file_and_exit_2(tmp_path, text, said):
    (tmp_path / "assignment.json").write_text(text)
    rc, out, err = run("grade", str(tmp_path), "--pipeline=false")
    assert rc == 2 and err.count("\n") == 1 and not out, err
    assert str(tmp_path / "assignment.json") in err and said in err and "expected" in err


def test_blanked_functions_explain_every_argument_above_the_blank():
    """The docstring is the contract the student reads: every argument of a blanked function is named in
    it."""
    for ex in EXERCISES:
        text = (ROOT / ex.file).read_text()
        for fn in ex.functions:
            node = source._find_def(ast.parse(text), fn, ex.file)
            doc = ast.get_docstring(node) or ""
            args = [a.arg for a in node.args.args + node.args.kwonlyargs if a.arg != "self"]
            missing = [a for a in args if not re.search(rf"\b{a}\b", doc)]
            assert doc and not missing, f"{ex.file}: {fn}: the docstring does not explain {missing}"


def test_score_charges_a_wrong_statistic_its_own_points():
    """policy_loss with ratio_max taken over padding: the diff layer finds ratio_max wrong, and a unit test
    that checks the loss and every stat fails too; only ratio_max's point is lost. Without the diff layer's
    word the failing test costs everything it checks; a failing learning test costs the main part."""
    ex = BY_NAME["policy_loss"]
    unit_all = "tests/test_ppo_math.py::test_policy_loss_gradient_zero_exactly_in_clipped_regions"
    diff = {"passed": False, "parts": {p: {"passed": p != "ratio_max"} for p in ex.part_names}}
    parts = score(ex, {"unit": {"passed": False, "failed": [unit_all]}, "diff": diff})
    assert {p: q["points"] for p, q in parts.items()} == {"loss": 11, "clipfrac": 1, "approx_kl": 1,
                                                          "ratio_mean": 1,
                                                           "ratio_max": 0}
    clean = {"passed": True, "parts": {p: {"passed": True} for p in ex.part_names}}
    parts = score(ex, {"unit": {"passed": False, "failed": [unit_all]}, "diff": clean})
    assert sum(q["points"] for q in parts.values()) == 0
    parts = score(ex, {"learning": {"passed": False, "failed": ["x"]}, "diff": clean})
    assert [p for p, q in parts.items() if q["points"] == 0] == ["loss"]


def test_table_note_is_cut_at_a_word_boundary():
    text = ("stats['ratio_max']: got 1, expected 0.9831814, on edge case 'one valid value', "
            "inf behind the mask ") * 2
    note = clip_words(text, 60)
    assert (len(note) <= 60 and note.endswith(" …") and text.startswith(note[:-2])
            and text[len(note) - 2] == " ")
    assert clip_words("short\nsecond line") == "short"


def test_grader_subprocesses_run_in_fp32():
    """--dtype=auto must pick fp32 in every check the grader starts, whatever this CPU's bf16 speed."""
    assert _env(ROOT)[SPEEDUP_ENV] == "1.0"


DIFF_ONLY = [b for b in BUGS if b.only == "diff"]
HEAVY = ("ppo_ptx", "response_logprobs")  # a model per case: left to the full selftest


@pytest.mark.parametrize("entry", [b for b in DIFF_ONLY + list(ALTERNATIVES) if b.exercise not in HEAVY],
                         ids=lambda b: b.name)
def test_diff_layer_catches_the_wrong_and_accepts_the_right(entry):
    """In this process, on the three seeds: every wrong answer that passes the unit tests fails the comparison
    with the reference, every right answer written another way (a loop, logsumexp instead of log_softmax,
    softplus instead of -logsigmoid) passes it."""
    ex = BY_NAME[entry.exercise]
    reference = checks.load_reference(ROOT, ex.file)
    student = checks.module_from_source(ex.file, apply((ROOT / ex.file).read_text(),
                                                       entry, ex.file), entry.name)
    result = checks.check(ex.name, student, reference, seeds=checks.SEEDS)
    assert result["passed"] == (entry in ALTERNATIVES), result["detail"]
    assert result["seeds"] == [0, 1, 2] and (entry not in ALTERNATIVES or result["cases"] > 20)


def test_diff_layer_gives_the_same_result_every_time():
    """No clock, no global RNG: the same answer, the same cases, the same messages."""
    entry = next(b for b in BUGS if b.name == "pl_ratio_max_over_padding")
    ex = BY_NAME[entry.exercise]
    reference = checks.load_reference(ROOT, ex.file)
    student = checks.module_from_source(ex.file, apply((ROOT / ex.file).read_text(),
                                                       entry, ex.file), entry.name)
    first = checks.check(ex.name, student, reference)
    assert not first["passed"] and [p for p, r in first["parts"].items() if not r["passed"]] == ["ratio_max"]
    assert checks.check(ex.name, student, reference) == first


@needs_git
def test_make_checks_before_writing(tmp_path):
    rc, out, err = run("make", "--out", str(tmp_path / "hw"), "--only", "kl_estimators")
    assert rc == 0, err
    assert "blank kl_estimators: its 3 unit checks and its diff check fail" in out
    assert source.is_blank(source.extract((tmp_path / "hw/nanorlhf/ppo.py").read_text(), "kl_estimators"))


@pytest.fixture(scope="module")
def handout(tmp_path_factory):
    d = tmp_path_factory.mktemp("handout") / "hw"
    rc, _, err = run("make", "--out", str(d), "--only", "kl_estimators,ranking_loss", "--verify=false")
    assert rc == 0, err
    return d


@needs_git
def test_student_copy_has_no_solution_no_history_no_grader(handout):
    d = handout
    assert not (d / ".git").exists() and not (d / "nanorlhf/assignments").exists()
    assert not (d / "tests/test_assignments.py").exists()
    assert json.loads((d / "assignment.json").read_text())["exercises"] == ["ranking_loss", "kl_estimators"]
    for name, path in (("kl_estimators", "nanorlhf/ppo.py"), ("ranking_loss", "nanorlhf/losses.py")):
        assert source.is_blank(source.extract((d / path).read_text(), name))
        ref = (ROOT / path).read_text()
        # lines shared with other code
        rest = source.replace(ref, name, source.blank_body(BY_NAME[name].message))
        solution = [ln.strip() for ln in source.extract(ref, name).splitlines() if len(ln.strip()) > 25]
        solution = [ln for ln in solution if ln not in rest]
        assert len(solution) >= 3
        for f in d.rglob("*"):
            if f.is_file() and f.suffix in (".py", ".md"):
                assert not any(line in f.read_text() for line in solution), (name, f)  # a grep of the copy
    for path in ("nanorlhf/ppo.py", "nanorlhf/losses.py"):  # nothing else was removed
        assert (d / path).read_text().count("def ") == (ROOT / path).read_text().count("def ")


@needs_git
def test_grade_transplants_bodies_and_ignores_edited_tests(handout, tmp_path):
    """The student solves kl_estimators, leaves ranking_loss blank and empties the ranking tests so that
    they pass; masked_whiten is untouched (the reference). Exactly the blank scores 0."""
    d = handout
    ppo = d / "nanorlhf/ppo.py"
    solution = source.extract((ROOT / "nanorlhf/ppo.py").read_text(), "kl_estimators")
    ppo.write_text(source.replace(ppo.read_text(), "kl_estimators", solution))
    names = [n.split("::")[1] for n in BY_NAME["ranking_loss"].unit]
    (d / "tests/test_losses.py").write_text("".join(f"def {n}():\n    pass\n\n" for n in names))
    rc, out, _ = run("grade", str(d), "--only", "kl_estimators,ranking_loss,masked_whiten",
                     "--pipeline=false",
                     "--json", str(tmp_path / "g.json"))
    report = json.loads((tmp_path / "g.json").read_text())
    points = {k: v["points"] for k, v in report["exercises"].items()}
    assert points == {"kl_estimators": 5, "ranking_loss": 0, "masked_whiten": 5}, out
    assert report["exercises"]["kl_estimators"]["layers"]["diff"]["passed"]
    assert "not attempted" in report["exercises"]["ranking_loss"]["message"]
    assert rc == 1 and report["total"] == 10 and report["max"] == 20


@needs_git
def test_selftest_subset_on_three_seeds_proves_the_diff_layer_and_accepts_a_right_answer(tmp_path):
    """A wrong answer only the comparison with the reference catches (log(sigmoid) overflows at extreme
    margins), and a right answer written another way (softplus instead of -logsigmoid) that every layer
    accepts, on seeds 0, 1 and 2. (The bug hunt test below shows a unit test catching, and naming it.)"""
    rc, out, _ = run("selftest", "--bugs", "dpo_log_of_sigmoid,alt_dpo_softplus", "--seeds", "0,1,2",
                     "--json", str(tmp_path / "s.json"))
    rows = {r["entry"]: r for r in json.loads((tmp_path / "s.json").read_text())}
    assert rc == 0 and "1 of 1 wrong answers caught on seeds 0, 1, 2" in out, out
    assert "diff only 1" in out and "1 of 1 right answers written another way accepted" in out, out
    assert rows["dpo_log_of_sigmoid"]["caught_by"] == ["diff"] and rows["dpo_log_of_sigmoid"]["ok"]
    assert rows["alt_dpo_softplus"]["caught_by"] == [] and rows["alt_dpo_softplus"]["ok"]
    assert set(rows["alt_dpo_softplus"]["layers"]) == {"unit", "diff"}


@needs_git
def test_bug_hunt_graded_twice_gives_the_same_report_and_partial_credit(tmp_path):
    """k2 without its 1/2 costs k2's point only; grading the same tree again (here through --explain) gives
    the same report, seeds and messages included; the table names the seeds and --explain prints the whole
    message (the case, the inputs, what came back and what was expected)."""
    d = tmp_path / "hunt"
    rc, _, err = run("make", "--out", str(d), "--bug", "kle_k2_no_half", "--verify=false")
    assert rc == 0, err
    text = (d / "nanorlhf/ppo.py").read_text()
    # working-looking, one wrong answer
    assert "NotImplementedError" not in text and "k2 = log_r ** 2" in text
    rc, out, _ = run("grade", str(d), "--pipeline=false", "--json", str(tmp_path / "g.json"))
    report = json.loads((tmp_path / "g.json").read_text())
    assert rc == 1 and list(report["exercises"]) == ["kl_estimators"], out
    entry = report["exercises"]["kl_estimators"]
    assert entry["points"] == 4 and {p: q["points"]
                                     for p, q in entry["parts"].items()} == {"k1": 2, "k2": 0, "k3": 2}
    assert not entry["layers"]["diff"]["passed"] and entry["layers"]["diff"]["parts"]["k1"]["passed"]
    assert entry["layers"]["unit"]["failed"] == [
        "tests/test_ppo_math.py::test_kl_estimators_k2_is_half_squared_log_ratio_summed_per_sequence"]
    assert "seeds 0, 1, 2" in out and "lost k2 1 pt: ['k2']: got" in out, out
    rc2, explained, _ = run("grade", str(d), "--explain", "kl_estimators", "--json",
                            str(tmp_path / "g2.json"))
    assert rc2 == 1 and json.loads((tmp_path / "g2.json").read_text()) == report
    assert entry["explain"] in explained and "expected:" in explained and "mask:" in explained, explained
