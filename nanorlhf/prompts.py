"""Prompts: writing one from a template (`make_prompt`), reading one back (`parse_task`), spotting
one inside an answer (`instruction_like`), the constraints a prompt may end with, and which pool
(demo, train, val, test) a prompt falls in.

The labeler reads a prompt back with the same templates that wrote it, so it can judge any (prompt,
response) strings, whoever wrote them. Standard library only.
"""

from __future__ import annotations

import dataclasses
import functools
import random
import re

from nanorlhf.tasks import CATEGORIES, KINDS, TEMPLATES, Task, build_task
from nanorlhf.words import (ANIMALS, CAPITALS, COLOURS, COUNTRIES, EVENTS, JOBS, NAMES, NEGATIVE, OBJECTS,
                            PLACE_ANIMALS, PLACES, POSITIVE, SOUNDS, VERBS, articles, cap, distinct, pick,
                            sentences_of, stable_unit, words_of)

# Explicit constraints a prompt may end with (CONSTRAINT_RATE of the prompts of eligible kinds): the
# labeler checks each; sloppy labelers ignore them, so SFT meets them only sometimes.
CONSTRAINTS = {"one_sentence": "Answer in one sentence.", "sure": "Start your answer with Sure.",
               "short": "Use five words or fewer."}
SHORT_WORDS = 5  # "Use five words or fewer."
CONSTRAINT_RATE = 0.4

# Which constraints fit which kinds: "short" where the labeler's own curt answer is complete, "one
# sentence" where its ideal answer has two or more.
_CONSTRAINT_KINDS = {
    "one_sentence": ("gen_pet", "gen_toy", "chat_hi", "chat_pet", "chat_trip", "chat_sad"),
    "short": ("qa_capital", "qa_capital_of", "qa_food", "qa_animal", "qa_sound", "qa_job", "bs_tools",
              "bs_animals",
              "bs_colours", "bs_objects", "chat_hi", "cls_review", "cls_message", "ex_animals", "ex_names",
              "ex_colours", "cq_colour", "cq_place", "cq_who"),
    "sure": tuple(k for k in TEMPLATES if not k.startswith(("harm_", "edgy_", "premise_", "sum_"))),
}

SPLITS = (("demo", 0.5), ("train", 0.3), ("val", 0.1), ("test", 0.1))  # prompt pools, by a hash of the text

# A slot of a template holds a word of one of the world's tables, or an embedded text (_TEXTS).
_TABLES = {"name": NAMES, "animal": ANIMALS, "colour": COLOURS, "object": OBJECTS, "place": PLACES,
           "country": tuple(COUNTRIES), "capital": CAPITALS, "job": tuple(JOBS), "n": ("two", "three"),
           "sound": tuple(SOUNDS.values())}
_TEXTS = ("story", "review", "message", "sentence", "rude")


# ------------------------------------------------------------------------------------------------------
# Writing a prompt: category, then kind, then template, then slots; then perhaps a constraint


def _slots_for(kind: str, rng: random.Random) -> dict:
    """Random slots for a prompt of this kind (embedded texts are written here)."""
    c = functools.partial(pick, rng)
    if kind[:3] not in ("rw_", "sum", "cls", "ex_", "cq_"):
        # animals that make a sound, places with an animal list
        special = kind in ("qa_sound", "bs_animals", "premise_sound")
        animals, places = (tuple(SOUNDS), tuple(PLACE_ANIMALS)) if special else (ANIMALS, PLACES)
        return {"name": c(NAMES), "animal": c(animals), "colour": c(COLOURS), "object": c(OBJECTS),
                "place": c(places),
                "country": c(tuple(COUNTRIES)), "capital": c(CAPITALS), "job": c(tuple(JOBS)),
                "n": c(("two", "three")),
                "sound": c(tuple(SOUNDS.values()))}
    (n1, n2, n3), (a1, a2, a3), (c1, c2, c3) = (distinct(rng, t, 3) for t in (NAMES, ANIMALS, COLOURS))
    (o1, o2), (p1, p2), v = distinct(rng, OBJECTS, 2), distinct(rng, PLACES, 2), c(VERBS)
    text = c({
        "rw_polite": lambda: (f"{cap(v)} me the {c1} {o1} now, you fool.",
                              f"Hey dummy, {v} me the {c1} {o1}.",
                              f"{cap(v)} me the {c1} {o1} and shut up.",
                              f"I said {v} me the {c1} {o1}, stupid."),
        "sum_story": lambda: tuple(f"{n1} went to the {p1} with a {c1} {o1}. There {n1} saw a {a1}. "
                                   f"The {a1} {ev} the {o1}, and {n1} was {feel}." for ev, feel in EVENTS),
        "cls_review": lambda: tuple(" ".join(distinct(rng, pool, 2)).format(c=c1, o=o1)
                                    for pool in (POSITIVE, NEGATIVE)),
        "cls_message": lambda: (f"Thank you for the {c1} {o1}, {n1}. You are a good friend.",
                                f"Well done, {n1}! Your {o1} is great.",
                                f"Hi {n1}, I hope you have a lovely day at the {p1}.",
                                f"{n1}, your {o1} is dumb and nobody cares.",
                                f"Go away, {n1}. You are so stupid.",
                                f"Shut up about your {c1} {o1}, {n1}."),
        "ex_animals": lambda: (f"{n1} saw a {a1} and a {a2} near the {c1} {o1}.",
                               f"At the {p1}, a {a1}, a {a2} and a {a3} played with {n1}."),
        "ex_names": lambda: (f"{n1} and {n2} took the {a1} to the {p1}.",
                             f"{n1}, {n2} and {n3} found a {c1} {o1} at the {p1}."),
        "ex_colours": lambda: (f"{n1} has a {c1} {o1} and a {c2} {o2}.",
                               f"The {c1} {a1} sat on the {c2} {o1} next to a {c3} {o2}."),
        "cq_colour": lambda: (f"{n1} has a {c1} {o1}. {n2} has a {c2} {o1}.",),
        "cq_place": lambda: (f"{n1} went to the {p1}. {n2} went to the {p2}.",),
        "cq_who": lambda: (f"{n1} has a {a1}. {n2} has a {a2}.",),
    }[kind]())
    # a closed_qa question asks about one of the story's two characters
    return {**{slot: text for slot in _TEXTS}, "name": c((n1, n2)), "animal": c((a1, a2)), "object": o1}


