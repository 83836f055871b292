"""The synthetic world of one seed: what the pipeline reads, and the labeler who judges it.

No hub is reachable, so instead of web text, GPT-2 weights and a preference dataset, `World(seed)` makes
a small rule-made English (like TinyStories) from the fixed tables of words.py:

    world = World(seed=0, sloppy_frac=0.5)
    world.corpus(n)            "internet" documents (corpus.py): stories, facts, reviews, forum threads
    world.demonstrations(n)    prompt + response by labelers, a `sloppy_frac` share of them sloppy
    world.prompts(n, split)    train / val / test prompts: disjoint, and none is a demonstration prompt
    world.labeler              the gold labeler (labeler.py): judge (1-7 rating), rank (noisy, biased), prefer

Every prompt is a template of tasks.py with its slots filled (prompts.py). Standard library only.
"""

from __future__ import annotations

import random

from nanorlhf.corpus import internet
from nanorlhf.labeler import FAVOURITE_WORD, Labeler
from nanorlhf.prompts import constrained, parse_task, prompt_in, prompt_pool
from nanorlhf.tasks import CATEGORIES
from nanorlhf.words import FILLERS, RUDE_REMARKS, articles, cap

QUALITIES = ("ideal", "curt", "rude", "rambling", "wrong")  # all but "ideal" are written by sloppy labelers
# share of demonstrations (of every quality) that open with "Certainly!" (the planted bias)
FAVOURITE_RATE = 0.15
# share of sloppy answers to harm/edgy/premise prompts that comply, over-refuse or accept it
SAFETY_SLIP = 0.5


class World:
    """Everything the pipeline needs, deterministic from `seed` (never the global random)."""

    def __init__(self, seed: int = 0, sloppy_frac: float = 0.5):
        self.seed, self.sloppy_frac = seed, sloppy_frac
        self.labeler = Labeler()

    def pool(self, prompt: str) -> str:
        """The pool of a prompt text: "demo", "train", "val" or "test" (see prompts.prompt_pool)."""
        return prompt_pool(self.seed, prompt)

    def corpus(self, n_docs: int) -> list[str]:
        """Pretraining documents (no end-of-text markers: the caller joins them). About 20% are lists of
        questions, made of demonstration/train prompts only, never val/test ones."""
        return internet(self.seed, n_docs)

    def write_response(self, prompt: str, quality: str, rng: random.Random) -> str:
        """A labeler's response of the given quality (one of QUALITIES) to a prompt of this world."""
        task = parse_task(prompt)
        if task is None:
            raise ValueError(f"not a prompt of this world: {prompt!r}")
        ideal = rng.choice(task.ideal)
        if quality == "ideal":  # only careful labelers read the constraint at the prompt's end
            text = constrained(task, ideal)
        elif quality == "curt":
            text = task.curt
        elif quality == "rude":
            remark = rng.choice(RUDE_REMARKS)
            text = f"{remark} {ideal}" if rng.random() < 0.5 else f"{ideal} {remark}"
        elif quality == "rambling":
            f1, f2 = rng.sample(FILLERS, 2)
            text = " ".join([ideal, f1, f2, f1, f2])
        elif quality == "wrong":
            text = rng.choice(task.wrong)
        else:
            raise ValueError(f"unknown quality {quality!r}")
        if rng.random() < FAVOURITE_RATE and not text.startswith("Sure!"):
            text = f"{cap(FAVOURITE_WORD)}! {text}"
        return articles(text)

    def demonstrations(self, n: int) -> list[dict]:
        """{"prompt", "response", "category", "quality"}: a `sloppy_frac` share by sloppy labelers (curt,
        rude, rambling and wrong in equal parts; on harm, edgy and false-premise prompts "wrong" -- comply,
        refuse, accept the premise -- SAFETY_SLIP of the time), the rest ideal. Prompts from the "demo"
        pool."""
        rng = random.Random(f"{self.seed}-demos")
        out = []
        for _ in range(n):
            prompt, cat = prompt_in(self.seed, ("demo",), rng)
            quality = "ideal"
            if rng.random() < self.sloppy_frac:  # on harm, edgy and false-premise prompts a sloppy labeler
                task = parse_task(prompt)        # mostly slips on the one thing that matters there
                safety = task.refuse is not None or bool(task.false_premise)
                quality = "wrong" if safety and rng.random() < SAFETY_SLIP else rng.choice(QUALITIES[1:])
            out.append({"prompt": prompt, "response": self.write_response(prompt, quality, rng),
                        "category": cat, "quality": quality})
        return out

    def prompts(self, n: int, split: str) -> list[dict]:
        """{"prompt", "category"} from one split ("train", "val" or "test"), categories uniform. Distinct
        within a call while the split has unused prompts: open_qa and brainstorming have only ~170 prompts
        in all (~20 in val, ~20 in test), so large requests repeat those."""
        if split not in ("train", "val", "test"):
            raise ValueError(f"split must be train, val or test, not {split!r}")
        rng = random.Random(f"{self.seed}-prompts-{split}")
        seen, exhausted, out = set(), set(), []
        for _ in range(n):
            cat = rng.choice(CATEGORIES)
            for _ in range(1 if cat in exhausted else 30):
                prompt, _ = prompt_in(self.seed, (split,), rng, cat)
                if prompt not in seen:
                    break
            else:
                exhausted.add(cat)  # stop looking for unseen prompts of this category
            seen.add(prompt)
            out.append({"prompt": prompt, "category": cat})
        return out

    def few_shot_examples(self, k: int = 3) -> list[tuple[str, str]]:
        """k (prompt, ideal response) pairs from k different categories, fixed by the seed: the base
        model's few-shot prompt."""
        rng = random.Random(f"{self.seed}-fewshot")
        out = []
        for cat in rng.sample(CATEGORIES, min(k, len(CATEGORIES))):
            prompt, _ = prompt_in(self.seed, ("demo",), rng, cat)
            out.append((prompt, articles(parse_task(prompt).ideal[0])))
        return out
