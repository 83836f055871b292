"""Classroom assignments: blank exercises, hand out a clean copy, grade it, prove the grader catches mistakes.

    python -m nanorlhf.assignments list                     # the exercises (list gae: one in full)
    python -m nanorlhf.assignments make --out hw1 --only gae,ranking_loss   # a student copy, checks verified
    python -m nanorlhf.assignments make --out hunt --bug gae_forward_loop   # a bug hunt: one wrong answer
    python -m nanorlhf.assignments grade hw1                # points table, hw1/grade.json, exit code
    python -m nanorlhf.assignments grade hw1 --explain gae  # one exercise's failures in full
    python -m nanorlhf.assignments selftest                 # every catalogued wrong answer is caught

Grading (ASSIGNMENTS.md has it in full) lifts the student's bodies out with ast into a pristine copy of this
repository, one exercise at a time, and runs its unit tests, diff against the reference (checks.SEEDS) and
learning tests; then the micro pipeline, every student function at once, without NaN. Same tree, same score.
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
from pathlib import Path

from nanorlhf.assignments import source
from nanorlhf.assignments.bugs import ALT_BY_NAME, ALTERNATIVES, BUG_BY_NAME, BUGS
from nanorlhf.assignments.exercises import BY_NAME, EXERCISES, PIPELINE_POINTS, Exercise
from nanorlhf.assignments.grading import (LAYERS, ROOT, SEEDS, TIMEOUT_S, _env, blank, caught_by, clip_words,
                                         explain, leaks, plant, pristine_copy, run_layers, score,
                                         student_bodies, transplant)
from nanorlhf.files import WriteError, atomic_write, make_folder

NOT_HANDED_OUT = ("nanorlhf/assignments", "tests/test_assignments.py")  # the grader, its catalogue, its tests
MANIFEST = "assignment.json"  # written into a student copy: which exercises it holds


def check_file(name: str) -> str:
    """The checks_*.py holding the exercise's differential check (read, not imported: it imports torch)."""
    for path in sorted(Path(__file__).parent.glob("checks_*.py")):
        if f"\ndef {name}(" in path.read_text():
            return f"nanorlhf/assignments/{path.name}"
    return "nanorlhf/assignments/checks.py"


class UsageError(ValueError):
    """Bad command-line input: one line, exit 2."""


def parse_names(text: str | None, default: list[str]) -> list[str]:
    if text is None:
        return default
    names = [n for n in (s.strip() for s in text.split(",")) if n]
    if names == ["all"]:
        return [e.name for e in EXERCISES]
    bad = [n for n in names if n not in BY_NAME]
    if bad:
        raise UsageError(
            f"--only: unknown exercise {bad[0]!r}; expected a comma list of: {', '.join(BY_NAME)}")
    return [e.name for e in EXERCISES if e.name in names]  # table order: prerequisites first


