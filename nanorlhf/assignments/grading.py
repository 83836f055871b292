"""The grading engine of classroom mode: run an exercise's layers (unit tests, diff against the reference,
learning tests) in a copy of the repository as subprocesses, score and explain what failed; and the copies
it grades: a pristine copy, a blanked or bug-planted one, a student's bodies transplanted in, leak checks.
__main__.py holds the commands that use it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
import xml.etree.ElementTree as ET
from pathlib import Path

from nanorlhf.assignments import source
from nanorlhf.assignments.bugs import ALT_BY_NAME, BUG_BY_NAME, apply
from nanorlhf.assignments.exercises import BY_NAME, Exercise

ROOT = source.ROOT
TIMEOUT_S = 600  # per subprocess: a student's infinite loop fails the layer instead of hanging the grader
LAYERS = ("unit", "diff", "learning")
# = checks.SEEDS (not imported here: checks imports torch, and `list` should not wait for it)
SEEDS = (0, 1, 2)
NOTE_WIDTH = 100  # the table's note: the first line of the most useful message, cut at a word boundary


# ------------------------------------------------------------------------------------- running checks
def _env(copy: Path) -> dict:
    # NANORLHF_BF16_SPEEDUP=1.0 (precision.SPEEDUP_ENV): --dtype=auto picks fp32 in every check, whatever this
    # machine's bf16 speed, so the reference meets its fp32 tolerances and a grade does not depend on the CPU
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(copy), "PYTHONDONTWRITEBYTECODE": "1",
            # the suite needs no third-party plugin: skip importing them
            "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1",
            "NANORLHF_BF16_SPEEDUP": "1.0"}


def _start_pytest(copy: Path, nodes: list[str], xml: Path):
    # -k: the Triton kernel is no exercise, and its interpreted cases are most of the run time;
    # pytest_seed: every test starts from the same global RNG state (same tree, same verdict)
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p",
           "nanorlhf.assignments.pytest_seed",
           "-k", "not triton", f"--junitxml={xml}", *nodes]
    return subprocess.Popen(cmd, cwd=copy, env=_env(copy), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def _pytest_results(proc, nodes: list[str], xml: Path, copy: Path) -> tuple[dict[str, bool], dict[str, str]]:
    """({test function node id: passed}, {failed node: what pytest said, the copy's path as <copy>}); a
    function passes when every parametrised case passes (skips count as passes: a GPU-only case); a node
    that did not run (timeout, collection error) fails."""
    try:
        out, _ = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        return {n: False for n in nodes}, {n: f"timed out after {TIMEOUT_S}s" for n in nodes}
    ran: dict[str, bool] = {}
    said: dict[str, str] = {}
    if xml.exists():
        for case in ET.parse(xml).iter("testcase"):
            node = case.get("classname", "").replace(".", "/") + ".py::" + case.get("name", "").split("[")[0]
            bad = case.find("failure")
            bad = case.find("error") if bad is None else bad
            ran[node] = ran.get(node, True) and bad is None
            if bad is not None and node not in said:  # the first failing parametrised case
                where = case.get("name", "")
                said[node] = f"{where}: {bad.get('message', '').strip()}\n{(bad.text or '').strip()[-3000:]}"
    passed = {n: ran.get(n, False) for n in nodes}
    for n in nodes:
        if not passed[n] and n not in said:
            said[n] = f"did not run (collection error or crash); pytest said:\n{out[-2000:]}"
    return passed, {n: text.replace(str(copy), "<copy>") for n, text in said.items()}


def _start_diff(copy: Path, names: list[str], out: Path, seeds):
    cmd = [sys.executable, "-m", "nanorlhf.assignments", "_diff", "--ref", str(ROOT), "--json", str(out),
           "--seeds", ",".join(map(str, seeds)), *names]
    return subprocess.Popen(cmd, cwd=copy, env=_env(copy), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def _diff_results(proc, names: list[str], out: Path) -> dict[str, dict]:
    try:
        log, _ = proc.communicate(timeout=TIMEOUT_S)
        why = f"the check crashed: {log[-1500:]}"
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        why = f"timed out after {TIMEOUT_S}s"
    if out.exists():
        return json.loads(out.read_text())
    return {n: {"passed": False, "message": why.splitlines()[0] if why.strip() else why, "detail": why,
                "parts": {p: {"passed": False, "message": why, "detail": why} for p in BY_NAME[n].part_names}}
            for n in names}


def run_layers(copy: Path, exercises: list[Exercise], layers=LAYERS, nodes: list[str] | None = None,
               seeds=SEEDS) -> tuple[dict[str, dict], dict[str, bool]]:
    """Run `layers` of `exercises` in `copy`: pytest (unit, learning, plus any extra `nodes`) and the
    differential checks, the two as concurrent subprocesses. Returns ({exercise: {layer: {"passed",
    "failed" and "said" (pytest) or "message", "detail" and "parts" (diff)}}}, {node: passed} for every
    node run)."""
    want = sorted({n for e in exercises for layer in ("unit", "learning") if layer in layers
                   for n in getattr(e, layer)}
                  | set(nodes or ()))
    diff_names = [e.name for e in exercises if "diff" in layers and e.diff]
    tag = f"{os.getpid()}_{time.monotonic_ns()}"
    xml, diff_json = copy / f".pytest_{tag}.xml", copy / f".diff_{tag}.json"
    procs = (_start_pytest(copy, want, xml) if want else None,
             _start_diff(copy, diff_names, diff_json, seeds) if diff_names else None)
    node_ok, said = _pytest_results(procs[0], want, xml, copy) if procs[0] else ({}, {})
    diff = _diff_results(procs[1], diff_names, diff_json) if procs[1] else {}
    results = {}
    for e in exercises:
        r = {}
        for layer in ("unit", "learning"):
            if layer in layers and getattr(e, layer):
                failed = [n for n in getattr(e, layer) if not node_ok[n]]
                r[layer] = {"passed": not failed, "failed": failed, "said": {n: said[n] for n in failed}}
        if e.name in diff:
            r["diff"] = diff[e.name]
        results[e.name] = r
    return results, node_ok


def caught_by(layers: dict) -> list[str]:
    return [name for name in LAYERS if name in layers and not layers[name]["passed"]]


def score(ex: Exercise, layers: dict) -> dict[str, dict]:
    """{part: {"points", "max", "lost_to"}}. A part scores when the diff layer passes it and no failing test
    is charged to it. A failing unit test is charged to the parts it checks (ex.unit_parts) that the diff
    layer found wrong too, or to all of them when the diff layer found none of them wrong; a failing
    learning test to the main part. So a wrong statistic costs its own points, not the exercise."""
    diff = layers.get("diff")
    diff_bad = {p for p, r in diff.get("parts", {}).items() if not r["passed"]} if diff else set()
    if diff and not diff["passed"] and not diff_bad:  # a crash of the whole check
        diff_bad = set(ex.part_names)
    lost: dict[str, list[str]] = {p: (["diff"] if p in diff_bad else []) for p in ex.part_names}
    for node in layers.get("unit", {}).get("failed", []):
        checked = ex.parts_checked_by(node)
        for p in [q for q in checked if q in diff_bad] or checked:
            lost[p].append(node)
    for node in layers.get("learning", {}).get("failed", []):
        lost[ex.part_names[0]].append(node)
    return {p: {"points": 0 if lost[p] else pts, "max": pts, "lost_to": lost[p]}
            for p, pts in ex.points_of.items()}


def explain(ex: Exercise, layers: dict) -> tuple[str, str]:
    """(first line, whole story) of what failed: the diff layer's message first (it names the case, what came
    back and what was expected), then each failing test with what pytest said and the exercise's hint."""
    first, story = [], []
    diff = layers.get("diff")
    if diff and not diff["passed"]:
        first.append(diff["message"])
        story.append(f"diff (seeds {', '.join(map(str, diff.get('seeds', [])))}; the edge cases run every "
                     "time):\n" + (diff.get("detail") or diff["message"]))
    hints = dict(ex.hints)
    for layer in ("unit", "learning"):
        for node in layers.get(layer, {}).get("failed", []):
            said = layers[layer].get("said", {}).get(node, "")
            short = next((ln.strip() for ln in said.splitlines() if ln.strip()), "failed")
            first.append(f"{node.split('::')[-1]} failed: {short}"
                         + (f"; {hints[node]}" if node in hints else ""))
            story.append(f"{layer} {node}:\n" + textwrap.indent(said, "  ")
                         + (f"\n  hint: {hints[node]}" if node in hints else ""))
    return (first[0] if first else ""), "\n\n".join(story)


def clip_words(text: str, width: int = NOTE_WIDTH) -> str:
    """The first line of `text`, cut at a word boundary to fit `width` (never mid-word), with ' …' if
    cut."""
    line = text.strip().splitlines()[0] if text.strip() else ""
    if len(line) <= width:
        return line
    cut = line[: width - 2].rsplit(" ", 1)[0]
    return cut + " …"


# ----------------------------------------------------------------------------------------------- copies
def pristine_copy(dest: Path) -> Path:
    """A copy of this repository's tracked files (the grader included) in dest."""
    source.copy_tree(dest, ROOT)
    return dest


def blank(copy: Path, ex: Exercise) -> None:
    for fn in ex.functions:
        source.edit_file(copy / ex.file,
                         lambda t: source.replace(t, fn, source.blank_body(ex.message), ex.file))


def plant(copy: Path, bug_name: str) -> None:
    bug = BUG_BY_NAME.get(bug_name) or ALT_BY_NAME[bug_name]
    ex = BY_NAME[bug.exercise]
    source.edit_file(copy / ex.file, lambda t: apply(t, bug, ex.file))


def student_bodies(student: Path, ex: Exercise) -> dict[str, str]:
    """{function: body} from the student's copy; raises SourceError naming what is missing."""
    path = student / ex.file
    if not path.is_file():
        raise source.SourceError(f"{path}: missing (expected the handout's {ex.file})")
    text = path.read_text()
    return {fn: source.extract(text, fn, str(path)) for fn in ex.functions}


def transplant(copy: Path, ex: Exercise, bodies: dict[str, str]) -> None:
    for fn, body in bodies.items():
        source.edit_file(copy / ex.file, lambda t: source.replace(t, fn, body, ex.file))


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
        hit = {tuple(lines[i:i + len(r)]) for r in runs for i in range(len(lines))
               if tuple(lines[i:i + len(r)]) == r}
        found += [f"{f}: {r[0]}" for r in sorted(hit)]
    return found
