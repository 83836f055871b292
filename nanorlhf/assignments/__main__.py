"""Classroom assignments: blank exercises, hand out a clean copy, grade it, prove the grader catches mistakes.

    python -m nanorlhf.assignments list                              # the exercises (list gae: one in full)
    python -m nanorlhf.assignments make --out hw1 --only gae,ranking_loss   # a student copy, checks verified
    python -m nanorlhf.assignments make --out hunt --bug gae_forward_loop   # a bug hunt: one wrong answer
    python -m nanorlhf.assignments grade hw1                          # points table, hw1/grade.json, exit code
    python -m nanorlhf.assignments selftest                           # every catalogued wrong answer is caught

How grading works (ASSIGNMENTS.md has the instructor's guide): the student's function bodies are lifted
out of their copy with ast and put into a pristine copy of this repository, one exercise at a time (so
an unfinished masked_mean costs masked_mean's points only, and edited tests count for nothing); there
the exercise's checks run in subprocesses: its unit tests, a differential test against the reference on
fresh random inputs, its learning tests; then the micro pipeline runs with every student function at once
and must finish without NaN. An exercise scores its points when every layer passes.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

from nanorlhf.assignments import source
from nanorlhf.assignments.bugs import BUG_BY_NAME, BUGS, apply
from nanorlhf.assignments.exercises import BY_NAME, EXERCISES, PIPELINE_POINTS, Exercise

ROOT = source.ROOT
NOT_HANDED_OUT = ("nanorlhf/assignments", "tests/test_assignments.py")  # the grader, its catalogue, its tests
MANIFEST = "assignment.json"  # written into a student copy: which exercises it holds
TIMEOUT_S = 600  # per subprocess: a student's infinite loop fails the layer instead of hanging the grader
LAYERS = ("unit", "diff", "learning")


class UsageError(ValueError):
    """Bad command-line input: one line, exit 2."""


# ------------------------------------------------------------------------------------- running checks
def _env(copy: Path) -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(copy), "PYTHONDONTWRITEBYTECODE": "1",
            "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}  # the suite needs no third-party plugin: skip importing them


def _start_pytest(copy: Path, nodes: list[str], xml: Path):
    # -k: the Triton kernel is no exercise, and its interpreted cases are most of the run time
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "not triton", f"--junitxml={xml}", *nodes]
    return subprocess.Popen(cmd, cwd=copy, env=_env(copy), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _pytest_results(proc, nodes: list[str], xml: Path) -> dict[str, bool]:
    """{test function node id: passed}; a function passes when every parametrised case passes (skips count
    as passes: a GPU-only case); a node that did not run (timeout, collection error) fails."""
    try:
        out, _ = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        return {n: False for n in nodes}
    ran: dict[str, bool] = {}
    if xml.exists():
        for case in ET.parse(xml).iter("testcase"):
            node = case.get("classname", "").replace(".", "/") + ".py::" + case.get("name", "").split("[")[0]
            ok = case.find("failure") is None and case.find("error") is None
            ran[node] = ran.get(node, True) and ok
    return {n: ran.get(n, False) for n in nodes}


def _start_diff(copy: Path, names: list[str], out: Path, seed: int):
    cmd = [sys.executable, "-m", "nanorlhf.assignments", "_diff", "--ref", str(ROOT), "--json", str(out),
           "--seed", str(seed), *names]
    return subprocess.Popen(cmd, cwd=copy, env=_env(copy), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _diff_results(proc, names: list[str], out: Path) -> dict[str, dict]:
    try:
        log, _ = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        return {n: {"passed": False, "message": f"timed out after {TIMEOUT_S}s"} for n in names}
    if not out.exists():
        return {n: {"passed": False, "message": f"the check crashed: {log[-300:]}"} for n in names}
    return json.loads(out.read_text())


def run_layers(copy: Path, exercises: list[Exercise], layers=LAYERS, nodes: list[str] | None = None,
               seed: int | None = None) -> tuple[dict[str, dict], dict[str, bool]]:
    """Run `layers` of `exercises` in `copy`: pytest (unit, learning, plus any extra `nodes`) and the
    differential checks, the two as concurrent subprocesses. Returns ({exercise: {layer: {"passed",
    "failed"/"message"}}}, {node: passed} for every node run)."""
    seed = int(time.time()) if seed is None else seed
    want = sorted({n for e in exercises for layer in ("unit", "learning") if layer in layers for n in getattr(e, layer)}
                  | set(nodes or ()))
    diff_names = [e.name for e in exercises if "diff" in layers and e.diff]
    tag = f"{os.getpid()}_{time.monotonic_ns()}"
    xml, diff_json = copy / f".pytest_{tag}.xml", copy / f".diff_{tag}.json"
    procs = (_start_pytest(copy, want, xml) if want else None, _start_diff(copy, diff_names, diff_json, seed) if diff_names else None)
    node_ok = _pytest_results(procs[0], want, xml) if procs[0] else {}
    diff = _diff_results(procs[1], diff_names, diff_json) if procs[1] else {}
    results = {}
    for e in exercises:
        r = {}
        for layer in ("unit", "learning"):
            if layer in layers and getattr(e, layer):
                failed = [n for n in getattr(e, layer) if not node_ok[n]]
                r[layer] = {"passed": not failed, "failed": failed}
        if e.name in diff:
            r["diff"] = diff[e.name]
        results[e.name] = r
    return results, node_ok


def caught_by(layers: dict) -> list[str]:
    return [name for name in LAYERS if name in layers and not layers[name]["passed"]]


# ----------------------------------------------------------------------------------------------- copies
def pristine_copy(dest: Path) -> Path:
    """A copy of this repository's tracked files (the grader included) in dest."""
    source.copy_tree(dest, ROOT)
    return dest


