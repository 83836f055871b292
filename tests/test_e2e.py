"""Micro end-to-end runs of the stage scripts and the one-command pipeline (seconds each, on the CPU)."""

import json
import shutil

import torch

from nanorlhf.__main__ import PipelineConfig, resolve_dirs, stages
from tests.helpers import BF16_ENV, run  # the `pipeline` fixture: conftest.py

N_STAGES = len(stages(resolve_dirs(PipelineConfig(preset="micro"))))  # 13: two rounds, DPO, the controls


def test_prepare_pretrain_sft_write_their_files(pipeline):
    d, first, _ = pipeline
    for name in ("corpus.txt", "sft.jsonl", "prompts.jsonl", "tokenizer.tiktoken", "meta.json"):
        assert (d / "data" / name).stat().st_size > 0
    splits = {json.loads(line)["split"] for line in (d / "data/prompts.jsonl").read_text().splitlines()}
    assert splits == {"train", "val", "test"}
    for stage in ("base", "sft"):
        ck = torch.load(d / "out" / stage / "ckpt.pt", weights_only=True)
        assert set(ck) >= {"model_config", "config", "model", "tokenizer", "step", "metrics"}
        assert ck["metrics"]["val_loss"] > 0 and "gold" in ck["metrics"]
    base = torch.load(d / "out/base/ckpt.pt", weights_only=True)
    assert base["config"]["stage"] == "pretrain"
    assert f"[4/{N_STAGES}] rm_r1" not in first and f"[5/{N_STAGES}] ppo_r1" not in first  # stopped after sft


def test_resume_skips_finished_stages(pipeline):
    d, _, second = pipeline
    for stage in ("prepare", "pretrain", "sft"):
        assert f"{stage}: current, skipped" in second
    for stage in ("rm_r1", "ppo_r1", "rm", "ppo", "ppo_gold", "eval", "report"):
        assert f"{stage}: done in" in second
    third = run(["-m", "nanorlhf", "--preset=micro", f"--data_dir={d}/data", f"--out_dir={d}/out"],
                env=BF16_ENV).stdout
    assert third.count("current, skipped") == N_STAGES


def test_report_has_every_model_row_and_figure(pipeline):
    d, _, _ = pipeline
    out = d / "out"
    report = (out / "report.md").read_text()
    for model in ("base", "base few-shot", "SFT", "RM best-of-2", "PPO, round 1", "PPO", "PPO-ptx",
                  "PPO β=0", "PPO, gold reward", "DPO"):
        assert f"\n| {model} |" in report
    for fig in ("winrate.png", "overoptimisation.png", "ppo_curves.png", "ppo_ptx_curves.png",
                "ppo_beta0_curves.png",
                "ppo_gold_curves.png"):
        assert (out / fig).stat().st_size > 10_000, fig
        assert f"({fig})" in report
    assert (out / "rm" / "rm_training.png").exists() and (out / "rm" / "comparisons.jsonl").exists()
    ev = json.loads((out / "eval.json").read_text())
    assert (0.0 <= ev["models"]["SFT"]["ci_low"] <= ev["models"]["SFT"]["win_rate"]
            <= ev["models"]["SFT"]["ci_high"] <= 1)
    groups = [json.loads(line) for line in (out / "rm/comparisons.jsonl").read_text().splitlines()]
    assert all(sorted(g["ranking"]) == list(range(len(g["responses"]))) for g in groups)
    # micro preset: K = 3 samples + 1 off-prompt response, which the policy wrote for a prompt of another
    # category
    sampled = {(g["category"], r) for g in groups for r in g["responses"][:3]}
    for g in groups:
        assert g["off_prompt"] == [3] and len(g["responses"]) == 4
        assert any(c != g["category"] for c, r in sampled if r == g["responses"][3])


