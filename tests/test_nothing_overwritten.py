"""Nothing good is ever overwritten, and one line where one line was promised (issue 26). One test per
mechanism: reserved run names, in-progress checkpoints apart from the finished one, one writer per output
folder, the stage ended with its pipeline, every config through check_config, no training on nothing, the
one JSON reader, checked checkpoints. Every refusal is one line naming the flag or file, and every file
that was there before is byte-identical after (SHA-256 of each compared). The stages run in this process
on copies of the micro models of tests/conftest.py's `made` (seconds)."""

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import train_ppo
import train_rm
import train_sft
from nanorlhf import __main__ as pipeline
from nanorlhf import checkpoint
from nanorlhf import eval as evaluation
from nanorlhf import label, report
from nanorlhf.checkpoint import CheckpointError, load_model, save_checkpoint, tokenizer_record
from nanorlhf.config import ConfigError, StageError, run_main
from nanorlhf.data import DataError, read_comparisons, read_jsonl
from nanorlhf.files import lock_folder, with_locks
from tests.helpers import tiny_gpt
from tests.test_pipeline import plan
from tests.test_robustness import ENV, QUICK, ROOT, copy_of, dirs, one_line, prepare_main

UNBUFFERED = {**ENV, "PYTHONUNBUFFERED": "1"}


def hashes(d: Path) -> dict:
    """{file under d: SHA-256 of its bytes}."""
    return {str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.rglob("*"))
            if p.is_file()}


def write_jsonl(path: Path, rows) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] == "Z")  # a zombie is dead


# ------------------------------------------------------------------------------------ reserved run names
def test_a_ppo_run_cannot_take_the_folder_of_another_stage(made, tmp_path, monkeypatch):
    d = copy_of(made, tmp_path, "base", "sft", "rm")
    before = hashes(d)
    for name in ("sft", "rm", "base", "logs", "../sft", "a/b", "eval.json"):
        with pytest.raises(ConfigError) as e:
            train_ppo.main([*dirs(d), f"--run_name={name}", "--iterations=1", "--eval_prompts=2"])
        assert one_line(e).startswith(f"--run_name={name}: expected a")
    assert hashes(d) == before
    # one list, checkpoint.MAKERS: a stage added to the pipeline (not made by train_ppo.py) is off limits at
    # once
    monkeypatch.setitem(checkpoint.MAKERS, "dpo", "python train_dpo.py")
    with pytest.raises(ConfigError,
                       match="^--run_name=dpo: expected a PPO run's own name; 'dpo' is the folder "
                                          "of the checkpoint made by python train_dpo.py$"):
        train_ppo.get_config(["--preset=micro", "--run_name=dpo"])
    assert train_ppo.get_config(["--preset=micro", "--run_name=ppo_beta0"]).run_name == "ppo_beta0"


# ------------------------------------------------------------------- in-progress saves apart, finished ones
def _stop_at_call(monkeypatch, module, name: str, n: int) -> None:
    """module.name raises KeyboardInterrupt (a Ctrl-C) at its n-th call: a run stopped halfway."""
    real, calls = getattr(module, name), []

    def stopping(*args, **kwargs):
        calls.append(1)
        if len(calls) == n:
            raise KeyboardInterrupt
        return real(*args, **kwargs)
    monkeypatch.setattr(module, name, stopping)


def test_a_run_stopped_halfway_leaves_the_finished_checkpoint_and_loads_nothing_unfinished(made, tmp_path,
                                                                                          monkeypatch):
    d = copy_of(made, tmp_path, "base", "sft")
    before = hashes(d)
    sft = ["--stage=sft", "--preset=micro", "--max_steps=2", "--eval_interval=1", "--eval_batches=1",
           "--gold_eval_prompts=0", *dirs(d)[1:]]
    _stop_at_call(monkeypatch, train_sft, "evaluate", 3)  # after the in-progress save of step 1
    with pytest.raises(KeyboardInterrupt):
        train_sft.main(sft)
    after = hashes(d)
    assert after.pop("out/sft/ckpt.partial.pt") and after == before  # the finished model untouched
    partial = torch.load(d / "out/sft/ckpt.partial.pt", weights_only=True)
    assert partial["finished"] is False and partial["step"] == 1
    (d / "x").mkdir()
    (d / "x/ckpt.pt").write_bytes((d / "out/sft/ckpt.partial.pt").read_bytes())
    with pytest.raises(CheckpointError) as e:  # no stage reads an unfinished checkpoint, whatever its name
        load_model(d / "x/ckpt.pt", "sft")
    assert "an unfinished checkpoint (saved at step 1 while its run trained)" in one_line(e)
    monkeypatch.undo()
    train_sft.main(sft)  # finished: the checkpoint says so, and the in-progress save is gone
    assert sorted(p.name for p in (d / "out/sft").iterdir()) == ["ckpt.pt"]
    assert torch.load(d / "out/sft/ckpt.pt", weights_only=True)["finished"] is True