def blank(copy: Path, ex: Exercise) -> None:
    for fn in (ex.functions[:1] if ex.partial else ex.functions):
        source.edit_file(copy / ex.file, lambda t: source.replace(t, fn, source.blank_body(ex.message), ex.partial, ex.file))


def plant(copy: Path, bug_name: str) -> None:
    bug = BUG_BY_NAME[bug_name]
    ex = BY_NAME[bug.exercise]
    source.edit_file(copy / ex.file, lambda t: apply(t, bug, ex.file))


def student_bodies(student: Path, ex: Exercise) -> dict[str, str]:
    """{function: body} from the student's copy; raises SourceError naming what is missing."""
    path = student / ex.file
    if not path.is_file():
        raise source.SourceError(f"{path}: missing (expected the handout's {ex.file})")
    text = path.read_text()
    return {fn: source.extract(text, fn, ex.partial, str(path)) for fn in (ex.functions[:1] if ex.partial else ex.functions)}


def transplant(copy: Path, ex: Exercise, bodies: dict[str, str]) -> None:
    for fn, body in bodies.items():
        source.edit_file(copy / ex.file, lambda t: source.replace(t, fn, body, ex.partial, ex.file))


def leaks(copy: Path, files: list[str], bodies: list[str], window: int = 3) -> list[str]:
    """'file: first line' for every run of `window` consecutive lines of a solution body found in the copy."""
    def norm(text):
        return [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    runs = set()
    for body in bodies:
        lines = norm(body)
        for i in range(max(1, len(lines) - window + 1)):
            runs.add(tuple(lines[i:i + window]))
    found = []
    for f in files:
        try:
            lines = norm((copy / f).read_text())
        except UnicodeDecodeError:
            continue
        hit = {tuple(lines[i:i + len(r)]) for r in runs for i in range(len(lines)) if tuple(lines[i:i + len(r)]) == r}
        found += [f"{f}: {r[0]}" for r in sorted(hit)]
    return found


def parse_names(text: str | None, default: list[str]) -> list[str]:
    if text is None:
        return default
    names = [n for n in (s.strip() for s in text.split(",")) if n]
    if names == ["all"]:
        return [e.name for e in EXERCISES]
    bad = [n for n in names if n not in BY_NAME]
    if bad:
        raise UsageError(f"--only: unknown exercise {bad[0]!r}; expected a comma list of: {', '.join(BY_NAME)}")
    return [e.name for e in EXERCISES if e.name in names]  # table order: prerequisites first


# -------------------------------------------------------------------------------------------- commands
def cmd_list(args) -> int:
    if args.bugs:
        for b in BUGS:
            print(f"{b.name:28s} {b.exercise:20s} {b.what}")
        print(f"{len(BUGS)} wrong answers in the catalogue (instructor only: not in the student copy)")
        return 0
    if args.name:
        ex = BY_NAME.get(args.name)
        if ex is None:
            raise UsageError(f"unknown exercise {args.name!r}; expected one of: {', '.join(BY_NAME)}")
        print(f"{ex.name} ({ex.points} points): {ex.file} {', '.join(ex.functions)}{' (the SOLUTION lines)' * ex.partial}")
        print(f"  equation:      {ex.equation}")
        print(f"  prerequisites: {', '.join(ex.prerequisites) or 'none'}")
        print(f"  then run:      {ex.stage}")
        for layer in ("unit", "learning"):
            for n in getattr(ex, layer):
                print(f"  {layer:9s} {n}")
        if ex.diff:
            print(f"  diff      nanorlhf/assignments/checks.py::{ex.name} (hidden: fresh random inputs vs the reference)")
        return 0
    print(f"{'exercise':20s} {'pts':>3s}  {'file: function':58s} prerequisites")
    for e in EXERCISES:
        where = f"{e.file}: {', '.join(e.functions)}{' (partial)' * e.partial}"
        print(f"{e.name:20s} {e.points:3d}  {where:58s} {', '.join(e.prerequisites) or '-'}")
    total = sum(e.points for e in EXERCISES) + PIPELINE_POINTS
    print(f"{'pipeline':20s} {PIPELINE_POINTS:3d}  micro pipeline with every handed-out exercise at once   (total {total})")
    return 0


def verify(names: list[str], bug: str | None, tmp: Path) -> None:
    """make's pre-write checks: the reference passes every listed check; each blank fails all of its own
    (and how many checks of other exercises it breaks is printed); a planted bug is caught."""
    exercises = [BY_NAME[n] for n in names]
    print(f"make: checking the reference passes the checks of {', '.join(names) or bug}")
    checked = exercises + ([BY_NAME[BUG_BY_NAME[bug].exercise]] if bug else [])
    results, _ = run_layers(pristine_copy(tmp / "reference"), list({e.name: e for e in checked}.values()))
    broken = {n: caught_by(r) for n, r in results.items() if caught_by(r)}
    if broken:
        raise RuntimeError(f"the reference fails its own checks ({broken}); fix them before handing out")
    all_unit = sorted({n for e in EXERCISES for n in e.unit})
    for ex in exercises:
        copy = pristine_copy(tmp / f"blank_{ex.name}")
        blank(copy, ex)
        res, node_ok = run_layers(copy, [ex], layers=("unit", "diff"), nodes=all_unit)
        still = [n for n in ex.unit if node_ok[n]] + (["diff"] if res[ex.name].get("diff", {}).get("passed") else [])
        if still:
            raise RuntimeError(f"blank {ex.name}: {still} still pass: they cannot grade it")
        others = [n for n in all_unit if n not in ex.unit and not node_ok[n]]
        hit = sorted({e.name for e in EXERCISES if e is not ex and set(e.unit) & set(others)})
        print(f"  blank {ex.name}: its {len(ex.unit)} unit checks and its diff check fail; it breaks {len(others)} "
              f"checks of other exercises{' (' + ', '.join(hit) + ')' if hit else ''}")
    if bug:
        ex = BY_NAME[BUG_BY_NAME[bug].exercise]
        copy = pristine_copy(tmp / "bug")
        plant(copy, bug)
        res, _ = run_layers(copy, [ex])
        if not caught_by(res[ex.name]):
            raise RuntimeError(f"bug {bug} passes every check of {ex.name}: grading could not find it")
        print(f"  bug {bug}: caught by {', '.join(caught_by(res[ex.name]))}")


def cmd_make(args) -> int:
    out = Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UsageError(f"--out {out}: exists and is not empty (a handout never overwrites anything)")
    if args.bug and args.bug not in BUG_BY_NAME:
        raise UsageError(f"--bug {args.bug!r}: unknown; `list --bugs` names the catalogue")
    names = parse_names(args.only, [] if args.bug else [e.name for e in EXERCISES])
    if args.bug and BUG_BY_NAME[args.bug].exercise in names:
        raise UsageError(f"--bug {args.bug}: its exercise {BUG_BY_NAME[args.bug].exercise} is also blanked by --only")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".handout_", dir=out.parent) as tmp:
        tmp = Path(tmp)
        if args.verify and (names or args.bug):
            verify(names, args.bug, tmp)
        copy = tmp / "student"
        files = source.copy_tree(copy, ROOT, exclude=NOT_HANDED_OUT)
        solutions = []
        for n in names:
            ex = BY_NAME[n]
            solutions += student_bodies(copy, ex).values()
            blank(copy, ex)
        if args.bug:
            plant(copy, args.bug)
        found = leaks(copy, files, [b for b in solutions if not source.is_blank(b)])
        if found:
            raise RuntimeError(f"the copy still holds solution lines: {found[:5]}")
        if (copy / ".git").exists():
            raise RuntimeError("the copy holds .git")
        (copy / MANIFEST).write_text(json.dumps({"exercises": names, "bug": args.bug}, indent=1) + "\n")
        if out.exists():
            out.rmdir()
        os.replace(copy, out)
    what = f"exercises {', '.join(names)}" if names else "no blanks"
    print(f"make: wrote {out} ({len(files)} tracked files, no git history; {what}"
          f"{'; a planted bug: ' + args.bug if args.bug else ''}). Grade it with: python -m nanorlhf.assignments grade {out}")
    return 0


