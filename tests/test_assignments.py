"""The classroom tool (nanorlhf/assignments): the table, the ast surgery, make, grade and a subset of selftest.

The full selftest (every catalogued wrong answer, ~2 min) is a command: python -m nanorlhf.assignments selftest.
"""

import ast
import contextlib
import io
import json
from pathlib import Path

import pytest

from nanorlhf.assignments import source
from nanorlhf.assignments.__main__ import leaks, main
from nanorlhf.assignments.bugs import BUGS, apply
from nanorlhf.assignments.exercises import BY_NAME, EXERCISES

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
            source.body_span(text, fn, ex.partial, ex.file)  # raises if the function or its markers are missing
        assert set(ex.prerequisites) <= set(BY_NAME) and ex.unit, ex.name
        for node in ex.unit + ex.learning:
            path, name = node.split("::")
            tree = ast.parse((ROOT / path).read_text())
            assert name in {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}, node


def test_blank_and_transplant_round_trip_every_exercise():
    for ex in EXERCISES:
        text = (ROOT / ex.file).read_text()
        for fn in ex.functions[:1] if ex.partial else ex.functions:
            body = source.extract(text, fn, ex.partial, ex.file)
            blanked = source.replace(text, fn, source.blank_body(ex.message), ex.partial, ex.file)
            assert source.is_blank(source.extract(blanked, fn, ex.partial, ex.file))
            assert f'raise NotImplementedError("exercise {ex.name}: see ASSIGNMENTS.md#{ex.name}")' in blanked
            assert body not in blanked
            doc = ast.get_docstring(source._find_def(ast.parse(text), fn, ex.file))
            if doc and not ex.partial:  # the docstring (the contract) stays
                assert doc == ast.get_docstring(source._find_def(ast.parse(blanked), fn, ex.file))
            assert source.replace(blanked, fn, body, ex.partial, ex.file) == text


def test_catalogue_has_25_wrong_answers_that_apply_to_the_reference():
    assert len(BUGS) >= 25 and len({b.name for b in BUGS}) == len(BUGS)
    assert {b.exercise for b in BUGS} == set(BY_NAME)  # every exercise has wrong answers to catch
    for bug in BUGS:
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
        rest = source.replace(ref, name, source.blank_body(BY_NAME[name].message))  # lines shared with other code
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
    rc, out, _ = run("grade", str(d), "--only", "kl_estimators,ranking_loss,masked_whiten", "--pipeline=false",
                     "--json", str(tmp_path / "g.json"))
    report = json.loads((tmp_path / "g.json").read_text())
    points = {k: v["points"] for k, v in report["exercises"].items()}
    assert points == {"kl_estimators": 5, "ranking_loss": 0, "masked_whiten": 5}, out
    assert report["exercises"]["kl_estimators"]["layers"]["diff"]["passed"]
    assert "not attempted" in report["exercises"]["ranking_loss"]["message"]
    assert rc == 1 and report["total"] == 10 and report["max"] == 20


@needs_git
def test_selftest_subset_catches_and_names_the_layer(tmp_path):
    """A wrong answer the project's tests used to miss (issue 18): caught, by the test added for it."""
    rc, out, _ = run("selftest", "--bugs", "pl_mean_all_positions", "--json", str(tmp_path / "s.json"))
    (row,) = json.loads((tmp_path / "s.json").read_text())
    assert rc == 0 and "1 of 1 wrong answers caught" in out and "caught by unit, diff" in out
    assert row["caught_by"] == ["unit", "diff"]
    assert row["layers"]["unit"]["failed"] == ["tests/test_ppo_math.py::test_policy_loss_ragged_mask_is_sum_over_valid_over_count"]


@needs_git
def test_bug_hunt_copy_is_graded_on_the_planted_bug(tmp_path):
    d = tmp_path / "hunt"
    rc, _, err = run("make", "--out", str(d), "--bug", "kle_k2_no_half", "--verify=false")
    assert rc == 0, err
    text = (d / "nanorlhf/ppo.py").read_text()
    assert "NotImplementedError" not in text and "k2 = log_r ** 2" in text  # working-looking, one wrong answer
    rc, out, _ = run("grade", str(d), "--pipeline=false", "--json", str(tmp_path / "g.json"))
    report = json.loads((tmp_path / "g.json").read_text())
    assert rc == 1 and list(report["exercises"]) == ["kl_estimators"], out
    layers = report["exercises"]["kl_estimators"]["layers"]
    assert report["exercises"]["kl_estimators"]["points"] == 0 and not layers["diff"]["passed"]
    assert layers["unit"]["failed"] == ["tests/test_ppo_math.py::test_kl_estimators_k2_is_half_squared_log_ratio_summed_per_sequence"]