def test_a_ppo_run_stopped_halfway_leaves_the_finished_runs_checkpoint_and_history(made, tmp_path,
                                                                                   monkeypatch):
    d = copy_of(made, tmp_path, "sft", "rm")
    ppo = [*dirs(d), "--eval_prompts=2", "--rollout_batch=4", "--minibatch_size=2", "--ppo_epochs=1",
           "--max_new_tokens=6"]
    train_ppo.main([*ppo, "--iterations=1"])  # a finished run
    before = hashes(d)
    _stop_at_call(monkeypatch, train_ppo, "gold_evaluation", 3)  # after the in-progress save of iteration 1
    with pytest.raises(KeyboardInterrupt):
        train_ppo.main([*ppo, "--iterations=2", "--eval_interval=1"])
    after = hashes(d)
    assert after.pop("out/ppo/ckpt.partial.pt") and after == before
    assert torch.load(d / "out/ppo/ckpt.partial.pt", weights_only=True)["step"] == 1
    # the history beside ckpt.pt is that checkpoint's run's
    history = json.loads((d / "out/ppo/history.json").read_text())["history"]
    assert history == torch.load(d / "out/ppo/ckpt.pt", weights_only=True)["metrics"]["history"]
    assert len(history) == 1


def test_a_history_goes_only_when_its_checkpoint_is_replaced(tmp_path):
    """A refused final save (here a NaN weight) keeps the run's history with its checkpoint; a save that
    goes through removes it as it replaces the checkpoint (train_ppo.save_run then writes the new one)."""
    path, history = tmp_path / "ckpt.pt", tmp_path / "history.json"
    save_checkpoint(path, tiny_gpt(), {}, tokenizer_record("gpt2"), "ppo", 1)
    history.write_text('{"history": [], "evals": []}')
    before = hashes(tmp_path)
    bad = tiny_gpt()
    with torch.no_grad():
        bad.wte.weight[0, 0] = float("nan")
    with pytest.raises(StageError, match="weight wte.weight has NaN"):
        save_checkpoint(path, bad, {}, tokenizer_record("gpt2"), "ppo", 2, describing=[history])
    assert hashes(tmp_path) == before
    save_checkpoint(path, tiny_gpt(seed=1), {}, tokenizer_record("gpt2"), "ppo", 2, describing=[history])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pt"]


# ------------------------------------------------------------------------------ one writer per output folder
def test_a_folder_in_use_is_refused_naming_its_holder_and_a_dead_ones_lock_is_taken_over(made, tmp_path,
                                                                                         capsys):
    d = copy_of(made, tmp_path, "base", "sft")
    holder = subprocess.Popen([sys.executable, str(ROOT / "train_sft.py"), "--stage=sft", "--preset=micro",
                               "--max_steps=100000", "--eval_interval=100000", "--log_interval=100000",
                               "--gold_eval_prompts=0", *dirs(d)[1:]], stdout=subprocess.PIPE, text=True,
                              env=UNBUFFERED)
    try:
        for line in holder.stdout:  # "sft: <parameters>, <data>": it holds out/sft and trains
            if line.startswith("sft: "):
                break
        before = hashes(d)
        with pytest.raises(StageError) as e:
            train_sft.main(["--stage=sft", *QUICK, *dirs(d)[1:]])
        msg = one_line(e)
        assert (msg.startswith(f"{d}/out/sft is in use by pid {holder.pid} (")
                and "train_sft.py --stage=sft" in msg)
        assert hashes(d) == before
    finally:
        holder.kill()  # SIGKILL: no handler runs, its lock file stays
        holder.wait()
    capsys.readouterr()
    with_locks(lambda: lock_folder(d / "out/sft"))()
    assert f"out/sft: taking over the lock of pid {holder.pid} (" in capsys.readouterr().err
    assert sorted(p.name for p in (d / "out/sft").iterdir()) == ["ckpt.pt"]  # released: no lock file left


