"""The one-command pipeline's plumbing: seeds and folders, and when a stage counts as current."""

from nanorlhf.__main__ import PipelineConfig, resolve_dirs, stages


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
