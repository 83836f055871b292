"""Nothing lost, one-line errors (issue 17): every bad input is refused before any work with one line
naming the flag, file or checkpoint and what was expected, and no stage writes a file worse than the one
it would replace. The stages run in this process on micro models of a few steps (seconds)."""

import io
import json
import os
import runpy
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import train_dpo
import train_ppo
import train_rm
import train_sft
from nanorlhf import label
from nanorlhf.checkpoint import CheckpointError, load_model
from nanorlhf.config import ConfigError, StageError, parse_config
from nanorlhf.data import (DataError, corpus_tokens, load_world, read_comparisons, read_jsonl, read_text,
                           write_jsonl)
from nanorlhf.tokenizer import load_ranks, load_tokenizer
from nanorlhf.training import NonFiniteError

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
QUICK = ["--preset=micro", "--max_steps=3", "--eval_interval=3", "--gold_eval_prompts=0"]
prepare_main = runpy.run_path(str(ROOT / "data/prepare.py"))["main"]


def make(d: Path, relative: bool = False) -> Path:
    """data/, out/base, out/sft, out/rm in `d`; with `relative`, made from `d` with relative paths, as a user
    would."""
    cwd = os.getcwd()
    os.chdir(d if relative else cwd)
    where = [] if relative else [f"--data_dir={d}/data", f"--out_dir={d}/out"]
    try:
        prepare_main(["--preset=micro", f"--out_dir={'data' if relative else d / 'data'}"])
        train_sft.main(["--stage=pretrain", *QUICK, *where])
        train_sft.main(["--stage=sft", *QUICK, *where])
        train_rm.main(["--preset=micro", *where])
    finally:
        os.chdir(cwd)
    return d


def copy_of(made: Path, dst: Path, *stages: str) -> Path:
    """A copy of the data and of the named stages' folders, to break things in."""
    for rel in ("data", *(f"out/{s}" for s in stages)):
        for f in (made / rel).iterdir():
            (dst / rel).mkdir(parents=True, exist_ok=True)
            (dst / rel / f.name).write_bytes(f.read_bytes())
    return dst


def dirs(d: Path) -> list[str]:
    return ["--preset=micro", f"--data_dir={d}/data", f"--out_dir={d}/out"]


def listing(d: Path) -> dict:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def one_line(e) -> str:
    msg = str(e.value if hasattr(e, "value") else e)
    assert "\n" not in msg, msg
    return msg


# ------------------------------------------------------------------ 1. the tokenizer travels with a
# checkpoint
def test_a_checkpoint_loads_from_another_directory(tmp_path, monkeypatch):
    d = make(tmp_path, relative=True)  # the checkpoints name data/tokenizer.tiktoken, relative to tmp_path
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    train_ppo.main([*dirs(d), "--iterations=1", "--eval_prompts=2"])
    assert (d / "out/ppo/ckpt.pt").exists()


def test_data_made_again_under_a_trained_model_is_refused(made, tmp_path):
    d = copy_of(made, tmp_path, "base")
    prepare_main(["--preset=micro", f"--out_dir={d}/data", "--seed=5"])  # another world, another tokenizer
    with pytest.raises(CheckpointError) as e:
        train_sft.main(["--stage=sft", *QUICK, *dirs(d)[1:]])
    msg = one_line(e)
    assert "base/ckpt.pt" in msg and "tokenizer" in msg and "python train_sft.py --stage=pretrain" in msg
    assert not (d / "out/sft").exists()


# ------------------------------------------------------ 2, 3. nothing saved that is worse than what it
# replaces
def test_a_nan_reward_model_is_not_saved(made, tmp_path):
    d = copy_of(made, tmp_path, "sft", "rm")
    good = (d / "out/rm/ckpt.pt").read_bytes()
    with pytest.raises(NonFiniteError) as e:  # the loss stays finite; the held-out loss does not
        train_rm.main([*dirs(d), "--lr=1.5e11", "--warmup_steps=1000000"])
    assert "Last good checkpoint kept" in one_line(e)
    assert (d / "out/rm/ckpt.pt").read_bytes() == good


@pytest.mark.parametrize("flag", ["--max_steps=0", "--max_steps=-1"])
def test_no_training_steps_never_replace_a_model(made, tmp_path, flag):
    d = copy_of(made, tmp_path, "base", "sft")
    before = listing(d)
    with pytest.raises(ConfigError, match=f"^{flag}: expected a whole number >= 1$"):
        train_sft.main(["--stage=sft", *dirs(d), flag])
    assert listing(d) == before


