"""Dataclass configs overridden from the command line, and named presets.

One `@dataclass` config per stage script: `parse_config(Config, argv)` turns each field into a `--name=value`
flag, applies `--preset=<name>` first, then the explicit flags; an unknown flag or one given twice is an error
that names it. No `exec` of config files (nanoGPT's configurator is "probably a terrible idea"). `--help`
documents a field where it is defined: the comment ending its line (or `field(metadata={"help": ...})`), its
default, the presets' values; a comment on a line of its own titles the fields below it.

Each entry point checks its whole config in one place, `check_config(cfg, **rules)`, before any work: every
bad value is one line `--name=value: expected ...` and exit 2, not a traceback halfway through. Besides the
stage's rules it checks what holds for every config: numbers are finite (`--lr=inf` passes "> 0"), a seed is
one NumPy accepts, the device exists; parsing takes only whole numbers for integers (`2.5e0` errs, not 2).
"""

from __future__ import annotations

import dataclasses
import inspect
import io
import math
import signal
import sys
import textwrap
import tokenize
from typing import Any, get_type_hints


class StageError(Exception):
    """An expected failure (bad flag, data file, checkpoint; a NaN; a full disk): run_main prints its
    message, which names the flag, file or checkpoint and what was expected, as one line and exits 2."""


class ConfigError(StageError, ValueError):
    """A bad command-line flag or value."""


def _cuda_available() -> bool:
    import torch  # here, not at the top: config stays importable without torch (1.5 s+: python -X importtime)

    return torch.cuda.is_available()


def default_device() -> str:
    return "cuda" if _cuda_available() else "cpu"


def default_preset() -> str:
    """`tiny` on a CPU (minutes on 2 cores), `small` on one GPU."""
    return "small" if _cuda_available() else "tiny"


def _whole(text: str) -> int:
    """An integer flag's value: `300`, or a float that is a whole number (`3e2`); ValueError otherwise
    (`2.5e0` is not silently 2, and `1e999` is no number at all)."""
    try:
        return int(text)
    except ValueError:
        number = float(text)
        if not number.is_integer():  # also inf and nan
            raise ValueError(text) from None
        return int(number)


def _convert(name: str, text: str, typ: Any) -> Any:
    typ = typ if isinstance(typ, type) else str(typ)
    optional = "None" in str(typ) or "Optional" in str(typ)  # e.g. `int | None`
    whole = typ in (int, "int") or (optional and "int" in str(typ))
    if optional and text.lower() == "none":
        return None
    try:
        if typ in (bool, "bool"):
            low = text.lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError(text)
        if whole:
            return _whole(text)
        if typ in (float, "float") or (optional and "float" in str(typ)):
            return float(text)
    except ValueError:
        expected = "a whole number" if whole else f"a value of type {getattr(typ, '__name__', typ)}"
        raise ConfigError(f"--{name}={text}: expected {expected}") from None
    return text


def field_comments(cls) -> tuple[dict[str, str], dict[str, str]]:
    """({field: the comment ending its line}, {field: the comment lines just above it}) from the source of
    `cls` and of the dataclasses it inherits from. tokenize, not a regex: a `#` inside a string default is
    not a comment. A class whose source cannot be read (defined in a REPL) gives empty dicts."""
    trailing: dict[str, str] = {}
    above: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            source = textwrap.dedent(inspect.getsource(klass))
        except (OSError, TypeError):
            continue
        depth, line, pending = 0, [], []
        for tok in tokenize.generate_tokens(io.StringIO(source).readline):
            if tok.type == tokenize.INDENT:
                depth += 1
            elif tok.type == tokenize.DEDENT:
                depth -= 1
            elif tok.type == tokenize.COMMENT and not line:  # a comment on a line of its own
                pending.append(tok.string.lstrip("#").strip())
            elif tok.type == tokenize.NEWLINE:  # the end of a statement (a field may span lines)
                code = [t for t in line if t.type not in (tokenize.COMMENT, tokenize.NL)]
                if depth == 1 and len(code) > 1 and code[0].type == tokenize.NAME and code[1].string == ":":
                    comments = [t.string.lstrip("#").strip() for t in line if t.type == tokenize.COMMENT]
                    if comments:
                        trailing[code[0].string] = " ".join(comments)
                    if pending:
                        above[code[0].string] = " ".join(pending)
                line, pending = [], []
            elif tok.type != tokenize.NL:
                line.append(tok)
    return trailing, above


def _preset_values(name: str, default: Any, presets: dict[str, dict] | None) -> str:
    """'(micro 30, small 3000)': the presets that change a field's default, or '' if none does."""
    changed = {p: v[name] for p, v in (presets or {}).items() if name in v and v[name] != default}
    if not changed:
        return ""
    if len(changed) == len(presets) and len({repr(v) for v in changed.values()}) == 1:
        return f"(every preset: {next(iter(changed.values()))})"
    return "(" + ", ".join(f"{p} {v}" for p, v in changed.items()) + ")"


