"""The one-command pipeline's plumbing: seeds and folders, and when a stage counts as current."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from nanorlhf.__main__ import PipelineConfig, Stage, main, resolve_dirs, run_pipeline, share_cores, stages
from nanorlhf.checkpoint import MAKERS, maker
from nanorlhf.config import ConfigError

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def _flag(cmd, name):
    values = [a.split("=", 1)[1] for a in cmd if a.startswith(f"--{name}=")]
    assert len(values) <= 1, (name, cmd)
    return values[0] if values else None


def test_seed_reseeds_the_world_and_every_stage_in_its_own_folders():
    default = {st.name: st.cmd for st in stages(resolve_dirs(PipelineConfig(preset="micro")))}
    seeded = {st.name: st.cmd for st in stages(resolve_dirs(PipelineConfig(preset="micro", seed=3)))}
    assert _flag(default["prepare"], "seed") == "0" and _flag(default["prepare"], "out_dir") == "data"
    assert _flag(seeded["prepare"], "seed") == "3" and _flag(seeded["prepare"], "out_dir") == "data/seed3"
    for name in default:
        if name in ("prepare", "report"):
            continue
        # every stage takes a seed, seed 0 keeps each stage's own default, seed 3 moves each one by 3
        assert int(_flag(seeded[name], "seed")) == int(_flag(default[name], "seed")) + 3, name
        assert _flag(default[name], "data_dir") == "data" and _flag(seeded[name], "data_dir") == "data/seed3"
    for name in default:
        assert _flag(default[name], "out_dir") in ("out", "data", None)
        assert _flag(seeded[name], "out_dir") in ("out/seed3", "data/seed3", None)
    assert _flag(default["pretrain"], "seed") == "1337" and _flag(default["eval"], "seed") == "1234"
    # the same seed gives the same commands (stage seeds are derived, not drawn)
    again = {st.name: st.cmd for st in stages(resolve_dirs(PipelineConfig(preset="micro", seed=3)))}
    assert again == seeded
    # folders given on the command line are kept
    cfg = resolve_dirs(PipelineConfig(seed=3, data_dir="/tmp/d", out_dir="/tmp/o"))
    assert (cfg.data_dir, cfg.out_dir) == ("/tmp/d", "/tmp/o")


def test_every_stage_runs_once_and_every_file_has_one_writer():
    for preset in ("micro", "tiny"):
        for rounds in (1, 2, 3):
            plan = stages(resolve_dirs(PipelineConfig(preset=preset, rounds=rounds)))
            names = [st.name for st in plan]
            assert len(names) == len(set(names)), names
            outputs = [str(f) for st in plan for f in st.outputs]
            assert len(outputs) == len(set(outputs)), outputs



def test_the_control_runs_take_their_preset_flags_and_only_there():
    from nanorlhf.runs import CONTROL
    tiny = {st.name: st.cmd for st in stages(resolve_dirs(PipelineConfig(preset="tiny")))}
    micro = {st.name: st.cmd for st in stages(resolve_dirs(PipelineConfig(preset="micro")))}
    want = CONTROL[0].split("=", 1)[1]
    for name in ("ppo_ptx", "ppo_beta0"):  # the controls run fewer iterations on the tiny preset
        assert _flag(tiny[name], "iterations") == want, tiny[name]
        assert _flag(micro[name], "iterations") is None, micro[name]  # micro: its preset's own
    for name in ("ppo", "ppo_r1", "ppo_gold"):  # the headline, its rounds and the ceiling: the preset's
        assert _flag(tiny[name], "iterations") is None, tiny[name]

# ----------------------------------------------------------------------- "current" is judged by content
def pipeline(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "nanorlhf", *args], capture_output=True, text=True, env=ENV,
                          timeout=300, cwd=cwd)


def test_a_stage_run_by_hand_with_other_flags_is_rerun_and_a_bad_run_forgets_nothing(tmp_path):
    where = ["--preset=micro", f"--data_dir={tmp_path}/data", f"--out_dir={tmp_path}/out",
             "--stop_after=prepare"]
    assert pipeline(*where).returncode == 0
    state = (tmp_path / "out/pipeline_state.json").read_bytes()
    # a bad run: refused before any stage runs (the old pipeline ran prepare, which failed, and forgot it)
    bad = pipeline("--preset=huge", *where[1:])
    assert (bad.returncode == 2
            and bad.stderr == "error: --preset=huge: expected micro or tiny or small\n"), bad.stderr
    assert (tmp_path / "out/pipeline_state.json").read_bytes() == state
    n_stages = len(stages(resolve_dirs(PipelineConfig(preset="micro"))))
    assert f"[1/{n_stages}] prepare: current, skipped" in pipeline(*where).stdout
    # the same stage run by hand with another flag: its files are not what the pipeline made any more
    r = subprocess.run([sys.executable, str(ROOT / "data/prepare.py"), "--preset=micro",
                        f"--out_dir={tmp_path}/data",
                        "--sloppy_frac=0.2"], env=ENV, capture_output=True, timeout=300)
    assert r.returncode == 0
    again = pipeline(*where).stdout
    assert "prepare (its files changed since the pipeline wrote them (run by hand?))" in again, again
    assert "current, skipped" not in again


def fake_stage(name, text, needs=(), code=0):
    """A stage that writes `<name>.txt`: `text`, after the texts of the stages it reads; exits `code`."""
    script = ("import sys, pathlib; d = pathlib.Path(sys.argv[1]); "
              f"t = ''.join((d / f'{{n}}.txt').read_text() for n in {list(needs)!r}) + {text!r}; (d / "
              f"'{name}.txt').write_text(t); sys.exit({code})")
    return Stage(name, [sys.executable, "-c", script], [], needs)


def plan(d, a="A", b="B", b_code=0):
    stages_ = [fake_stage("a", a), fake_stage("b", b, ("a",), b_code)]
    for s in stages_:
        s.cmd.append(str(d))
        s.outputs = [d / f"{s.name}.txt"]
    return stages_


def test_current_means_same_inputs_and_same_files(tmp_path, capsys):
    def runs(p):
        capsys.readouterr()
        run_pipeline(p, tmp_path)
        out = capsys.readouterr().out
        return [name for name in ("a", "b") if f"] {name} (" in out]

    assert runs(plan(tmp_path)) == ["a", "b"]
    assert runs(plan(tmp_path)) == []
    # a's file edited by hand: a runs again; it writes the same bits as before, so b is still current
    (tmp_path / "a.txt").write_text("edited")
    assert runs(plan(tmp_path)) == ["a"] and (tmp_path / "a.txt").read_text() == "A"
    # a's command changed: a runs, writes other bits, so b (which reads them) runs too
    assert runs(plan(tmp_path, a="A2")) == ["a", "b"] and (tmp_path / "b.txt").read_text() == "A2B"
    # b fails: the pipeline stops, and a's record survives it
    with pytest.raises(SystemExit):
        run_pipeline(plan(tmp_path, a="A3", b_code=3), tmp_path)
    assert runs(plan(tmp_path, a="A3")) == ["b"]
    # a file a stage should have written is missing: it runs again
    (tmp_path / "b.txt").unlink()
    assert runs(plan(tmp_path, a="A3")) == ["b"]


def test_every_checkpoint_names_the_command_that_makes_it():
    """checkpoint.MAKERS (the hint of a missing or wrong checkpoint) has every checkpoint the pipeline
    writes, with the script and the flags the pipeline gives that stage beyond folders, preset and seed."""
    written = {out.parent.name: st for st in stages(resolve_dirs(PipelineConfig(preset="micro", rounds=1)))
               for out in st.outputs if out.name == "ckpt.pt"}
    assert set(MAKERS) == set(written)
    rounds = {out.parent.name: st for st in stages(resolve_dirs(PipelineConfig(preset="micro", rounds=3)))
              for out in st.outputs if out.name == "ckpt.pt"}
    assert set(rounds) - set(MAKERS) == {"rm_r1", "ppo_r1", "rm_r2", "ppo_r2"}
    for name in ("rm_r1", "ppo_r2"):  # an earlier round's checkpoint: the pipeline with rounds makes it
        assert maker(name).startswith("python -m nanorlhf --rounds=") and f"round {name[-1]}" in maker(name)
    where = ("--preset=", "--data_dir=", "--out_dir=", "--seed=", "--device=", "--dtype=")
    for name, st in written.items():
        script, *flags = MAKERS[name].split()[1:]
        assert script == Path(st.cmd[1]).name, name
        assert set(flags) == {a for a in st.cmd[2:] if not a.startswith(where)}, name


def waiting_stage(d, name, other, needs=(), code=0, linger=0.0):
    """A stage that says it started, then waits (10 s at most) for stage `other` to have started too: it
    ends well only if the two ran side by side. It writes its OMP_NUM_THREADS into `<name>.txt` `linger`
    seconds later."""
    script = ("import os, sys, time, pathlib; d = pathlib.Path(sys.argv[1]); "
              f"(d / '{name}.started').touch(); t = time.time()\n"
              f"while not (d / '{other}.started').exists() and time.time() < t + 10: time.sleep(0.05)\n"
              f"time.sleep({linger}); (d / '{name}.txt').write_text(os.environ.get('OMP_NUM_THREADS', '-')); "
              f"sys.exit({code} if (d / '{other}.started').exists() else 3)")
    return Stage(name, [sys.executable, "-c", script, str(d)], [d / f"{name}.txt"], needs)


def test_stages_that_read_nothing_of_each_other_run_side_by_side_each_on_its_share_of_the_cores(tmp_path):
    plan = [fake_stage("a", "A"), waiting_stage(tmp_path, "b", "c", ("a",)),
            waiting_stage(tmp_path, "c", "b", ("a",)), fake_stage("d", "D", ("b", "c"))]
    for s in (plan[0], plan[3]):
        s.cmd.append(str(tmp_path))
        s.outputs = [tmp_path / f"{s.name}.txt"]
    plan = share_cores(plan, jobs=2, threads=4)
    assert [s.threads for s in plan] == [0, 2, 2, 0]  # only b and c may run beside another
    state = run_pipeline(plan, tmp_path, jobs=2)
    assert (tmp_path / "b.txt").read_text() == "2" and (tmp_path / "c.txt").read_text() == "2"
    assert (tmp_path / "d.txt").read_text() == "22D"  # after both: it read their files
    assert json.loads(state.read_text())["b"]["command"][0] == "OMP_NUM_THREADS=2"  # (a rerun if it changes)


def test_a_failure_beside_a_running_stage_lets_it_finish_and_starts_nothing_more(tmp_path, capsys):
    plan = [waiting_stage(tmp_path, "a", "b", code=3), waiting_stage(tmp_path, "b", "a", linger=1.0),
            fake_stage("c", "C")]
    plan[2].cmd.append(str(tmp_path))
    plan[2].outputs = [tmp_path / "c.txt"]
    with pytest.raises(SystemExit):
        run_pipeline(plan, tmp_path, jobs=2)
    assert "pipeline: stage 'a' failed (exit 3)" in capsys.readouterr().err
    assert set(json.loads((tmp_path / "pipeline_state.json").read_text())) == {"b"}
    assert not (tmp_path / "c.txt").exists()


def test_the_runs_after_the_last_round_are_the_stages_that_share_the_cores():
    plan = stages(resolve_dirs(PipelineConfig(preset="micro")))
    shared = {s.name for s in share_cores(plan, jobs=2, threads=2) if s.threads == 1}
    assert shared == {"ppo", "ppo_ptx", "ppo_beta0", "ppo_gold", "dpo"}
    alone = stages(resolve_dirs(PipelineConfig(preset="micro", skip="ppo_ptx,ppo_beta0,ppo_gold,dpo")))
    assert not any(s.threads for s in share_cores(alone, jobs=2, threads=2))


@pytest.mark.parametrize("flags, want", [(["--jobs=0"], "--jobs=0: expected a whole number >= 1"),
                                         (["--jobs=2", "--nproc=2"], "--jobs=2: expected 1 with --nproc > 1")])
def test_jobs_is_refused_in_one_line_before_any_work_where_it_cannot_share_the_cores(tmp_path, flags, want):
    with pytest.raises(ConfigError) as e:
        main(["--preset=micro", f"--data_dir={tmp_path}/d", f"--out_dir={tmp_path}/o", *flags])
    assert str(e.value).startswith(want) and "\n" not in str(e.value)
    assert list(tmp_path.iterdir()) == []