# --------------------------------------------------------------------------- 5. comparisons replaced whole
def test_resampling_nothing_keeps_the_comparisons_and_an_empty_file_says_why(made, tmp_path):
    d = copy_of(made, tmp_path, "sft", "rm")
    before = listing(d)
    with pytest.raises(ConfigError, match="^--n_prompts=0: expected"):
        train_rm.main([*dirs(d), "--resample=true", "--n_prompts=0"])
    assert listing(d) == before
    with pytest.raises(DataError, match="not written: no records"):
        write_jsonl(d / "out/rm/comparisons.jsonl", [])
    assert listing(d) == before
    (d / "out/rm/comparisons.jsonl").write_text("")
    with pytest.raises(DataError) as e:
        train_rm.main(dirs(d))
    assert ("comparisons.jsonl: no records, the file is empty" in one_line(e)
            and "--resample=true" in str(e.value))


# --------------------------------------------------------------------------------------------- 6. UTF-8
def test_a_byte_that_is_not_utf8_names_the_file_and_line(made, tmp_path):
    jsonl = tmp_path / "x.jsonl"
    jsonl.write_bytes(b'{"prompt": "a"}\n\n{"prompt": "caf\xe9"}\n')
    with pytest.raises(DataError, match=r"x.jsonl:3: byte 0xe9 at column 16 is not UTF-8"):
        read_jsonl(jsonl, {"prompt": str})
    text = tmp_path / "corpus.txt"
    text.write_bytes(b"one\ntwo \xff\n")
    with pytest.raises(DataError, match=r"corpus.txt:2: byte 0xff"):
        read_text(text)
    ranks = tmp_path / "tok.tiktoken"
    ranks.write_bytes((made / "data/tokenizer.tiktoken").read_bytes() + b"\xfe\n")
    with pytest.raises(StageError, match=r"tok.tiktoken:\d+: byte 0xfe"):
        load_ranks(ranks)
    meta = tmp_path / "meta.json"
    meta.write_bytes(b'{"seed": 0,\n "sloppy_frac": "\x80"}')
    with pytest.raises(DataError, match=r"meta.json:2: byte 0x80"):
        load_world(tmp_path)


# --------------------------------------------------------------------- 7. config checked before any work
SFT, RM, PPO, DPO = (["--stage=sft"],
                     train_sft.main), ([], train_rm.main), ([], train_ppo.main), ([], train_dpo.main)
BAD = [
    (SFT, "--batch_size=0", "--batch_size=0: expected a whole number >= 1"),
    (SFT, "--lr=-1", "--lr=-1.0: expected a number > 0"),
    (SFT, "--n_head=3", "--n_head=3: expected a divisor of --n_embd=32"),
    (SFT, "--eval_interval=0", "--eval_interval=0: expected a whole number >= 1"),
    (SFT, "--val_frac=1", "--val_frac=1.0: expected a fraction in [0, 1)"),
    (SFT, "--max_new_tokens=64", "--max_new_tokens=64: expected fewer than the model's block_size 64"),
    (SFT, "--device=cuda:99" if torch.cuda.is_available() else "--device=cuda", "--device=cuda"),
    (RM, "--k=0", "--k=0: expected at least 2"),
    (RM, "--epochs=0", "--epochs=0: expected a whole number >= 1"),
    (RM, "--val_frac=1", "--val_frac=1.0: expected a fraction in (0, 1)"),
    (PPO, "--temperature=0", "--temperature=0.0: expected a number > 0"),
    (PPO, "--max_new_tokens=100", "--max_new_tokens=100: expected fewer than the model's block_size 64"),
    (PPO, "--minibatch_size=0", "--minibatch_size=0: expected a whole number >= 1"),
    (DPO, "--beta=0", "--beta=0.0: expected a number > 0"),
    (DPO, "--run_name=a/b", "--run_name=a/b: expected a run name of letters, digits"),
]


@pytest.mark.parametrize("stage, flag, want", BAD, ids=[f"{s[1].__module__}{f}" for s, f, _ in BAD])
def test_every_stage_checks_its_config_before_any_work(made, tmp_path, stage, flag, want):
    d = copy_of(made, tmp_path, "base", "sft", "rm")
    before = listing(d)
    (pre, main) = stage
    with pytest.raises(ConfigError) as e:
        main([*pre, *dirs(d), flag])
    assert one_line(e).startswith(want)
    assert listing(d) == before