def test_one_precision_for_every_stage_recorded_and_reported(pipeline):
    """The pipeline resolves --dtype=auto once (bf16 here, see the fixture) and passes it on: every
    checkpoint records it, the weights are saved fp32 (master weights), and the report says it."""
    d, first, _ = pipeline
    out = d / "out"
    assert "precision: bf16 on cpu (--dtype=auto: NANORLHF_BF16_SPEEDUP=4.0" in first
    for s in ("base", "sft", "rm_r1", "ppo_r1", "rm", "ppo", "ppo_ptx", "ppo_beta0", "ppo_gold"):
        ck = torch.load(out / s / "ckpt.pt", weights_only=True)
        assert ck["config"]["dtype"] == "bf16", s
        assert all(v.dtype == torch.float32 for v in ck["model"].values() if v.is_floating_point()), s
    assert json.loads((out / "eval.json").read_text())["config"]["dtype"] == "bf16"
    assert "Compute precision: bf16" in (out / "report.md").read_text()


def test_rm_and_ppo_stages_run_in_fp32_when_told(pipeline, tmp_path):
    """--dtype=fp32 from bf16 checkpoints: the flag wins over what the checkpoints were trained in."""
    d, _, _ = pipeline
    common = ["--preset=micro", f"--data_dir={d}/data", f"--out_dir={tmp_path}", "--dtype=fp32",
              f"--init_from={d}/out/sft/ckpt.pt"]
    run(["train_rm.py", *common], env=BF16_ENV)
    r = run(["train_ppo.py", *common[:-1], f"--policy_from={d}/out/sft/ckpt.pt"], env=BF16_ENV)
    assert "device cpu fp32" in r.stdout
    for stage in ("rm", "ppo"):
        ck = torch.load(tmp_path / stage / "ckpt.pt", weights_only=True)
        assert ck["config"]["dtype"] == "fp32"
    hist = json.loads((tmp_path / "ppo" / "history.json").read_text())["history"]
    assert all(torch.isfinite(torch.tensor([h["kl"], h["rm_score"], h["pg_loss"]])).all() for h in hist)


def test_a_stage_rerun_by_hand_writes_the_same_bits_and_leaves_later_stages_current(pipeline):
    """Checkpoints are a function of their inputs (no wall time in them): the pipeline's own command for SFT,
    run again by hand, writes a byte-identical file, so RM, PPO, eval and report stay current."""
    d, _, _ = pipeline
    out = d / "out"
    before = {p: p.read_bytes() for p in sorted(out.rglob("ckpt.pt"))}
    state = json.loads((out / "pipeline_state.json").read_text())
    # ["train_sft.py", "--stage=sft", "--preset=micro", ..., "--dtype=bf16", ...]
    run(state["sft"]["command"])
    assert (out / "sft/ckpt.pt").read_bytes() == before[out / "sft/ckpt.pt"]
    again = run(["-m", "nanorlhf", "--preset=micro", f"--data_dir={d}/data", f"--out_dir={out}"],
                env=BF16_ENV).stdout
    assert again.count("current, skipped") == N_STAGES, again
    assert {p: p.read_bytes() for p in sorted(out.rglob("ckpt.pt"))} == before


def test_eval_by_hand_is_the_same_whatever_runs_adds_and_whatever_the_machine_would_pick(pipeline, tmp_path):
    """`python -m nanorlhf.eval` on the pipeline's checkpoints: auto keeps the precision they were trained in
    (bf16 here, though a timing would now pick fp32), and a run added with --runs changes no other row."""
    d, _, _ = pipeline
    out = tmp_path / "out"
    shutil.copytree(d / "out", out)
    ck = torch.load(out / "ppo/ckpt.pt", weights_only=True)
    (out / "ppo_again").mkdir()
    # the PPO policy under another run name
    torch.save({**ck, "stage": "ppo_again"}, out / "ppo_again/ckpt.pt")
    r = run(["-m", "nanorlhf.eval", "--preset=micro", f"--data_dir={d}/data", f"--out_dir={out}",
             "--runs=ppo_again"])
    assert f"precision: bf16 on cpu (--dtype=auto: the dtype {out / 'sft/ckpt.pt'} was trained in" in r.stdout
    old, new = (json.loads((o / "eval.json").read_text()) for o in (d / "out", out))
    assert new["config"]["dtype"] == "bf16"
    assert {k: new["models"][k] for k in old["models"]} == old["models"]
    same = lambda row: {k: v for k, v in row.items() if k != "run"}  # noqa: E731 (the folder differs)
    assert same(new["models"]["ppo_again"]) == same(new["models"]["PPO"])  # same weights and seeds: same row
    assert (new["best_of_n"], new["headroom"]) == (old["best_of_n"], old["headroom"])


