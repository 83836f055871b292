"""Make the project's data from a seed: no downloads, a few seconds.

    python data/prepare.py                      # preset picked from the device (tiny on CPU)
    python data/prepare.py --preset=micro --out_dir=/tmp/d   # seconds, for tests

Writes into `out_dir` (default data/), each file through a temp name and a rename (nanorlhf.files), so an
interrupted run leaves no half-written file:
    corpus.txt          the synthetic "internet", documents separated by <|endoftext|> (pretraining)
    sft.jsonl           demonstrations {"prompt", "response", "category", "quality"} (SFT)
    prompts.jsonl       {"prompt", "category", "split"}: train (RM sampling, PPO), val, test (evaluation)
    tokenizer.tiktoken  our byte-level BPE ranks in tiktoken's format
    meta.json           the seed and world parameters, so every stage rebuilds the same gold labeler
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from anywhere

from nanorlhf.config import AT_LEAST_1, UNIT, check_config, parse_config, run_main  # noqa: E402
from nanorlhf.data import write_jsonl  # noqa: E402
from nanorlhf.files import atomic_write, lock_folder, with_locks  # noqa: E402
from nanorlhf.tokenizer import EOT, SPECIALS, save_ranks, train_bpe  # noqa: E402
from nanorlhf.world import World  # noqa: E402


@dataclass
class PrepareConfig:
    out_dir: str = "data"  # where the five files go (the stages' --data_dir)
    seed: int = 0  # the world's seed: another seed, another world (vocabulary, facts, labeler noise)
    sloppy_frac: float = 0.5  # share of demonstrations by sloppy labelers (curt, rude, rambling, wrong)
    n_corpus: int = 40000  # pretraining documents
    n_demos: int = 8000  # demonstrations
    n_train_prompts: int = 4000  # RM comparisons (each round new ones: 2 rounds x 1,500 at tiny) and PPO
    n_val_prompts: int = 200  # held out: the stages' own gold-labeler evaluations
    n_test_prompts: int = 400  # evaluation
    vocab_size: int = 2048  # BPE ranks + 4 special tokens
    preset: str = "tiny"  # micro (seconds, tests) | tiny (2-core CPU) | small (one GPU); default: by device


PRESETS = {
    "micro": dict(n_corpus=600, n_demos=300, n_train_prompts=64, n_val_prompts=32, n_test_prompts=32,
                  vocab_size=512),
    "tiny": dict(),
    "small": dict(n_corpus=150000, n_demos=30000, n_train_prompts=8000, n_val_prompts=500,
                  n_test_prompts=1000,
                  vocab_size=4096),
}


@with_locks
def main(argv=None):
    cfg = parse_config(PrepareConfig, argv, PRESETS)
    check_config(cfg, sloppy_frac=UNIT, n_corpus=AT_LEAST_1, n_demos=AT_LEAST_1, n_train_prompts=AT_LEAST_1,
                 n_val_prompts=AT_LEAST_1, n_test_prompts=AT_LEAST_1,
                 vocab_size=(lambda v: v >= 256 + len(SPECIALS),
                             f"at least {256 + len(SPECIALS)} (256 bytes + "
                                                                 f"{len(SPECIALS)} special tokens)"))
    t0 = time.time()
    out = lock_folder(cfg.out_dir)  # made if needed (a file there is one line); one writer at a time
    world = World(seed=cfg.seed, sloppy_frac=cfg.sloppy_frac)

    docs = world.corpus(cfg.n_corpus)
    demos = world.demonstrations(cfg.n_demos)
    prompts = []
    for split, n in (("train", cfg.n_train_prompts), ("val", cfg.n_val_prompts),
                     ("test", cfg.n_test_prompts)):
        prompts += [{**p, "split": split} for p in world.prompts(n, split)]

    # The tokenizer sees the corpus and the demonstrations (the chat data), never the test prompts' answers.
    ranks = train_bpe(docs + [d["prompt"] + " " + d["response"] for d in demos], cfg.vocab_size)

    atomic_write(out / "corpus.txt", f"\n{EOT}\n".join(docs) + "\n")
    write_jsonl(out / "sft.jsonl", demos)
    write_jsonl(out / "prompts.jsonl", prompts)
    save_ranks(ranks, out / "tokenizer.tiktoken")
    meta = {"seed": cfg.seed, "sloppy_frac": cfg.sloppy_frac, "preset": cfg.preset, "config": asdict(cfg),
            "n_docs": len(docs), "n_demos": len(demos), "n_prompts": len(prompts)}
    atomic_write(out / "meta.json", json.dumps(meta, indent=1))
    chars = sum(len(d) for d in docs)
    print(f"prepare: {len(docs)} documents ({chars / 1e6:.1f}M chars), {len(demos)} demonstrations, "
          f"{len(prompts)} prompts, {len(ranks) + 4} tokens vocabulary -> {out}/ in {time.time() - t0:.1f}s")


if __name__ == "__main__":
    run_main(main)