# ---------------------------------------------------------------------- 8. a checkpoint of the wrong stage
def test_a_checkpoint_of_the_wrong_stage_is_refused(made, tmp_path):
    d = copy_of(made, tmp_path, "base", "sft", "rm")
    before = listing(d)
    o = d / "out"
    for main, flags, want, command in (
        (train_ppo.main, [f"--policy_from={o}/rm/ckpt.pt"],
         "a 'rm' checkpoint (scalar head), expected 'sft' (lm head)",
         "python train_sft.py --stage=sft"),
        (train_ppo.main, [f"--reward_from={o}/sft/ckpt.pt"],
         "a 'sft' checkpoint (lm head), expected 'rm' (scalar head)",
         "python train_rm.py"),
        (train_sft.main, ["--stage=sft", f"--init_from={o}/rm/ckpt.pt"], "expected 'base' (lm head)",
         "python train_sft.py --stage=pretrain"),
    ):
        with pytest.raises(CheckpointError) as e:
            main([*dirs(d), *flags])
        assert want in one_line(e) and e.value.args[0].endswith(command)
    assert listing(d) == before


# -------------------------------------------------------------------------------- 9. messages that are right
def test_missing_files_name_the_command_that_makes_them(made, tmp_path, capsys):
    d = copy_of(made, tmp_path, "sft")
    with pytest.raises(DataError) as e:
        train_rm.main([*dirs(d), "--labels=human", f"--human_labels={tmp_path}/none.jsonl"])
    assert "none.jsonl: file not found (make it with: python -m nanorlhf.label)" in one_line(e)
    with pytest.raises(SystemExit) as e:
        label.main([f"--samples={tmp_path}/none.jsonl"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "none.jsonl: file not found (make it with: python train_rm.py)" in err
    (d / "data/corpus.txt").write_text("\n<|endoftext|>\n")
    with pytest.raises(DataError, match=r"corpus.txt: no documents"):
        corpus_tokens(d / "data", load_tokenizer(str(d / "data/tokenizer.tiktoken")))


def test_a_nan_in_ppo_names_the_iteration_and_says_no_checkpoint_exists(made, tmp_path):
    d = copy_of(made, tmp_path, "sft", "rm")
    with pytest.raises(NonFiniteError) as e:
        train_ppo.main([*dirs(d), "--lr=1e30"])
    msg = one_line(e)
    assert "PPO loss became nan at iteration 1, minibatch " in msg and "No checkpoint was written" in msg
    assert not (d / "out/ppo").exists()


def _stage_in_subprocess(d: Path, preexec, *flags) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "train_sft.py"), "--stage=sft", *QUICK,
                           *dirs(d)[1:], *flags],
                          capture_output=True, text=True, env=ENV, timeout=300, preexec_fn=preexec)


def _file_size_limit():  # a full disk, as the writer sees it: writes beyond 100 kB fail (EFBIG)
    import resource

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))


def test_a_full_disk_is_one_line_and_keeps_the_previous_checkpoint(made, tmp_path):
    d = copy_of(made, tmp_path, "base", "sft")
    good = (d / "out/sft/ckpt.pt").read_bytes()
    assert len(good) > 100_000
    r = _stage_in_subprocess(d, _file_size_limit)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "sft/ckpt.pt: could not write it (" in r.stderr and "the previous file is kept" in r.stderr
    assert (d / "out/sft/ckpt.pt").read_bytes() == good and listing(d / "out/sft") == {"ckpt.pt": good}


def test_a_read_only_folder_is_one_line(made, tmp_path):
    if os.geteuid() == 0:  # root writes into a chmod 555 folder; sysfs refuses even root
        out = Path("/sys/nanorlhf_test")
    else:
        out = tmp_path / "ro"
        out.mkdir(mode=0o555)
    flags = [f"--init_from={made}/out/base/ckpt.pt", f"--out_dir={out}"]
    with pytest.raises(StageError) as e:
        train_sft.main(["--stage=sft", *QUICK, f"--data_dir={made}/data", *flags])
    assert f"{out}/sft" in one_line(e) and "could not write it" in str(e.value)