# -------------------------------------------------------------------------------------------- commands
def cmd_list(args) -> int:
    if args.bugs:
        for b in BUGS:
            print(f"{b.name:28s} {b.exercise:20s} {b.what}{' (diff only)' if b.only else ''}")
        print(f"{len(BUGS)} wrong answers in the catalogue, {sum(bool(b.only) for b in BUGS)} of them caught "
              f"only by the diff layer (instructor only: not in the student copy). Right answers written "
              "another way:")
        for b in ALTERNATIVES:
            print(f"{b.name:28s} {b.exercise:20s} {b.what}")
        return 0
    if args.name:
        ex = BY_NAME.get(args.name)
        if ex is None:
            raise UsageError(f"unknown exercise {args.name!r}; expected one of: {', '.join(BY_NAME)}")
        print(f"{ex.name} ({ex.points} points): {ex.file} {', '.join(ex.functions)}")
        print(f"  equation:      {ex.equation}")
        print(f"  prerequisites: {', '.join(ex.prerequisites) or 'none'}")
        print(f"  then run:      {ex.stage}")
        for layer in ("unit", "learning"):
            for n in getattr(ex, layer):
                print(f"  {layer:9s} {n}")
        if ex.diff:
            print(f"  diff      {check_file(ex.name)}::{ex.name} (hidden: fixed edge cases, and "
                  f"random cases on seeds {', '.join(map(str, SEEDS))}, against the reference)")
        print(f"  points:        {', '.join(f'{p} {n}' for p, n in ex.points_of.items())}")
        return 0
    print(f"{'exercise':20s} {'pts':>3s}  {'file: function':58s} prerequisites")
    for e in EXERCISES:
        where = f"{e.file}: {', '.join(e.functions)}"
        print(f"{e.name:20s} {e.points:3d}  {where:58s} {', '.join(e.prerequisites) or '-'}")
    total = sum(e.points for e in EXERCISES) + PIPELINE_POINTS
    print(f"{'pipeline':20s} {PIPELINE_POINTS:3d}  micro pipeline with every handed-out exercise at once"
          f"   (total {total})")
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
        still = ([n for n in ex.unit if node_ok[n]]
                 + (["diff"] if res[ex.name].get("diff", {}).get("passed") else []))
        if still:
            raise RuntimeError(f"blank {ex.name}: {still} still pass: they cannot grade it")
        others = [n for n in all_unit if n not in ex.unit and not node_ok[n]]
        hit = sorted({e.name for e in EXERCISES if e is not ex and set(e.unit) & set(others)})
        print(f"  blank {ex.name}: its {len(ex.unit)} unit checks and its diff check fail; it breaks "
              f"{len(others)} checks of other exercises{' (' + ', '.join(hit) + ')' if hit else ''}")
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
        raise UsageError(
            f"--bug {args.bug}: its exercise {BUG_BY_NAME[args.bug].exercise} is also blanked by --only")
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
          f"{'; a planted bug: ' + args.bug if args.bug else ''}). Grade it with: "
          f"python -m nanorlhf.assignments grade {out}")
    return 0