# A pipeline whose one stage sleeps (and writes its pid): run as `python -c HOLDER <out>`.
HOLDER = """
import sys
from pathlib import Path
from nanorlhf.__main__ import Stage, run_pipeline
from nanorlhf.config import run_main
out = Path(sys.argv[1])
stage = ("import os, sys, time; open(sys.argv[1], 'w').write(str(os.getpid())); print('stage started', flush=True); "
         "time.sleep(300)")
run_main(lambda: run_pipeline([Stage("slow", [sys.executable, "-c", stage, str(out / "stage.pid")],
                                     [out / "slow.txt"])], out))
"""


def test_a_second_pipeline_is_refused_and_a_stopped_pipeline_stops_its_stage(tmp_path):
    out = tmp_path / "out"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(out)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=UNBUFFERED)
    stage = None
    try:
        for line in holder.stdout:
            if line.strip() == "stage started":  # the stage's output (its command, echoed first, has it too)
                break
        stage = int((out / "stage.pid").read_text())
        before = hashes(tmp_path)
        with pytest.raises(StageError) as e:  # the same folders: refused, naming the first, before any stage
            pipeline.main(["--preset=micro", f"--data_dir={tmp_path}/data", f"--out_dir={out}",
                           "--stop_after=prepare"])
        assert one_line(e).startswith(f"{out} is in use by pid {holder.pid} (")
        assert hashes(tmp_path) == before
        holder.send_signal(signal.SIGTERM)  # `kill <pipeline>`: the stage ends with it, one line, exit 130
        _, err = holder.communicate(timeout=60)
        assert holder.returncode == 130 and err.count("\n") == 1, err
        assert err.startswith("interrupted (Ctrl-C or SIGTERM): stopped the pipeline and its stage "
                              "'slow'"), err
        assert not alive(stage)
    finally:
        holder.kill()
        if stage and alive(stage):
            os.kill(stage, signal.SIGKILL)


def test_ctrl_c_is_one_line_and_exit_130(capsys):
    def interrupted():
        raise KeyboardInterrupt
    with pytest.raises(SystemExit) as e:
        run_main(interrupted)
    err = capsys.readouterr().err
    assert (e.value.code == 130 and err.count("\n") == 1
            and err.startswith("interrupted (Ctrl-C or SIGTERM): "))


# ------------------------------------------------------------------- every config through check_config
NUMBERS = [
    (train_ppo.get_config, "--iterations=2.5e0", "--iterations=2.5e0: expected a whole number"),
    (train_ppo.get_config, "--iterations=1e999", "--iterations=1e999: expected a whole number"),
    (train_ppo.get_config, "--lr=inf", "--lr=inf: expected a finite number"),
    (train_ppo.get_config, "--temperature=inf", "--temperature=inf: expected a finite number"),
    (train_sft.get_config, "--lr=nan", "--lr=nan: expected a finite number"),
    (train_rm.get_config, "--seed=-1", "--seed=-1: expected a whole number from 0 to 2147483647"),
    (train_sft.get_config, f"--seed={2**32}",
     f"--seed={2**32}: expected a whole number from 0 to 2147483647"),
    (prepare_main, "--seed=-1", "--seed=-1: expected a whole number from 0"),
    (pipeline.main, "--seed=-1", "--seed=-1: expected a whole number from 0"),
    (pipeline.main, "--nproc=1.5", "--nproc=1.5: expected a whole number"),
    (evaluation.main, "--seed=-1", "--seed=-1: expected a whole number from 0"),
    (label.label, "--seed=99999999999", "--seed=99999999999: expected a whole number from 0"),
]