# ---------------------------------------------------------------------- 10. temp files of a killed save
def test_a_killed_save_leaves_the_old_checkpoint_and_the_next_save_removes_its_temp(made, tmp_path):
    d = copy_of(made, tmp_path, "base", "sft")
    path = d / "out/sft/ckpt.pt"
    # a writer that saves a 27 MB checkpoint over and over, killed with SIGKILL in the middle of one
    writer = ("import sys, torch; from nanorlhf.checkpoint import load_checkpoint, save_checkpoint; "
              "from nanorlhf.model import GPT, GPTConfig; ck = load_checkpoint(sys.argv[1]); m = "
              "GPT(GPTConfig(vocab_size=512, n_layer=2, n_embd=512, n_head=4));\nfor i in range(1, 1000): "
              "save_checkpoint(sys.argv[1], m, {}, ck, 'sft', i); print(i, flush=True)")
    proc = subprocess.Popen([sys.executable, "-c", writer, str(path)], stdout=subprocess.PIPE,
                            text=True, env=ENV)
    assert proc.stdout.readline().strip() == "1"
    proc.stdout.readline()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    stale = list(path.parent.glob("ckpt.pt.tmp*"))
    assert load_model(path, "sft")[0].config.n_embd == 512  # the last complete save, whole
    # the next save of the file removes the dead writer's temp file (made here if the kill fell between saves)
    stale = stale or [path.with_name(f"ckpt.pt.tmp{proc.pid}")]
    stale[0].write_bytes(b"half a checkpoint")
    train_sft.main(["--stage=sft", "--preset=micro", "--max_steps=1", "--gold_eval_prompts=0", *dirs(d)[1:]])
    assert sorted(p.name for p in path.parent.iterdir()) == ["ckpt.pt"]


# ---------------------------------------------------------------------------------- 11, 12. the smaller ones
def test_a_flag_given_twice_is_an_error():
    with pytest.raises(ConfigError, match=r"^--stage given twice \(--stage=pretrain, then --stage=sft\)"):
        train_sft.get_config(["--stage=pretrain", "--stage=sft"])
    with pytest.raises(ConfigError, match=r"^--preset given twice"):
        parse_config(train_rm.Config, ["--preset=micro", "--preset=tiny"], train_rm.PRESETS)


def test_rankings_must_be_whole_numbers_named_by_file_line(tmp_path):
    p = tmp_path / "c.jsonl"
    good = {"prompt": "q", "responses": ["a", "b"], "ranking": [1, 0]}
    for bad in ([1.0, 0.0], [True, False]):
        p.write_text(json.dumps(good) + "\n\n" + json.dumps({**good, "ranking": bad}) + "\n")
        with pytest.raises(DataError, match=r"c.jsonl:3: 'ranking' must be a permutation"):
            read_comparisons(p)


def test_label_from_model_samples_training_prompts_only(made, tmp_path, monkeypatch):
    rows = [json.loads(line) for line in (made / "data/prompts.jsonl").read_text().splitlines()]
    held_out = [r for r in rows if r["split"] != "train"]
    train = [r for r in rows if r["split"] == "train"]
    # held out first
    (tmp_path / "p.jsonl").write_text("".join(json.dumps(r) + "\n" for r in held_out + train))
    seen = []
    monkeypatch.setattr(label, "label_loop", lambda groups, *a, **k: seen.extend(groups))
    label.main([f"--from_model={made}/out/sft/ckpt.pt", f"--prompts={tmp_path}/p.jsonl", "--n=3", "--k=2",
                "--max_new_tokens=4"])
    assert [g["prompt"] for g in seen] == [r["prompt"] for r in train[:3]]


def test_label_refuses_k_1_and_shows_control_bytes_escaped(made, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        label.main([f"--from_model={made}/out/sft/ckpt.pt", f"--prompts={made}/data/prompts.jsonl", "--k=1"])
    want = "error: --k=1: expected at least 2 (a ranking compares responses)\n"
    assert e.value.code == 2 and capsys.readouterr().err == want
    shown = io.StringIO()
    groups = [{"prompt": "Say hi.\x1b[2J", "responses": ["hi\x07", "\x1b[31mred\x1b[0m"]}]
    label.label_loop(groups, tmp_path / "labels.jsonl", io.StringIO("q\n"), shown)
    text = shown.getvalue()
    assert "\x1b" not in text and "\x07" not in text and "\\x1b[31mred" in text and "hi\\x07" in text


# ------------------------------------------------------------------------------- behaviours that held up
def test_a_malicious_pickle_is_refused(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.mkdir, (str(marker),))

    torch.save({"model": Evil()}, tmp_path / "ckpt.pt")
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_model(tmp_path / "ckpt.pt", "sft")
    assert not marker.exists()


def test_same_seed_same_bits(made, tmp_path):
    runs = []
    for name in ("a", "b"):
        d = copy_of(made, tmp_path / name)
        train_sft.main(["--stage=pretrain", *QUICK, *dirs(d)[1:]])
        runs.append(torch.load(d / "out/base/ckpt.pt", weights_only=True)["model"])
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])