def pipeline(copy: Path) -> dict:
    """The micro pipeline up to PPO-ptx in `copy` (every student function at once): exit 0 and no NaN.
    --dtype=fp32: the grade must not depend on whether this CPU makes --dtype=auto pick bf16."""
    out = copy / "_pipeline"
    cmd = [sys.executable, "-m", "nanorlhf", "--preset=micro", "--stop_after=ppo_ptx", "--dtype=fp32",
           f"--data_dir={out}/data", f"--out_dir={out}/out"]
    try:
        r = subprocess.run(cmd, cwd=copy, env=_env(copy), capture_output=True, text=True, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return {"passed": False, "message": f"timed out after {TIMEOUT_S}s"}
    if r.returncode != 0:  # the stage that failed and the error it raised
        lines = [ln.strip() for ln in (r.stdout + r.stderr).splitlines()]
        said = ([ln for ln in lines if ln.startswith("pipeline: stage")][-1:]
                + [ln for ln in lines if "Error" in ln][-1:])
        return {"passed": False, "message": f"exit {r.returncode}: {' '.join(said) or lines[-1:]}",
                "detail": "\n".join(lines[-40:])}
    for run in ("ppo", "ppo_ptx"):
        rows = json.loads((out / "out" / run / "history.json").read_text())["history"]
        bad = [(row["iteration"], k) for row in rows for k, v in row.items()
               if isinstance(v, float) and not math.isfinite(v)]
        if bad:
            return {"passed": False, "message": f"{run}: non-finite {bad[0][1]} at iteration {bad[0][0]}"}
    return {"passed": True, "message": ""}


def read_manifest(student: Path) -> list[str] | None:
    """The exercises a handout holds (its blanks, or the exercise of its planted bug), from assignment.json;
    None without one. A file that is not what make writes: UsageError naming it and what was expected."""
    path = student / MANIFEST
    if not path.exists():
        return None
    expected = ('expected {"exercises": [exercise names], "bug": null or a catalogued bug}, '
                'as `make` writes it')
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise UsageError(f"{path}:{e.lineno}: not JSON ({e.msg}); {expected}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"{path}: cannot be read ({type(e).__name__}); {expected}") from None
    names = data.get("exercises") if isinstance(data, dict) else None
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise UsageError(f"{path}: {expected}")
    unknown = [n for n in names if n not in BY_NAME]
    if unknown:
        raise UsageError(
            f"{path}: unknown exercise {unknown[0]!r}; expected names from: {', '.join(BY_NAME)}")
    bug = data.get("bug")
    if bug is not None and bug not in BUG_BY_NAME:
        raise UsageError(f"{path}: unknown bug {bug!r}; expected null or a name that `list --bugs` prints")
    return names + ([BUG_BY_NAME[bug].exercise] if bug else [])


def parse_seeds(text: str | None) -> tuple[int, ...]:
    if text is None:
        return SEEDS
    try:
        seeds = tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        seeds = ()
    if not seeds:
        raise UsageError(f"--seeds {text!r}: expected a comma list of integers, e.g. 0,1,2")
    return seeds


def grade_exercise(student: Path, ex: Exercise, tmp: Path, seeds) -> tuple[dict, dict | None]:
    """(entry for grade.json, the student's bodies or None): points per part, layers, message, explanation."""
    entry = {"points": 0, "max": ex.points, "parts": {}, "layers": {}, "message": "", "explain": ""}
    try:
        bodies = student_bodies(student, ex)
    except source.SourceError as e:
        entry["message"] = entry["explain"] = str(e)
        return entry, None
    if any(source.is_blank(b) for b in bodies.values()):
        entry["message"] = entry["explain"] = "not attempted (still raises NotImplementedError)"
        return entry, bodies
    copy = pristine_copy(tmp / ex.name)
    try:
        transplant(copy, ex, bodies)
    except source.SourceError as e:
        entry["message"] = entry["explain"] = str(e)
        return entry, None
    res, _ = run_layers(copy, [ex], seeds=seeds)
    entry["layers"] = res[ex.name]
    entry["parts"] = score(ex, res[ex.name])
    entry["points"] = sum(p["points"] for p in entry["parts"].values())
    entry["message"], entry["explain"] = explain(ex, res[ex.name])
    return entry, bodies


def cmd_grade(args) -> int:
    student = Path(args.dir)
    if not student.is_dir():
        raise UsageError(f"{student}: not a directory (expected a student copy made by `make`)")
    default = read_manifest(student) or [e.name for e in EXERCISES]  # a copy with no blank and no bug: all
    if args.explain is not None and args.explain not in BY_NAME:
        raise UsageError(
            f"--explain {args.explain!r}: unknown exercise; expected one of: {', '.join(BY_NAME)}")
    names = [args.explain] if args.explain else parse_names(args.only, default)
    seeds = parse_seeds(args.seeds)
    run_pipeline = args.pipeline and not args.explain
    report: dict = {"exercises": {}, "student": str(student), "seeds": list(seeds)}
    with tempfile.TemporaryDirectory(prefix="grade_") as tmp:
        tmp = Path(tmp)
        all_bodies = {}
        for name in names:
            report["exercises"][name], bodies = grade_exercise(student, BY_NAME[name], tmp, seeds)
            if bodies is not None and not any(source.is_blank(b) for b in bodies.values()):
                all_bodies[name] = bodies
        if run_pipeline:
            copy = pristine_copy(tmp / "pipeline")
            try:
                for name, bodies in all_bodies.items():
                    transplant(copy, BY_NAME[name], bodies)
                p = pipeline(copy)
            except source.SourceError as e:
                p = {"passed": False, "message": str(e)}
            report["pipeline"] = {**p, "points": PIPELINE_POINTS * p["passed"], "max": PIPELINE_POINTS}
    rows = (list(report["exercises"].items())
            + ([("pipeline", report["pipeline"])] if "pipeline" in report else []))
    report["total"] = sum(r["points"] for _, r in rows)
    report["max"] = sum(r["max"] for _, r in rows)
    print(f"grade {student}: diff layer on seeds {', '.join(map(str, seeds))} (and its fixed edge cases)")
    print(f"{'exercise':20s} {'points':>9s}  {'unit':5s} {'diff':5s} {'learn':5s}  note")
    for name, r in rows:
        layers = r.get("layers", {})
        marks = [("pass" if layers[k]["passed"] else "FAIL") if k in layers else "-" for k in LAYERS]
        if name == "pipeline":
            marks = ["pass" if r["passed"] else "FAIL", "", ""]
        lost = [f"{p} {q['max']}" for p, q in r.get("parts", {}).items() if q["points"] < q["max"]]
        note = r.get("message", "")
        if lost and len(lost) < len(r.get("parts", {})):  # partial credit: say which parts cost what
            note = f"lost {', '.join(lost)} pt: {note}"
        print(f"{name:20s} {r['points']:4d} / {r['max']:2d}  {marks[0]:5s} {marks[1]:5s} {marks[2]:5s}  "
              f"{clip_words(note)}")
    print(f"{'total':20s} {report['total']:4d} / {report['max']}")
    if args.explain:
        r = report["exercises"][args.explain]
        print(f"\n{args.explain}: {r['points']} of {r['max']} points")
        for p, q in r.get("parts", {}).items():
            lost_to = f"  lost to {', '.join(q['lost_to'])}" if q["lost_to"] else ""
            print(f"  {p:12s} {q['points']:2d} / {q['max']:2d}{lost_to}")
        print("\n" + (r.get("explain") or "every check passed"))
    elif any(r.get("explain") for _, r in rows):
        print("grade DIR --explain EXERCISE prints one exercise's failures in full (also in grade.json)")
    if args.json or not args.explain:
        out = Path(args.json) if args.json else student / "grade.json"
        atomic_write(out, json.dumps(report, indent=1) + "\n")
        print(f"grade: wrote {out}")
    return 0 if report["total"] == report["max"] else 1


def cmd_selftest(args) -> int:
    known = {**BUG_BY_NAME, **ALT_BY_NAME}
    names = [b.name for b in BUGS + ALTERNATIVES] if args.bugs in (None, "all") else \
        [s.strip() for s in args.bugs.split(",") if s.strip()]
    bad = [b for b in names if b not in known]
    if bad:
        raise UsageError(f"--bugs: unknown entry {bad[0]!r}; `list --bugs` names the catalogue")
    seeds = parse_seeds(args.seeds)
    exercises = [e for e in EXERCISES if e.name in {known[b].exercise for b in names}]
    rows, t0 = [], time.time()
    with tempfile.TemporaryDirectory(prefix="selftest_") as tmp:
        tmp = Path(tmp)
        reference = pristine_copy(tmp / "reference")
        first = ("unit", "diff", "learning") if args.all_layers else ("unit", "diff")
        res, _ = run_layers(reference, exercises, layers=first, seeds=seeds)
        learning_ok = {e.name for e in exercises} if args.all_layers else set()

        def reference_fails(res):
            broken = {n: caught_by(r) for n, r in res.items() if caught_by(r)}
            if broken:
                print(f"selftest: the reference fails its own checks: {broken}")
                for n, r in res.items():
                    if caught_by(r):
                        print(explain(BY_NAME[n], r)[1])
            return bool(broken)
        if reference_fails(res):
            return 1
        print(f"selftest: the reference passes the {', '.join(first)} layers of {len(exercises)} exercises "
              f"(diff seeds {', '.join(map(str, seeds))}); now {len(names)} entries")
        for name in names:
            bug = known[name]
            ex = BY_NAME[bug.exercise]
            right = name in ALT_BY_NAME
            copy = pristine_copy(tmp / name)
            plant(copy, name)
            res, _ = run_layers(copy, [ex], layers=("unit", "diff"), seeds=seeds)
            layers = res[ex.name]
            if (args.all_layers or not (right or caught_by(layers))) and ex.learning:
                # the reference must pass a learning check before it can convict
                if ex.name not in learning_ok:
                    if reference_fails(run_layers(reference, [ex], layers=("learning",))[0]):
                        return 1
                    learning_ok.add(ex.name)
                layers.update(run_layers(copy, [ex], layers=("learning",))[0][ex.name])
            caught = caught_by(layers)
            if right:
                verdict = ("accepted" if not caught
                           else f"REJECTED by {', '.join(caught)}: {explain(ex, layers)[0]}")
            elif not caught:
                verdict = "MISSED"
            elif bug.only and caught != [bug.only]:
                verdict = (f"caught by {', '.join(caught)}, NOT by {bug.only} only: it no longer proves "
                           "that layer")
            else:
                verdict = f"caught by {', '.join(caught)}"
            ok = (not caught) if right else bool(caught) and (not bug.only or caught == [bug.only])
            rows.append({"entry": name, "exercise": ex.name, "what": bug.what, "right_answer": right,
                         "caught_by": caught, "ok": ok, "layers": layers})
            print(f"  {name:28s} {ex.name:20s} {verdict}", flush=True)
    wrong = [r for r in rows if not r["right_answer"]]
    right = [r for r in rows if r["right_answer"]]
    count = {layer: sum(layer in r["caught_by"] for r in wrong) for layer in LAYERS}
    only_diff = sum(r["caught_by"] == ["diff"] for r in wrong)
    failed = [r["entry"] for r in rows if not r["ok"]]
    print(f"selftest: {sum(bool(r['caught_by']) for r in wrong)} of {len(wrong)} wrong answers caught on "
          f"seeds {', '.join(map(str, seeds))} (by unit {count['unit']}, diff {count['diff']}, "
          f"diff only {only_diff}"
          + (f", learning {count['learning']}" if count["learning"] or args.all_layers else "")
          + f"); {sum(r['ok'] for r in right)} of {len(right)} right answers written another way accepted"
          + f"; {time.time() - t0:.0f}s" + (f"; FAILED: {', '.join(failed)}" if failed else ""))
    if args.json:
        atomic_write(args.json, json.dumps(rows, indent=1) + "\n")
    return 1 if failed else 0


def cmd_diff(args) -> int:
    """Internal: run the differential checks in the current copy (grade starts it in a subprocess)."""
    from nanorlhf.assignments import checks

    results = checks.run(args.names, Path(args.ref), parse_seeds(args.seeds))
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
    s.add_argument("--bug",
                   help="plant this catalogued wrong answer (a bug hunt); blanks nothing unless --only")
    s.add_argument("--verify", type=_bool, default=True, help="run the pre-write checks (default true)")
    s = sub.add_parser("grade", help="grade a student copy")
    s.add_argument("dir", help="the student's copy")
    s.add_argument("--only", help="comma list of exercises (default: the copy's assignment.json, else all)")
    s.add_argument("--json", help="where to write the results (default DIR/grade.json)")
    s.add_argument("--pipeline", type=_bool, default=True,
                   help="run the micro pipeline (~30 s; default true)")
    s.add_argument("--seeds",
                   help=f"comma list: the diff layer's random cases (default {','.join(map(str, SEEDS))})")
    s.add_argument("--explain", metavar="EXERCISE",
                   help="grade this exercise alone (no pipeline) and print every "
                   "failure in full; writes grade.json only with --json")
    s = sub.add_parser("selftest",
                       help="prove grade catches every catalogued wrong answer and accepts the right ones")
    s.add_argument("--bugs", help="comma list of catalogue entries (default all, the right answers too)")
    s.add_argument("--all_layers", action="store_true",
                   help="run every layer on every bug (which layers catch what)")
    s.add_argument("--json", help="write the per-entry results here")
    s.add_argument("--seeds", help=f"comma list (default {','.join(map(str, SEEDS))})")
    s = sub.add_parser("_diff")
    s.add_argument("names", nargs="*")
    s.add_argument("--ref", required=True)
    s.add_argument("--json", required=True)
    s.add_argument("--seeds", required=True)
    return p


def _bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def check_json_path(path) -> None:
    """--json names a file that can be written: not a folder, not under a file (one line, exit 2)."""
    if not path:
        return
    if Path(path).is_dir():
        raise UsageError(f"--json={path}: a folder, expected a file's path")
    try:
        make_folder(Path(path).parent)
    except WriteError as e:
        raise UsageError(f"--json={path}: {e}") from None


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    commands = {"list": cmd_list, "make": cmd_make, "grade": cmd_grade, "selftest": cmd_selftest,
                "_diff": cmd_diff}
    try:
        check_json_path(getattr(args, "json", None))  # before the work, not after it
        return commands[args.command](args)
    except (UsageError, source.SourceError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except RuntimeError as e:
        print(f"{args.command}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
