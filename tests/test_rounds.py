"""Iterated RLHF (train_rm.py --round/--sample_from/--pool, the pipeline's rounds): every group records its
round, pooling keeps every round's groups, the named policy is the one sampled, and the reward model's
on-policy accuracy is measured on groups no round trained on. Uses the session's micro pipeline (2 rounds)."""

import json
import random

import torch

import train_rm
from nanorlhf import eval as evaluation_stage
from nanorlhf import evaluation
from nanorlhf.checkpoint import checkpoint_tokenizer, load_model
from nanorlhf.data import load_world, read_comparisons, read_prompts, write_jsonl
from tests.helpers import run  # noqa: F401


def _groups(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_each_group_records_its_round_and_the_last_reward_model_pools_every_round(pipeline):
    d, _, second = pipeline
    out = d / "out"
    first, pooled = _groups(out / "rm_r1/comparisons.jsonl"), _groups(out / "rm/comparisons.jsonl")
    assert {g["round"] for g in first} == {1}
    assert [g for g in pooled if g["round"] == 1] == first  # round 1's groups kept whole
    new = [g for g in pooled if g["round"] == 2]
    assert len(new) == len(first)
    train = {p["prompt"] for p in read_prompts(d / "data", "train")}
    assert {g["prompt"] for g in new} <= train and not {g["prompt"]
                                                        for g in new} & {g["prompt"] for g in first}
    assert "rm: round 2:" in second and "held-out groups of round 2" in second


def test_the_policy_named_for_sampling_is_sampled_and_an_older_file_pools_as_round_one(pipeline, tmp_path,
                                                                                        monkeypatch):
    """Round 2 from a comparisons file written before rounds existed (no "round" field): it loads as round 1;
    the new groups are sampled from --sample_from, whose weights are not SFT's."""
    d, _, _ = pipeline
    old = [{k: v for k, v in g.items() if k != "round"} for g in _groups(d / "out/rm_r1/comparisons.jsonl")]
    write_jsonl(tmp_path / "old.jsonl", old)
    sampled = []
    real = train_rm.sample_responses

    def spy(model, *args, **kw):
        sampled.append({k: v.clone() for k, v in model.state_dict().items()})
        return real(model, *args, **kw)

    monkeypatch.setattr(train_rm, "sample_responses", spy)
    metrics = train_rm.main(["--preset=micro", f"--data_dir={d}/data", f"--out_dir={tmp_path}",
                             f"--init_from={d}/out/sft/ckpt.pt", "--round=2",
                             f"--pool={tmp_path / 'old.jsonl'}",
                             f"--sample_from={d}/out/ppo_r1/ckpt.pt"])
    ppo_r1 = torch.load(d / "out/ppo_r1/ckpt.pt", weights_only=True)["model"]
    sft = torch.load(d / "out/sft/ckpt.pt", weights_only=True)["model"]
    assert len(sampled) == 1 and all(torch.equal(sampled[0][k], ppo_r1[k]) for k in ppo_r1)
    assert any(not torch.equal(ppo_r1[k], sft[k]) for k in sft)  # PPO moved: the spy tells the two apart
    groups = read_comparisons(tmp_path / "rm/comparisons.jsonl")
    assert [g.get("round", 1) for g in groups] == [1] * len(old) + [2] * (len(groups) - len(old))
    assert set(metrics["by_round"]) == {"1", "2"}


def test_a_prompt_is_held_out_in_every_round_or_in_none():
    """train_rm.split decides by the prompt alone: a held-out group of round 1 stays held out when round 2
    pools it, and no prompt is both trained on and held out."""
    cfg = train_rm.Config(val_frac=0.3)
    prompts = [f"prompt {i}" for i in range(200)]
    one = [{"prompt": p, "responses": ["a", "b"], "ranking": [0, 1], "round": 1} for p in prompts[:100]]
    two = [{"prompt": p, "responses": ["c", "d"], "ranking": [1, 0], "round": 2} for p in prompts[50:]]
    tr1, va1, _ = train_rm.split(list(one), cfg, random.Random(0))
    tr2, va2, _ = train_rm.split(one + two, cfg, random.Random(1))
    assert {g["prompt"] for g in va1} == {g["prompt"] for g in va2 if g["round"] == 1}
    assert not {g["prompt"] for g in tr2} & {g["prompt"] for g in va2}
    assert 0.15 < len(va2) / (len(tr2) + len(va2)) < 0.45 and len(va1) + len(tr1) == 100


def test_the_reward_model_check_uses_val_prompts_that_no_round_trained_on(pipeline, monkeypatch):
    d, _, _ = pipeline
    seen = []
    real = evaluation.ranked_groups
    monkeypatch.setattr(evaluation_stage, "ranked_groups", lambda labeler, prompts,
                        *a: seen.append(prompts) or
                        real(labeler, prompts, *a))
    cfg = evaluation_stage.EvalConfig(preset="micro", data_dir=str(d / "data"), out_dir=str(d / "out"),
                                      rounds=2,
                                      shift_prompts=8, max_new_tokens=12, dtype="fp32")
    sft, ck = load_model(d / "out/sft/ckpt.pt", "sft")
    rows = evaluation_stage.reward_model_shift(cfg, sft, checkpoint_tokenizer(ck),
                                               load_world(d / "data").labeler, "cpu")
    assert [(r["rm"], r["ppo"]) for r in rows] == [("rm_r1", "ppo_r1"), ("rm", "ppo")]
    assert len(seen) == 3  # SFT's samples once, then each round's policy
    val = [p["prompt"] for p in read_prompts(d / "data", "val")][:8]
    trained = {g["prompt"] for g in _groups(d / "out/rm/comparisons.jsonl")}
    assert all(s == val for s in seen) and not set(val) & trained


def test_the_report_shows_each_round(pipeline):
    d, _, _ = pipeline
    report = (d / "out/report.md").read_text()
    ev = json.loads((d / "out/eval.json").read_text())
    assert [r["round"] for r in ev["rm_shift"]] == [1, 2]
    assert "| 1 | rm_r1 |" in report and "| 2 | rm |" in report and "\n| PPO, round 1 |" in report
    assert "## Where the win comes from" in report
