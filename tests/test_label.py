"""The labeling CLI driven through stdin: bad input is refused, good answers are written, it resumes."""

import io
import json
import random
import subprocess
import sys

from nanorlhf.evaluation import labeler_agreement
from nanorlhf.label import label_loop, parse_ranking
from nanorlhf.prompts import parse_task
from nanorlhf.world import World

GROUPS = [{"prompt": f"Name animal {i}.", "responses": [f"cat {i}", f"dog {i}", f"rude {i}"]}
          for i in range(3)]


def _rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_parse_ranking():
    assert parse_ranking("2>1>3", 3) == ([1, 0, 2], [])
    assert parse_ranking(" 3 > 2 > 1 ", 3) == ([2, 1, 0], [])
    assert parse_ranking("2>1=4>3", 4) == ([1, 0, 3, 2], [[0, 3]])
    assert parse_ranking("3=1=2", 3) == ([2, 0, 1], [[0, 2], [1, 2], [0, 1]])
    for bad in ("2>1", "1>1>2", "a>b>c", "1,2,3", "0>1>2", "4>1>2", "1=1>2", "1>=2>3"):
        try:
            parse_ranking(bad, 3)
        except ValueError:
            continue
        raise AssertionError(f"{bad!r} accepted")


def test_bad_then_good_input_writes_exactly_the_good_answers_and_resumes(tmp_path):
    out_path = tmp_path / "labels.jsonl"
    # group 1: a bad ranking, a repeated number, then a good one; group 2: a tie
    answers = "2>1\n1>1>2\n2>1>3\n" + "3>2=1\n" + "q\n"
    shown = io.StringIO()
    n = label_loop(GROUPS, out_path, io.StringIO(answers), shown)
    assert n == 2
    rows = _rows(out_path)
    assert [r["ranking"] for r in rows] == [[1, 0, 2], [2, 1, 0]]
    assert [r["ties"] for r in rows] == [[], [[0, 1]]]
    # the ranking is all it asks
    assert all(set(r) == {"prompt", "responses", "ranking", "ties"} for r in rows)
    assert shown.getvalue().count("  ! ") == 2  # each bad answer was explained
    # resume: only the third group is asked, and the file keeps the first two untouched
    shown = io.StringIO()
    assert label_loop(GROUPS, out_path, io.StringIO("1>2>3\n"), shown) == 1
    assert "Name animal 2." in shown.getvalue() and "Name animal 0." not in shown.getvalue()
    assert [r["prompt"] for r in _rows(out_path)] == ["Name animal 0.", "Name animal 1.", "Name animal 2."]


def test_cli_end_of_input_keeps_answers(tmp_path):
    samples = tmp_path / "s.jsonl"
    samples.write_text("\n".join(json.dumps(g) for g in GROUPS))
    out_path = tmp_path / "h.jsonl"
    r = subprocess.run([sys.executable, "-m", "nanorlhf.label", f"--samples={samples}", f"--out={out_path}"],
                       input="1>2>3\n", capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert [row["ranking"] for row in _rows(out_path)] == [[0, 1, 2]]
    bad = subprocess.run([sys.executable, "-m", "nanorlhf.label", "--samples=/nonexistent.jsonl"],
                         capture_output=True, text=True, timeout=60)
    assert (bad.returncode != 0 and "file not found" in bad.stderr
            and len(bad.stderr.strip().splitlines()) == 1)


def test_second_labeler_agreement_leaves_out_human_rankings():
    """train_rm's 'a second labeler agrees' ceiling is the simulated labeler against its own rankings: a
    person's ranking (read with --labels=both) must not count, whatever keys its file carries."""
    world = World(0)
    prompt = world.prompts(1, "val")[0]["prompt"]
    task = parse_task(prompt)
    simulated = {"prompt": prompt, "responses": [task.ideal[0], task.wrong[0], "Ugh, go away."],
                 "ranking": [0, 1, 2],
                 "finished": [True] * 3, "ties": []}
    human = {**simulated, "ranking": [2, 1, 0], "human": True}  # label.py writes "finished" too
    alone = labeler_agreement(world.labeler, [simulated], random.Random(0))
    assert alone > 0.9  # 7 vs 2.75 vs a rude non-answer: the labeler orders these the same way nearly always
    assert labeler_agreement(world.labeler, [simulated, human], random.Random(0)) == alone