def help_text(cls, presets: dict[str, dict] | None = None) -> str:
    """What `--help` prints: the stage's one-line summary, then every field as `--name=default  help`,
    with the values the presets give it (cleanrl prints a docstring per flag; ours come from the comments)."""
    trailing, above = field_comments(cls)
    module = sys.modules.get(cls.__module__)
    summary = ((getattr(module, "__doc__", None) or "").strip().splitlines() or [""])[0]
    lines = [summary] if summary else []
    lines.append(f"flags: --key=value, one per field of {cls.__name__}" +
                 (f"; --preset=NAME ({', '.join(presets)}) applies first, explicit flags win"
                  if presets else ""))
    rows = []
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        text = f.metadata.get("help") or trailing.get(f.name, "")
        if f.name == "preset" and presets:
            default = default_preset()
            text += f" [here: {default}]"
        if f.name in above:
            rows.append((None, above[f.name]))
        rows.append((f"--{f.name}={default}",
                     " ".join(filter(None, (text, _preset_values(f.name, default, presets))))))
    width = min(40, max(len(flag) for flag, _ in rows if flag))
    for flag, text in rows:
        if flag is None:
            lines.append(f"  # {text}")
            continue
        lines.append(textwrap.fill(text, 118, initial_indent=f"  {flag:<{width}}  ",
                                   subsequent_indent=" " * (width + 4), break_on_hyphens=False)
                     if text else f"  {flag}")
    return "\n".join(lines)


def parse_config(cls, argv: list[str] | None = None, presets: dict[str, dict] | None = None):
    """Build `cls` from `--key=value` flags (argv defaults to sys.argv[1:]).

    `--preset=NAME` picks a named dict of overrides from `presets` (default: tiny on CPU, small on GPU);
    explicit flags win over the preset. `--help` prints help_text(cls, presets) and exits.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    pairs: dict[str, str] = {}
    for arg in argv:
        if arg in ("-h", "--help"):
            print(help_text(cls, presets))
            raise SystemExit(0)
        if not arg.startswith("--") or "=" not in arg:
            raise ConfigError(f"bad argument {arg!r}: expected --key=value (see --help)")
        key, value = arg[2:].split("=", 1)
        key = key.replace("-", "_")
        if key != "preset" and key not in fields:
            raise ConfigError(f"unknown option --{key} for {cls.__name__} (see --help)")
        if key in pairs:
            raise ConfigError(f"--{key} given twice (--{key}={pairs[key]}, then --{key}={value}): give it "
                              "once")
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


# np.random.seed takes [0, 2^32); the stages add offsets to a seed (the pipeline 1337, eval up to 2, each
# rank 100,003), so seeds stop at 2^31 - 1, which leaves room for them
SEED = (lambda v: 0 <= v < 2**31, f"a whole number from 0 to {2**31 - 1}")


def check_config(cfg, **rules) -> None:
    """Check every number of `cfg` is finite, each named field against its (test, expected) rule, `seed`
    (if the config has one) against SEED, and `device` against the machine: the first bad value is a
    ConfigError `--name=value: expected ...`. Every entry point calls it before any work."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"--{f.name}={value}: expected a finite number")
    if hasattr(cfg, "seed") and "seed" not in rules:
        rules = {"seed": SEED, **rules}
    for name, (ok, expected) in rules.items():
        value = getattr(cfg, name)
        if not ok(value):
            raise ConfigError(f"--{name}={value}: expected {expected}")
    problem = device_problem(getattr(cfg, "device", ""))
    if problem:
        raise ConfigError(f"--device={cfg.device}: expected {problem}")


def check_context(cfg, block_size: int) -> None:
    """Generation needs room for a prompt: `--max_new_tokens` below the model's context (once it is known)."""
    check_config(cfg, max_new_tokens=(lambda n: n < block_size,
                                      f"fewer than the model's block_size {block_size}"))


def device_problem(device: str) -> str | None:
    """None if `device` exists here ("" picks one), else what would be accepted."""
    kind, _, index = device.partition(":")
    if device in ("", "cpu"):
        return None
    import torch  # here, not at the top: as in _cuda_available

    if kind == "cuda":
        if not torch.cuda.is_available():
            return "cpu (no CUDA device on this machine)"
        n = torch.cuda.device_count()
        return None if not index or (index.isdigit() and int(index) < n) else f"cuda or cuda:0..cuda:{n - 1}"
    if device == "mps" and torch.backends.mps.is_available():
        return None
    return "cpu or cuda[:N]"


def _interrupt(signum, frame):
    raise KeyboardInterrupt  # SIGTERM (`kill`, a parent stopping its stage) ends the run as Ctrl-C does


def run_main(main) -> None:
    """Run an entry point's main(); turn expected errors into one clear line and exit 2, and Ctrl-C or
    SIGTERM into one line and exit 130 (the shell's code for an interrupt) instead of a traceback. An
    interrupted stage leaves whole files only (files.atomic_write): what it replaces is kept as it was."""
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        main()
    except StageError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt as e:
        why = str(e) or "stopped before the end; every file it had not replaced yet is kept as it was"
        print(f"interrupted (Ctrl-C or SIGTERM): {why}", file=sys.stderr)
        raise SystemExit(130) from None
    finally:
        signal.signal(signal.SIGTERM, previous)