def _listing(path):
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


def test_bad_input_one_clear_line_nonzero_exit_nothing_written(pipeline, tmp_path):
    d, _, _ = pipeline
    # unknown --key
    r = run(["train_sft.py", "--stage=sft", "--bogus=1", f"--out_dir={tmp_path}/o"], check=False)
    assert r.returncode != 0 and r.stderr.strip() == "error: unknown option --bogus for Config (see --help)"
    # a value a choice field does not know
    for script, arg, want in (("train_ppo.py", "--reward=oracle",
                               "error: --reward=oracle: expected model or gold"),
                              ("train_rm.py", "--dtype=fp16",
                               "error: --dtype=fp16: expected one of auto, fp32, bf16"),
                              ("train_sft.py", "--pos_embedding=alibi",
                               "error: --pos_embedding=alibi: expected learned or rope")):
        r = run([script, arg, f"--out_dir={tmp_path}/o"], check=False)
        assert r.returncode == 2 and r.stderr.strip() == want, r.stderr
    # missing checkpoint: says which command creates it
    r = run(["train_rm.py", "--preset=micro", f"--data_dir={d}/data", f"--out_dir={tmp_path}/o"], check=False)
    assert r.returncode != 0 and len(r.stderr.strip().splitlines()) == 1
    assert "not found" in r.stderr and "train_sft.py --stage=sft" in r.stderr
    # malformed jsonl line: file and line named, and no checkpoint written
    bad = tmp_path / "data"
    bad.mkdir()
    for name in ("corpus.txt", "prompts.jsonl", "tokenizer.tiktoken", "meta.json"):
        (bad / name).write_bytes((d / "data" / name).read_bytes())
    lines = (d / "data/sft.jsonl").read_text().splitlines()
    lines[2] = lines[2][:-5]
    (bad / "sft.jsonl").write_text("\n".join(lines) + "\n")
    (tmp_path / "o").mkdir(exist_ok=True)
    (tmp_path / "o" / "base").mkdir(exist_ok=True)
    (tmp_path / "o" / "base" / "ckpt.pt").write_bytes((d / "out/base/ckpt.pt").read_bytes())
    before = _listing(tmp_path / "o")
    r = run(["train_sft.py", "--stage=sft", "--preset=micro", f"--data_dir={bad}",
             f"--out_dir={tmp_path}/o"], check=False)
    assert (r.returncode != 0 and "sft.jsonl:3: not valid JSON" in r.stderr
            and len(r.stderr.strip().splitlines()) == 1)
    assert _listing(tmp_path / "o") == before
    # a missing data file
    r = run(["train_sft.py", "--stage=pretrain", "--preset=micro", f"--data_dir={tmp_path}/nowhere",
             f"--out_dir={tmp_path}/o2"], check=False)
    assert r.returncode != 0 and "file not found" in r.stderr and not (tmp_path / "o2").exists()


def test_nan_stops_training_and_keeps_last_good_checkpoint(pipeline, tmp_path):
    d, _, _ = pipeline
    out = tmp_path / "o"
    (out / "base").mkdir(parents=True)
    (out / "base" / "ckpt.pt").write_bytes((d / "out/base/ckpt.pt").read_bytes())
    good = (out / "base" / "ckpt.pt").read_bytes()
    # a learning rate of 1e30 blows the weights up on the first step of training from the base model
    r = run(["train_sft.py", "--stage=pretrain", "--preset=micro", f"--data_dir={d}/data", f"--out_dir={out}",
             "--lr=1e30", "--warmup_steps=1", "--eval_interval=5"], check=False)
    assert r.returncode != 0 and ("became nan" in r.stderr or "became inf" in r.stderr), r.stderr
    assert "Last good checkpoint kept" in r.stderr
    assert (out / "base" / "ckpt.pt").read_bytes() == good