def pipeline(copy: Path) -> dict:
    """The micro pipeline up to PPO-ptx in `copy` (every student function at once): exit 0 and no NaN."""
    out = copy / "_pipeline"
    cmd = [sys.executable, "-m", "nanorlhf", "--preset=micro", "--stop_after=ppo_ptx", f"--data_dir={out}/data",
           f"--out_dir={out}/out"]
    try:
        r = subprocess.run(cmd, cwd=copy, env=_env(copy), capture_output=True, text=True, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return {"passed": False, "message": f"timed out after {TIMEOUT_S}s"}
    if r.returncode != 0:  # the stage that failed and the error it raised
        lines = [ln.strip() for ln in (r.stdout + r.stderr).splitlines()]
        said = [ln for ln in lines if ln.startswith("pipeline: stage")][-1:] + [ln for ln in lines if "Error" in ln][-1:]
        return {"passed": False, "message": f"exit {r.returncode}: {' '.join(said) or lines[-1:]}"}
    for run in ("ppo", "ppo_ptx"):
        rows = json.loads((out / "out" / run / "history.json").read_text())["history"]
        bad = [(row["iteration"], k) for row in rows for k, v in row.items() if isinstance(v, float) and not math.isfinite(v)]
        if bad:
            return {"passed": False, "message": f"{run}: non-finite {bad[0][1]} at iteration {bad[0][0]}"}
    return {"passed": True, "message": ""}


def cmd_grade(args) -> int:
    student = Path(args.dir)
    if not student.is_dir():
        raise UsageError(f"{student}: not a directory (expected a student copy made by `make`)")
    default = [e.name for e in EXERCISES]
    if (student / MANIFEST).exists():  # what the handout holds: its blanks, or the exercise of its planted bug
        manifest = json.loads((student / MANIFEST).read_text())
        default = (manifest["exercises"] + ([BUG_BY_NAME[manifest["bug"]].exercise] if manifest.get("bug") else [])
                   or default)  # a copy with no blank and no bug: everything
    names = parse_names(args.only, default)
    seed = int(time.time()) if args.seed is None else args.seed
    report: dict = {"exercises": {}, "student": str(student), "seed": seed}
    with tempfile.TemporaryDirectory(prefix="grade_") as tmp:
        tmp = Path(tmp)
        all_bodies = {}
        for name in names:
            ex = BY_NAME[name]
            entry = {"points": 0, "max": ex.points, "layers": {}, "message": ""}
            report["exercises"][name] = entry
            try:
                bodies = student_bodies(student, ex)
            except source.SourceError as e:
                entry["message"] = str(e)
                continue
            all_bodies[name] = bodies
            if any(source.is_blank(b) for b in bodies.values()):
                entry["message"] = "not attempted (still raises NotImplementedError)"
                continue
            copy = pristine_copy(tmp / name)
            try:
                transplant(copy, ex, bodies)
            except source.SourceError as e:
                entry["message"] = str(e)
                continue
            res, _ = run_layers(copy, [ex], seed=seed)
            entry["layers"] = res[name]
            entry["points"] = 0 if caught_by(res[name]) else ex.points
        if args.pipeline:
            copy = pristine_copy(tmp / "pipeline")
            try:
                for name, bodies in all_bodies.items():
                    transplant(copy, BY_NAME[name], bodies)
                p = pipeline(copy)
            except source.SourceError as e:
                p = {"passed": False, "message": str(e)}
            report["pipeline"] = {**p, "points": PIPELINE_POINTS * p["passed"], "max": PIPELINE_POINTS}
    rows = list(report["exercises"].items()) + ([("pipeline", report["pipeline"])] if "pipeline" in report else [])
    report["total"] = sum(r["points"] for _, r in rows)
    report["max"] = sum(r["max"] for _, r in rows)
    print(f"{'exercise':20s} {'points':>9s}  {'unit':5s} {'diff':5s} {'learn':5s}  note")
    for name, r in rows:
        layers = r.get("layers", {})
        marks = [("pass" if layers[k]["passed"] else "FAIL") if k in layers else "-" for k in LAYERS]
        note = r.get("message", "")
        for k in LAYERS:
            if k in layers and not layers[k]["passed"]:
                note = note or (", ".join(layers[k].get("failed", [])) or layers[k].get("message", ""))
        if name == "pipeline":
            marks = ["pass" if r["passed"] else "FAIL", "", ""]
        print(f"{name:20s} {r['points']:4d} / {r['max']:2d}  {marks[0]:5s} {marks[1]:5s} {marks[2]:5s}  {note[:150]}")
    print(f"{'total':20s} {report['total']:4d} / {report['max']}")
    out = Path(args.json) if args.json else student / "grade.json"
    tmp_json = out.with_name(out.name + ".tmp")
    tmp_json.write_text(json.dumps(report, indent=1) + "\n")
    os.replace(tmp_json, out)
    print(f"grade: wrote {out}")
    return 0 if report["total"] == report["max"] else 1


def cmd_selftest(args) -> int:
    bugs = [b.name for b in BUGS] if args.bugs in (None, "all") else [s.strip() for s in args.bugs.split(",") if s.strip()]
    bad = [b for b in bugs if b not in BUG_BY_NAME]
    if bad:
        raise UsageError(f"--bugs: unknown wrong answer {bad[0]!r}; `list --bugs` names the catalogue")
    exercises = [e for e in EXERCISES if e.name in {BUG_BY_NAME[b].exercise for b in bugs}]
    rows, t0 = [], time.time()
    with tempfile.TemporaryDirectory(prefix="selftest_") as tmp:
        tmp = Path(tmp)
        reference = pristine_copy(tmp / "reference")
        first = ("unit", "diff", "learning") if args.all_layers else ("unit", "diff")
        res, _ = run_layers(reference, exercises, layers=first, seed=args.seed)
        learning_ok = {e.name for e in exercises} if args.all_layers else set()

        def reference_fails(res):
            broken = {n: caught_by(r) for n, r in res.items() if caught_by(r)}
            if broken:
                print(f"selftest: the reference fails its own checks: {broken}")
            return bool(broken)
        if reference_fails(res):
            return 1
        print(f"selftest: the reference passes the {', '.join(first)} layers of {len(exercises)} exercises; "
              f"now {len(bugs)} wrong answers")
        for name in bugs:
            bug = BUG_BY_NAME[name]
            ex = BY_NAME[bug.exercise]
            copy = pristine_copy(tmp / name)
            plant(copy, name)
            res, _ = run_layers(copy, [ex], layers=("unit", "diff"), seed=args.seed)
            layers = res[ex.name]
            if (args.all_layers or not caught_by(layers)) and ex.learning:
                if ex.name not in learning_ok:  # the reference must pass a learning check before it can convict
                    if reference_fails(run_layers(reference, [ex], layers=("learning",))[0]):
                        return 1
                    learning_ok.add(ex.name)
                layers.update(run_layers(copy, [ex], layers=("learning",))[0][ex.name])
            caught = caught_by(layers)
            rows.append({"bug": name, "exercise": ex.name, "what": bug.what, "caught_by": caught, "layers": layers})
            print(f"  {name:28s} {ex.name:20s} {'caught by ' + ', '.join(caught) if caught else 'MISSED'}", flush=True)
    missed = [r["bug"] for r in rows if not r["caught_by"]]
    unit = sum("unit" in r["caught_by"] for r in rows)
    print(f"selftest: {len(rows) - len(missed)} of {len(rows)} wrong answers caught ({unit} by the project's unit tests"
          f"{', every layer run' if args.all_layers else ''}) in {time.time() - t0:.0f}s"
          + (f"; MISSED: {', '.join(missed)}" if missed else ""))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")
    return 1 if missed else 0


def cmd_diff(args) -> int:
    """Internal: run the differential checks in the current copy (grade starts it in a subprocess)."""
    from nanorlhf.assignments import checks

    results = checks.run(args.names, Path(args.ref), args.seed)
    Path(args.json).write_text(json.dumps(results))
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m nanorlhf.assignments", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("list", help="the exercise table (or one exercise, or the wrong-answer catalogue)")
    s.add_argument("name", nargs="?", help="one exercise in full")
    s.add_argument("--bugs", action="store_true", help="the catalogue of wrong answers (instructor only)")
    s = sub.add_parser("make", help="write a student copy")
    s.add_argument("--out", required=True, help="new directory for the copy (must not exist or be empty)")
    s.add_argument("--only", help="comma list of exercises to blank (default all; 'all'; '' for none)")
    s.add_argument("--bug", help="plant this catalogued wrong answer (a bug hunt); blanks nothing unless --only")
    s.add_argument("--verify", type=_bool, default=True, help="run the pre-write checks (default true)")
    s = sub.add_parser("grade", help="grade a student copy")
    s.add_argument("dir", help="the student's copy")
    s.add_argument("--only", help="comma list of exercises (default: the copy's assignment.json, else all)")
    s.add_argument("--json", help="where to write the results (default DIR/grade.json)")
    s.add_argument("--pipeline", type=_bool, default=True, help="run the micro pipeline (~30 s; default true)")
    s.add_argument("--seed", type=int, help="seed of the differential checks' inputs (default: the clock)")
    s = sub.add_parser("selftest", help="prove grade catches every catalogued wrong answer")
    s.add_argument("--bugs", help="comma list (default all)")
    s.add_argument("--all_layers", action="store_true", help="run every layer on every bug (which layers catch what)")
    s.add_argument("--json", help="write the per-bug results here")
    s.add_argument("--seed", type=int)
    s = sub.add_parser("_diff")
    s.add_argument("names", nargs="*")
    s.add_argument("--ref", required=True)
    s.add_argument("--json", required=True)
    s.add_argument("--seed", type=int, required=True)
    return p


def _bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    commands = {"list": cmd_list, "make": cmd_make, "grade": cmd_grade, "selftest": cmd_selftest, "_diff": cmd_diff}
    try:
        return commands[args.command](args)
    except (UsageError, source.SourceError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except RuntimeError as e:
        print(f"{args.command}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