@pytest.mark.parametrize("entry, flag, want", NUMBERS, ids=[f"{e.__module__}{f}" for e, f, _ in NUMBERS])
def test_every_entry_point_takes_finite_numbers_whole_where_whole_and_seeds_numpy_takes(tmp_path, entry, flag,
                                                                                        want):
    where = {train_ppo.get_config: [], train_sft.get_config: [], train_rm.get_config: [],
             label.label: [f"--out={tmp_path}/o/labels.jsonl", f"--samples={tmp_path}/none.jsonl"],
             prepare_main: ["--preset=micro", f"--out_dir={tmp_path}/o"]}.get(
                 entry, ["--preset=micro", f"--data_dir={tmp_path}/d", f"--out_dir={tmp_path}/o"])
    with pytest.raises(ConfigError) as e:
        entry([*where, flag])
    assert one_line(e).startswith(want)
    assert list(tmp_path.iterdir()) == []


def test_eval_checks_every_flag_and_run_before_any_work(made, tmp_path):
    d = copy_of(made, tmp_path, "base", "sft", "rm")
    (d / "out/eval.json").write_text('{"models": {}}')  # an earlier evaluation: kept as it was
    (d / "out/myrm").mkdir()
    # a run folder that holds no policy
    (d / "out/myrm/ckpt.pt").write_bytes((d / "out/rm/ckpt.pt").read_bytes())
    before = hashes(d)
    cases = [("--temperature=-1", ConfigError, "--temperature=-1.0: expected a number > 0"),
             ("--temperature=inf", ConfigError, "--temperature=inf: expected a finite number"),
             ("--n_prompts=0", ConfigError, "--n_prompts=0: expected a whole number >= 1"),
             ("--bon_n=0", ConfigError, "--bon_n=0: expected a whole number >= 1"),
             ("--max_new_tokens=0", ConfigError, "--max_new_tokens=0: expected a whole number >= 1"),
             ("--max_new_tokens=1000", ConfigError, "--max_new_tokens=1000: expected fewer than the model's "
                                                    "block_size 64"),
             ("--runs=ppo_typo", ConfigError, f"--runs=ppo_typo: no checkpoint at {d}/out/ppo_typo/ckpt.pt"),
             ("--runs=rm", ConfigError, "--runs=rm: expected a PPO run's own name; 'rm' is the folder of the "
                                        "checkpoint made by python train_rm.py"),
             ("--runs=PPO", ConfigError, "--runs=PPO: 'PPO' is a row of the table already"),
             ("--runs=ppo", ConfigError, "--runs=ppo: 'ppo' is a row of the table already"),
             ("--runs=myrm", CheckpointError,
              f"{d}/out/myrm/ckpt.pt: a 'rm' checkpoint (scalar head), expected "
                                              "'myrm' (lm head)")]
    if not torch.cuda.is_available():
        cases.append(("--device=cuda", ConfigError,
                      "--device=cuda: expected cpu (no CUDA device on this machine)"))
    for flag, error, want in cases:
        with pytest.raises(error) as e:
            evaluation.main([*dirs(d), flag])
        assert one_line(e).startswith(want), flag
    assert hashes(d) == before


# -------------------------------------------------------------------------- no training on nothing
def test_sft_on_demonstrations_with_nothing_to_learn_keeps_the_model(made, tmp_path):
    d = copy_of(made, tmp_path, "base", "sft")
    demos = read_jsonl(d / "data/sft.jsonl")
    sft = ["--stage=sft", *QUICK, *dirs(d)[1:]]
    for rows, want in (([{**r, "prompt": r["prompt"] + " and" * 80} for r in demos],  # every response cut off
                        f"{len(demos) - 15} training demonstration(s) of {len(demos)}, with no response "
                        "token within the model's 64-token context"),
                       (demos[:1], "0 training demonstration(s) of 1")):
        write_jsonl(d / "data/sft.jsonl", rows)
        before = hashes(d)
        with pytest.raises(DataError) as e:
            train_sft.main(sft)
        msg = one_line(e)
        assert msg.startswith(f"{d}/data/sft.jsonl: {want}") and "nothing to learn from" in msg, msg
        assert msg.endswith(f"{d}/out/sft/ckpt.pt is kept as it was") and hashes(d) == before


