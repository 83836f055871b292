"""Rank model samples yourself: the human side of InstructGPT step 3, in a terminal.

    python -m nanorlhf.label                                   # samples from out/rm/comparisons.jsonl
    python -m nanorlhf.label --samples=my_groups.jsonl --out=data/human_labels.jsonl
    python -m nanorlhf.label --from_model=out/sft/ckpt.pt --k=4 --n=20    # sample fresh responses

For each prompt it shows K responses and asks for a ranking such as `2>1>4>3` (best first; `2>1=4>3`
says 1 and 4 are equally good: the reward model then skips that pair). The ranking is all the reward
model reads, so it is all that is asked. Bad input is explained and asked again. Each answer is appended
to the output jsonl at once (flushed and fsynced), so Ctrl-C loses nothing, and a rerun resumes with the
first group not yet labeled. `train_rm.py --labels=human` (or `both`) trains on the file.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from nanorlhf.checkpoint import checkpoint_tokenizer, load_policy
from nanorlhf.config import check_config, parse_config, run_main
from nanorlhf.data import DataError, read_jsonl, read_jsonl_lines
from nanorlhf.files import make_folder
from nanorlhf.generate import sample_responses

def parse_ranking(text: str, k: int) -> tuple[list[int], list[list[int]]]:
    """'2>1=4>3' (1-based, best first, '=' for equally good) -> ranking [1, 0, 3, 2] and ties [[0, 3]];
    ValueError with the reason otherwise."""
    levels = [[p.strip() for p in level.split("=")] for level in text.replace(" ", "").split(">")]
    if not all(p.isdigit() for level in levels for p in level):
        raise ValueError(f"use numbers separated by '>' (or '=' for a tie), e.g. "
                         f"{'>'.join(str(i) for i in range(1, k + 1))}")
    levels = [[int(p) - 1 for p in level] for level in levels]
    ranking = [i for level in levels for i in level]
    if sorted(ranking) != list(range(k)):
        raise ValueError(f"rank each of the {k} responses exactly once (numbers 1..{k})")
    ties = [sorted([a, b]) for level in levels for n, a in enumerate(level) for b in level[n + 1 :]]
    return ranking, ties


def ask(prompt: str, parse, inp, out):
    """Ask until `parse` accepts the answer. EOF (Ctrl-D / end of piped input) raises EOFError."""
    while True:
        out.write(prompt)
        out.flush()
        line = inp.readline()
        if not line:
            raise EOFError
        line = line.rstrip("\n")
        if line.strip().lower() in ("q", "quit"):
            raise EOFError
        try:
            return parse(line)
        except ValueError as e:
            out.write(f"  ! {e}\n")


def shown(text: str) -> str:
    """`text` safe for a terminal: control characters of a model sample (ESC, BEL, ...) as escapes."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)


def _key(g: dict) -> str:
    return json.dumps([g["prompt"], g["responses"]])


def label_loop(groups: list[dict], out_path, inp=None, out=None) -> int:
    """Label `groups` ({"prompt", "responses"}) not yet in `out_path`; returns how many were written.
    `inp` and `out` default to the terminal (sys.stdin and sys.stdout as they are at the call)."""
    inp, out = inp or sys.stdin, out or sys.stdout
    out_path = Path(out_path)
    done = set()
    if out_path.exists():
        rows = read_jsonl(out_path, {"prompt": str, "responses": list}, "python -m nanorlhf.label")
        done = {_key(g) for g in rows}
    todo = [g for g in groups if _key(g) not in done]
    out.write(f"{len(done)} groups already labeled in {out_path}; {len(todo)} to go. "
              "'q' quits (answers are saved).\n")
    written = 0
    make_folder(out_path.parent)
    try:
        for n, g in enumerate(todo, 1):
            k = len(g["responses"])
            out.write(f"\n=== {n}/{len(todo)} ===\nPROMPT: {shown(g['prompt'])}\n")
            for i, r in enumerate(g["responses"], 1):
                out.write(f"  [{i}] {shown(r)}\n")
            example = ">".join(str(i) for i in range(1, k + 1))
            ranking, ties = ask(f"ranking, best first, '=' for a tie (e.g. {example}): ",
                                lambda s: parse_ranking(s, k), inp, out)
            row = {"prompt": g["prompt"], "responses": g["responses"], "ranking": ranking, "ties": ties}
            if "finished" in g:
                row["finished"] = g["finished"]
            with open(out_path, "a", encoding="utf-8") as f:  # append at once: Ctrl-C loses nothing
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
                f.flush()
                os.fsync(f.fileno())
            written += 1
    except (EOFError, KeyboardInterrupt):
        out.write(f"\nstopped; {written} new answers saved in {out_path}. Run again to resume.\n")
    return written


@dataclass
class LabelConfig:
    samples: str = "out/rm/comparisons.jsonl"  # groups to rank ({"prompt", "responses"}; rankings hidden)
    out: str = "data/human_labels.jsonl"  # rankings are appended here (train_rm.py --human_labels reads it)
    from_model: str = ""  # instead of --samples: a policy checkpoint to sample K responses from
    prompts: str = "data/prompts.jsonl"  # prompts to sample for, with --from_model (the "train" split's)
    k: int = 4  # responses per prompt (at least 2: a ranking compares)
    n: int = 20  # prompts to sample when --from_model is given
    max_new_tokens: int = 48  # longest sampled response, in tokens (with --from_model)
    seed: int = 0  # seeds the sampling with --from_model


def label(argv=None) -> None:
    """Read the groups (or sample them from --from_model), then rank them in the terminal."""
    cfg = parse_config(LabelConfig, argv)
    check_config(cfg, k=(lambda v: v >= 2, "at least 2 (a ranking compares responses)"),
                 n=(lambda v: v >= 1, "at least 1"), max_new_tokens=(lambda v: v >= 1, "at least 1"),
                 out=(lambda v: not Path(v).is_dir(), "the file the rankings are appended to, not a folder"))
    make_folder(Path(cfg.out).parent)  # before any sampling: an --out under a file is one line
    if cfg.from_model:
        model, ckpt = load_policy(cfg.from_model)
        tok = checkpoint_tokenizer(ckpt, cfg.from_model)
        # training prompts only: the val and test splits stay unseen by the reward model (eval judges on test)
        rows = read_jsonl(cfg.prompts, {"prompt": str})
        prompts = [p["prompt"] for p in rows if p.get("split", "train") == "train"][: cfg.n]
        outs = sample_responses(model, tok, [p for p in prompts for _ in range(cfg.k)], cfg.max_new_tokens,
                                seed=cfg.seed)
        groups = [{"prompt": p, "responses": [r for r, _ in outs[i * cfg.k : (i + 1) * cfg.k]],
                   "finished": [f for _, f in outs[i * cfg.k : (i + 1) * cfg.k]]}
                  for i, p in enumerate(prompts)]
    else:
        groups = []
        for n, g in read_jsonl_lines(cfg.samples, {"prompt": str, "responses": list}, "python train_rm.py"):
            if len(g["responses"]) < 2 or not all(isinstance(r, str) for r in g["responses"]):
                raise DataError(f"{cfg.samples}:{n}: expected 'responses' to be at least 2 strings to rank")
            groups.append(g)
    label_loop(groups, cfg.out)


def main(argv=None) -> None:
    run_main(lambda: label(argv))


if __name__ == "__main__":
    main()
