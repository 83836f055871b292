"""Dataclass configs overridden from the command line, and named presets.

Every stage script has one `@dataclass` config. `parse_config(Config, argv)` turns each field into a
`--name=value` flag (the field's comment in `Config.__doc__`-free form: we use `field(metadata={"help":
...})` where it matters), applies `--preset=<name>` first, then the explicit flags. An unknown flag is
an error that names it, and so is a flag given twice. No `exec` of config files (nanoGPT's configurator
is "probably a terrible idea").

Each stage checks its whole config in one place, `check_config(cfg, **rules)`, before any work: every
bad value is one line `--name=value: expected ...` and exit 2, instead of a traceback halfway through.
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Any, get_type_hints


class StageError(Exception):
    """An expected failure (bad flag, data file, checkpoint; a NaN; a full disk): run_main prints its
    message, which names the flag, file or checkpoint and what was expected, as one line and exits 2."""


class ConfigError(StageError, ValueError):
    """A bad command-line flag or value."""


def _cuda_available() -> bool:
    import torch  # here, not at the top: the pipeline's own process never needs torch

    return torch.cuda.is_available()


def default_device() -> str:
    return "cuda" if _cuda_available() else "cpu"


def default_preset() -> str:
    """`tiny` on a CPU (minutes on 2 cores), `small` on one GPU."""
    return "small" if _cuda_available() else "tiny"


def _convert(name: str, text: str, typ: Any) -> Any:
    typ = typ if isinstance(typ, type) else str(typ)
    try:
        if typ in (bool, "bool"):
            low = text.lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError(text)
        if typ in (int, "int"):
            return int(float(text)) if "e" in text.lower() else int(text)
        if typ in (float, "float"):
            return float(text)
        if typ in (str, "str"):
            return text
        if "None" in str(typ) or "Optional" in str(typ):  # e.g. `int | None`
            if text.lower() == "none":
                return None
            for inner in (int, float):
                if inner.__name__ in str(typ):
                    return inner(text)
            return text
    except ValueError:
        raise ConfigError(f"--{name}={text}: expected a value of type {getattr(typ, '__name__', typ)}") from None
    return text


def parse_config(cls, argv: list[str] | None = None, presets: dict[str, dict] | None = None):
    """Build `cls` from `--key=value` flags (argv defaults to sys.argv[1:]).

    `--preset=NAME` picks a named dict of overrides from `presets` (default: tiny on CPU, small on GPU);
    explicit flags win over the preset. `--help` prints every field with its default and exits.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    pairs: dict[str, str] = {}
    for arg in argv:
        if arg in ("-h", "--help"):
            print(f"usage: --key=value ... (config {cls.__name__})")
            if presets:
                print(f"  --preset: one of {', '.join(presets)} (default {default_preset()})")
            for f in dataclasses.fields(cls):
                default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
                print(f"  --{f.name}={default}  {f.metadata.get('help', '')}")
            raise SystemExit(0)
        if not arg.startswith("--") or "=" not in arg:
            raise ConfigError(f"bad argument {arg!r}: expected --key=value (see --help)")
        key, value = arg[2:].split("=", 1)
        key = key.replace("-", "_")
        if key != "preset" and key not in fields:
            raise ConfigError(f"unknown option --{key} for {cls.__name__} (see --help)")
        if key in pairs:
            raise ConfigError(f"--{key} given twice (--{key}={pairs[key]}, then --{key}={value}): give it once")
        pairs[key] = value
    values: dict[str, Any] = {}
    if presets is not None:
        name = pairs.pop("preset", None) or default_preset()
        if name not in presets:
            raise ConfigError(f"unknown preset {name!r}: expected one of {', '.join(presets)}")
        values.update(presets[name])
        values["preset"] = name
    elif "preset" in pairs and "preset" not in fields:
        raise ConfigError(f"{cls.__name__} has no presets")
    for key, text in pairs.items():
        values[key] = _convert(key, text, hints[key])
    unknown = [k for k in values if k not in fields]
    if unknown:
        raise ConfigError(f"preset sets unknown fields {unknown}")
    return cls(**values)


# Rules for check_config: (test, what was expected).
POSITIVE = (lambda v: v > 0, "a number > 0")
AT_LEAST_1 = (lambda v: v >= 1, "a whole number >= 1")
NON_NEGATIVE = (lambda v: v >= 0, "a number >= 0")
FRACTION = (lambda v: 0 <= v < 1, "a fraction in [0, 1)")
UNIT = (lambda v: 0 <= v <= 1, "a number in [0, 1]")


def one_of(*choices):
    return (lambda v: v in choices, " or ".join(map(str, choices)))


def check_config(cfg, **rules) -> None:
    """Check each named field against its (test, expected) rule, and `device` (if the config has one)
    against the machine: the first bad value is a ConfigError `--name=value: expected ...`."""
    for name, (ok, expected) in rules.items():
        value = getattr(cfg, name)
        if not ok(value):
            raise ConfigError(f"--{name}={value}: expected {expected}")
    problem = device_problem(getattr(cfg, "device", ""))
    if problem:
        raise ConfigError(f"--device={cfg.device}: expected {problem}")


def check_context(cfg, block_size: int) -> None:
    """Generation needs room for a prompt: `--max_new_tokens` below the model's context (once it is known)."""
    check_config(cfg, max_new_tokens=(lambda n: n < block_size, f"fewer than the model's block_size {block_size}"))


def device_problem(device: str) -> str | None:
    """None if `device` exists here ("" picks one), else what would be accepted."""
    kind, _, index = device.partition(":")
    if device in ("", "cpu"):
        return None
    import torch

    if kind == "cuda":
        if not torch.cuda.is_available():
            return "cpu (no CUDA device on this machine)"
        n = torch.cuda.device_count()
        return None if not index or (index.isdigit() and int(index) < n) else f"cuda or cuda:0..cuda:{n - 1}"
    if device == "mps" and torch.backends.mps.is_available():
        return None
    return "cpu or cuda[:N]"


def run_main(main) -> None:
    """Run a stage's main(); turn expected errors into one clear line and exit 2."""
    try:
        main()
    except StageError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
