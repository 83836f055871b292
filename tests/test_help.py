"""`--help` teaches (issue 20): every field of every stage's config is printed with a sentence of help
(its comment in the source), its default, and the values the presets give it."""

import dataclasses
import importlib.util
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import train_dpo
import train_ppo
import train_rm
import train_sft
from nanorlhf import __main__ as pipeline
from nanorlhf import eval as evaluation
from nanorlhf import label, report
from nanorlhf.config import field_comments, help_text

ROOT = Path(__file__).resolve().parent.parent


def _prepare():
    spec = importlib.util.spec_from_file_location("prepare_for_help", ROOT / "data/prepare.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # @dataclass and inspect look the module up by name
    spec.loader.exec_module(mod)
    return mod


PREPARE = _prepare()
# (stage, its main, its config class, the presets --help shows)
STAGES = [
    ("train_sft.py", train_sft.main, train_sft.Config,
     {k: {**v, **train_sft.SFT_OVERRIDES[k]} for k, v in train_sft.PRESETS.items()}),
    ("train_rm.py", train_rm.main, train_rm.Config, train_rm.PRESETS),
    ("train_ppo.py", train_ppo.main, train_ppo.Config, train_ppo.PRESETS),
    ("train_dpo.py", train_dpo.main, train_dpo.Config, train_dpo.PRESETS),
    ("data/prepare.py", PREPARE.main, PREPARE.PrepareConfig, PREPARE.PRESETS),
    ("nanorlhf/eval.py", evaluation.main, evaluation.EvalConfig, evaluation.EVAL_PRESETS),
    ("nanorlhf/report.py", report.main, report.ReportConfig, None),
    ("nanorlhf/__main__.py", pipeline.main, pipeline.PipelineConfig, None),
    ("nanorlhf/label.py", label.main, label.LabelConfig, None),
]


def field_lines(text: str) -> dict[str, str]:
    """{field: its flag's line, with its wrapped continuation lines} from a --help text."""
    out, name = {}, None
    for line in text.splitlines():
        m = re.match(r"  --(\w+)=", line)
        if m:
            name = m.group(1)
            out[name] = line
        elif name and line.startswith("    ") and not line.lstrip().startswith("#"):
            out[name] += " " + line.strip()
        else:
            name = None
    return out


def help_of(main, capsys) -> str:
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("stage", STAGES, ids=[s[0] for s in STAGES])
def test_help_gives_every_field_a_sentence_its_default_and_preset_values(stage, capsys):
    name, main, cls, presets = stage
    lines = field_lines(help_of(main, capsys))
    for f in dataclasses.fields(cls):
        assert f.name in lines, f"{name}: --help does not list --{f.name}"
        line = lines[f.name]
        # the preset's default is the device's
        default = "" if f.name == "preset" and presets else str(f.default)
        flag = f"--{f.name}={default}"
        assert line.strip().startswith(flag), f"{name}: --{f.name} without its default: {line!r}"
        words = re.findall(r"[^\W\d_]{2,}", line.strip().split(None, 1)[1] if " " in line.strip() else "")
        assert len(words) >= 3, (
            f"{name}: --{f.name} has no sentence of help (add a comment to the field): {line!r}")
        for preset, values in (presets or {}).items():
            if f.name in values and values[f.name] != f.default:
                assert f"{preset} {values[f.name]}" in line or f"every preset: {values[f.name]}" in line, \
                    f"{name}: --{f.name} does not say what preset {preset} sets: {line!r}"


def test_train_ppo_help_from_the_command_line():
    r = subprocess.run([sys.executable, str(ROOT / "train_ppo.py"), "--help"], capture_output=True, text=True,
                       cwd=ROOT)
    assert r.returncode == 0, r.stderr
    lines = field_lines(r.stdout)
    assert set(lines) == {f.name for f in dataclasses.fields(train_ppo.Config)}
    tiny = train_ppo.PRESETS["tiny"]["init_kl_coef"]  # what the preset sets; the test is that --help says it
    assert ("β, the KL penalty's weight" in lines["init_kl_coef"]
            and f"(tiny {tiny})" in lines["init_kl_coef"])


def test_field_comments_read_the_source_not_a_regex():
    @dataclass
    class C:
        # a title for the fields below
        a: str = "x # not a comment"  # the help of a
        b: int = field(default=1, metadata={"help": "the metadata wins"})  # the comment loses
        c: list = field(default_factory=lambda: [1,
                                                 2])  # help of a field that spans lines
        d: float = 0.5

    trailing, above = field_comments(C)
    assert trailing == {"a": "the help of a", "b": "the comment loses",
                        "c": "help of a field that spans lines"}
    assert above == {"a": "a title for the fields below"}
    text = help_text(C, {"p1": dict(d=0.25), "p2": dict(a="x # not a comment")})
    lines = {k: " ".join(v.split()) for k, v in field_lines(text).items()}
    # a preset equal to the default
    assert lines["a"].endswith("the help of a") and "# not a comment" in lines["a"]
    assert "the metadata wins" in lines["b"] and "loses" not in lines["b"]
    assert lines["c"] == "--c=[1, 2] help of a field that spans lines"
    assert lines["d"] == "--d=0.5 (p1 0.25)"
    assert "  # a title for the fields below" in text.splitlines()