def test_a_reward_model_on_ties_only_keeps_the_model(made, tmp_path):
    d = copy_of(made, tmp_path, "sft", "rm")
    path = d / "out/rm/comparisons.jsonl"
    groups = read_jsonl(path)
    for g in groups:  # every pair equally good: no preference to learn
        n = len(g["responses"])
        g["ties"] = [[i, j] for i in range(n) for j in range(i + 1, n)]
    write_jsonl(path, groups)
    before = hashes(d)
    with pytest.raises(DataError) as e:
        train_rm.main(dirs(d))
    msg = one_line(e)
    assert (msg.startswith(f"{path}: the ") and "rank no pair of responses apart" in msg
            and "nothing to learn" in msg)
    assert msg.endswith(f"{d}/out/rm/ckpt.pt is kept as it was") and hashes(d) == before


def test_comparisons_made_with_other_flags_are_never_reused(made, tmp_path, capsys):
    """--k=4 where comparisons.jsonl holds K = 3 (and the like): sampled again, not trained on and recorded
    as K = 4. The recipe the file was made from is compared, wherever the files were copied."""
    d = copy_of(made, tmp_path, "sft", "rm")
    train_rm.main(dirs(d))
    assert "reusing" in capsys.readouterr().out  # a copy of the same recipe is reused
    for flag, key, check in (("--k=4", "k", lambda g: len(g["responses"]) == 5),
                             ("--off_prompt=0", "off_prompt", lambda g: g["off_prompt"] == []),
                             ("--n_prompts=10", "n_prompts", None)):
        train_rm.main([*dirs(d), flag])
        out = capsys.readouterr().out
        assert re.search(rf"comparisons.jsonl was made from other inputs \([^)]*\b{key}\b[^)]*\): sampling "
                         r"again", out)
        groups = read_comparisons(d / "out/rm/comparisons.jsonl")
        assert all(check(g) for g in groups) if check else len(groups) == 10