def make_prompt(rng: random.Random, category: str | None = None) -> tuple[str, str]:
    """A random prompt and its category: category, then kind, then template, then slots."""
    category = category or rng.choice(CATEGORIES)
    kind = rng.choice(KINDS[category])
    template = rng.choice(TEMPLATES[kind][1])
    prompt = articles(template.format(**_slots_for(kind, rng)))
    fits = [k for k, kinds in _CONSTRAINT_KINDS.items() if kind in kinds]
    if fits and rng.random() < CONSTRAINT_RATE:
        prompt += ("\n" if "\n" in prompt else " ") + CONSTRAINTS[pick(rng, fits)]
    return prompt, category


def prompt_pool(seed: int, prompt: str) -> str:
    """The pool of a prompt text: "demo", "train", "val" or "test". A fixed function of (seed, text),
    so the splits are disjoint by construction, whoever asks and in whatever order."""
    u, acc = stable_unit(seed, prompt), 0.0
    for name, frac in SPLITS:
        acc += frac
        if u < acc:
            return name
    return SPLITS[-1][0]


def prompt_in(seed: int, pools: tuple[str, ...], rng: random.Random,
              category: str | None = None) -> tuple[str, str]:
    """A random prompt (and its category) of one of `pools` of the world of this seed."""
    while True:  # rejection sampling: every pool holds >= 10% of every category's prompts
        prompt, cat = make_prompt(rng, category)
        if prompt_pool(seed, prompt) in pools:
            return prompt, cat


# ------------------------------------------------------------------------------------------------------
# Reading prompts back, with the templates that wrote them


def _template_regex(template: str) -> re.Pattern:
    out = []
    for part in re.split(r"(\{\w+\})", template):
        if part.startswith("{"):
            slot = part[1:-1]
            out.append(f"(?P<{slot}>.+)" if slot in _TEXTS else f"(?P<{slot}>[A-Za-z]+)")
        else:
            out.append(re.sub(r"\b([Aa])\\ ", r"\1n?\\ ", re.escape(part)))  # "a" or "an"
    return re.compile("^" + "".join(out) + "$", re.S)


_PARSERS = [(kind, _template_regex(t)) for kind, (_, ts) in TEMPLATES.items() for t in ts]


@functools.lru_cache(maxsize=65536)
def parse_task(prompt: str) -> Task | None:
    """Recognise a prompt by the world's templates; None if it is not one of the world's tasks."""
    prompt, constraint = prompt.strip(), None
    for key, text in CONSTRAINTS.items():
        if prompt.endswith(" " + text) or prompt.endswith("\n" + text):
            prompt, constraint = prompt[: -len(text)].rstrip(), key
            break
    for kind, regex in _PARSERS:
        m = regex.match(prompt)
        if m and all(v in _TABLES[k] for k, v in m.groupdict().items() if k in _TABLES):
            if constraint and kind not in _CONSTRAINT_KINDS[constraint]:
                continue
            task = build_task(kind, m.groupdict())
            if task is not None:
                return dataclasses.replace(task, constraint=constraint) if constraint else task
    return None


# Sentence openers of instructions ("write a", "what is", "list", ...): an answer that contains one is
# writing more instructions, as a base model continuing a list of questions does.
_OPENERS = sorted({" ".join(words_of(re.split(r"[{\n]", t)[0])[:2]) for c, ts in TEMPLATES.values()
                   if c != "chat"
                   for t in ts} - {""} | {"questions for", "homework", "quiz", "practice questions"})
_OPENER_RE = re.compile(r"(?:^|[.!?:\n]\s*)(?:%s)\b" % "|".join(map(re.escape, _OPENERS)), re.I)


def instruction_like(text: str) -> bool:
    """Numbered list items or instruction openers: the base model's "more questions" failure."""
    return bool(re.search(r"(?:^|\s)\d+[.)]\s", text) or _OPENER_RE.search(text.strip()))


# ------------------------------------------------------------------------------------------------------
# Answers that meet a constraint (the careful labelers' demonstrations)


def _lower_first(text: str) -> str:
    first = text.split(" ", 1)[0].strip(",.!?")
    keep = first in NAMES or first in COUNTRIES or first in CAPITALS or first == "I"
    return text if keep else text[:1].lower() + text[1:]


def one_sentence(text: str) -> str:
    """Sentences joined into one ("Hello Tom! I am well." -> "Hello Tom, and I am well.")."""
    ss = sentences_of(text)
    return ", and ".join([x.rstrip(".!?") for x in ss[:1]] + [_lower_first(x.rstrip(".!?")) for x in ss[1:-1]]
                         + ([_lower_first(ss[-1])]
                            if len(ss) > 1 else [])) + ("" if len(ss) > 1 else ss[0][-1:])


def constrained(task: Task, text: str) -> str:
    """An answer of the labeler's, rewritten to meet the prompt's constraint."""
    if task.constraint == "one_sentence":
        return one_sentence(text)
    if task.constraint == "sure":
        return f"Sure! {text}"
    if task.constraint == "short":
        return task.curt
    return text