# ------------------------------------------------------------------------------- the one JSON reader
def test_report_names_the_file_and_line_of_a_bad_result(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    good = (ROOT / "bench/results_tiny_cpu/eval.json").read_text()
    for text, want in ((None, r"eval.json: file not found \(make it with: python -m nanorlhf.eval\)$"),
                       (good[: len(good) // 2], r"eval.json:\d+: not valid JSON \("),
                       ("{}", "eval.json: missing key 'config'"),
                       ("[]", "eval.json: expected a JSON object, got list"),
                       (good.replace('"win_rate"', '"win_rat"'),
                        "eval.json: models 'base': missing key 'win_rate'")):
        if text is not None:
            (out / "eval.json").write_text(text)
        before = hashes(tmp_path)
        with pytest.raises(StageError) as e:
            report.main([f"--out_dir={out}"])
        assert re.match(re.escape(f"{out}/") + want, one_line(e)), one_line(e)
        assert hashes(tmp_path) == before  # no report, no figure
    (out / "eval.json").write_text(good)
    (out / "ppo").mkdir()
    (out / "ppo/history.json").write_text('{"history": [\n{"iteration": 1,\n')
    with pytest.raises(StageError, match=f"^{out}/ppo/history.json:3: not valid JSON .*train_ppo.py"):
        report.main([f"--out_dir={out}"])
    (out / "ppo/history.json").write_text("")
    (out / "pipeline_state.json").write_text('{"prepare": 3}')
    with pytest.raises(StageError, match=f"^{out}/pipeline_state.json: the record of 'prepare' is a int"):
        report.main([f"--out_dir={out}"])
    assert not (out / "report.md").exists()


def test_a_corrupt_pipeline_state_is_one_line_and_force_gets_past_it(tmp_path, capsys):
    (tmp_path / "pipeline_state.json").write_text('{"a": {"inputs": "x",\n')
    before = hashes(tmp_path)
    with pytest.raises(DataError) as e:
        pipeline.run_pipeline(plan(tmp_path), tmp_path)
    assert one_line(e).startswith(f"{tmp_path}/pipeline_state.json:2: not valid JSON (")
    assert "python -m nanorlhf --force=true" in str(e.value) and hashes(tmp_path) == before
    pipeline.run_pipeline(plan(tmp_path), tmp_path, force=True)
    assert set(json.loads((tmp_path / "pipeline_state.json").read_text())) == {"a", "b"}


# ------------------------------------------------------------------------ checkpoints and data checked
def test_a_checkpoint_whose_model_config_does_not_fit_is_one_line(tmp_path):
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, tiny_gpt(), {}, tokenizer_record("gpt2"), "sft", 1)
    good = torch.load(path, weights_only=True)
    for change, want in ((dict(n_layer=3), "does not describe its weights"),
                         (dict(n_embd=32), "does not describe"),
                         (dict(bias=False), "its weights do not fit its model_config (Error(s) in loading"),
                         (dict(new_field=1), "unknown field(s) ['new_field'] (written by a newer version?)"),
                         (dict(n_head="two"), "model_config n_head='two', expected a int"),
                         (None, "model_config is a list, expected a dict")):
        bad = {**good, "model_config": [1, 2] if change is None else {**good["model_config"], **change}}
        torch.save(bad, tmp_path / "bad.pt")
        with pytest.raises(CheckpointError) as e:
            load_model(tmp_path / "bad.pt", "sft")
        assert one_line(e).startswith(f"{tmp_path}/bad.pt: ") and want in str(e.value), (change, str(e.value))


def test_a_reward_model_with_a_shorter_context_than_the_policy_is_refused(made, tmp_path):
    d = copy_of(made, tmp_path, "sft", "rm")
    ck = torch.load(d / "out/rm/ckpt.pt", weights_only=True)
    ck["model_config"]["block_size"] = 32  # rotary positions: the weights fit any context
    torch.save(ck, d / "out/rm/ckpt.pt")
    before = hashes(d)
    with pytest.raises(CheckpointError) as e:
        train_ppo.main([*dirs(d), "--iterations=1", "--eval_prompts=2"])
    assert one_line(e).startswith(f"{d}/out/rm/ckpt.pt: a reward model with a 32-token context, shorter than "
                                  "the policy's 64")
    assert hashes(d) == before


def test_prepare_out_dir_that_is_a_file_under_a_file_or_read_only_is_one_line(tmp_path):
    (tmp_path / "file").write_text("x")
    ro = Path("/sys/nanorlhf_test") if os.geteuid() == 0 else tmp_path / "ro"  # root writes into chmod 555
    if ro != Path("/sys/nanorlhf_test"):
        ro.mkdir(mode=0o555)
    before = hashes(tmp_path)
    for out, want in ((tmp_path / "file", f"{tmp_path}/file is a file, expected a folder"),
                      (tmp_path / "file/data", f"{tmp_path}/file is a file, expected a folder"),
                      (ro / "data", f"cannot create {ro}")):
        with pytest.raises(StageError) as e:
            prepare_main(["--preset=micro", f"--out_dir={out}"])
        assert one_line(e).startswith(f"{out}: could not write it ({want}"), str(e.value)
    assert hashes(tmp_path) == before


def test_label_out_that_is_a_folder_or_under_a_file_is_one_line(made, tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    for out, want in ((tmp_path, f"--out={tmp_path}: expected the file the rankings are appended to, not a "
                       "folder"),
                      (tmp_path / "file/labels.jsonl",
                       f"{tmp_path}/file: could not write it ({tmp_path}/file is a file")):
        with pytest.raises(SystemExit) as e:
            label.main([f"--samples={made}/out/rm/comparisons.jsonl", f"--out={out}"])
        err = capsys.readouterr().err
        assert e.value.code == 2 and err.startswith(f"error: {want}") and err.count("\n") == 1, err
    assert (tmp_path / "file").read_text() == "x"


def test_prompts_without_a_split_and_an_empty_tokenizer_are_one_line(made, tmp_path):
    d = copy_of(made, tmp_path, "sft", "rm")
    prompts = read_jsonl(d / "data/prompts.jsonl")
    for split in ("val", "train"):
        write_jsonl(d / "data/prompts.jsonl", [p for p in prompts if p["split"] != split])
        before = hashes(d)
        with pytest.raises(DataError) as e:
            train_ppo.main([*dirs(d), "--iterations=1", "--eval_prompts=2"])
        assert one_line(e) == (f"{d}/data/prompts.jsonl: no prompts of the '{split}' split (expected train, "
                               "val and test prompts; make them with: python data/prepare.py)")
        assert hashes(d) == before
    (d / "data/tokenizer.tiktoken").write_text("")
    with pytest.raises(StageError) as e:
        train_sft.main(["--stage=pretrain", *QUICK, *dirs(d)[1:]])
    assert one_line(e).startswith(f"{d}/data/tokenizer.tiktoken: 256 of the 256 single bytes have no rank "
                                  "(the file is empty")
    assert not (d / "out/base").exists()
