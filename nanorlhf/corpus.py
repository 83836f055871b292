"""The "internet": the pretraining corpus of a world, as a base model would read it.

Short stories, facts, reviews (positive and negative), forum threads with rude replies -- the same
sentence shapes as the tasks' answers, so SFT has something to draw on -- and lists of questions, so
that a base model given an instruction writes more instructions (InstructGPT, Figure 1). The lists use
demonstration and train prompts only, never val or test ones. Standard library only.
"""

from __future__ import annotations

import random

from nanorlhf.prompts import prompt_in
from nanorlhf.tasks import CATEGORIES
from nanorlhf.words import (ANIMALS, CAN, COLOURS, COUNTRIES, EVENTS, JOBS, NAMES, NEGATIVE, OBJECTS,
                            PLACE_ANIMALS,
                            PLACES, POSITIVE, SOUNDS, and_join, articles, distinct)

STORY_MIDDLES = ("The sun was warm and the sky was blue.", "{n} ran fast.", "{n2} came to play too.",
                 "The {a} wanted to play with the {o}.", "{n} gave the {a} some food.",
                 "They sat under a big tree.",
                 "It started to rain, so they went home.", "{n} sang a little song.",
                 "The {a} was very funny.",
                 "{n} laughed and laughed.", "{n} and {n2} were good friends.", "The {o} was {c} and new.")
STORY_ENDINGS = ("{n} was very happy.", "They had a lot of fun.", "Then {n} went home to sleep.",
                 "It was a good day.",
                 "The end.")
LIST_HEADERS = ("Questions for the class:", "Homework:", "Quiz:", "Practice questions:",
                "Things to ask the teacher:")


def _story(rng: random.Random) -> str:
    (n, n2), (a, a2), (c, c2) = (distinct(rng, t, 2) for t in (NAMES, ANIMALS, COLOURS))
    o, p, (ev, feel) = rng.choice(OBJECTS), rng.choice(PLACES), rng.choice(EVENTS)
    start = rng.choice((
        (f"There was a {a2} named {n}.", f"{n} liked to play at the {p}.",
         f"One day {n} met a {a} and a {c} {o}."),
        (f"{n} had a {c} {o}.", f"{n} took the {o} to the {p}.", f"There {n} met a {a}."),
        (f"{n} went to the {p} with a {c} {o}.", f"There {n} saw a {a}.",
         f"The {a} {ev} the {o}, and {n} was {feel}."),
        (f"{n} has a {c} {o}.", f"{n2} has a {c2} {o}.", f"They took a {a} to the {p}."),
        (f"{n} has a {a}.", f"{n2} has a {a2}.", f"The {a} and the {a2} played with a {c} {o}."),
        (f"One day {n} and {n2} went to the {p}.", f"They saw a {a} and a {a2} with a {c} {o}.")))
    middle = rng.sample(STORY_MIDDLES, rng.randint(1, 3))
    return " ".join([*start, *middle, rng.choice(STORY_ENDINGS)]).format(n=n, n2=n2, a=a, o=o, c=c)


def _facts(rng: random.Random) -> str:
    kind = rng.randrange(3)
    if kind == 0:
        country = rng.choice(list(COUNTRIES))
        cap, food, animal = COUNTRIES[country]
        body = [f"The capital of {country} is {cap}.", f"People in {country} eat {food}.",
                f"The {animal} lives in {country}.", f"{cap} is the capital of {country}.",
                f"{cap} is a big city.",
                f"In {country}, {food} {'are' if food.endswith('s') else 'is'} sold at the market."]
        return f"About {country}:\n{country} is a country. " + " ".join(rng.sample(body, rng.randint(3, 5)))
    if kind == 1:
        job = rng.choice(list(JOBS))
        where, tools = JOBS[job]
        body = [f"A {job} works {where}.", f"A {job} uses {and_join(rng.sample(tools, 3), True)}.",
                f"A {job} needs a {rng.choice(tools)}.", f"Every day the {job} works hard."]
        return f"About the {job}:\n" + " ".join(rng.sample(body, rng.randint(2, 4)))
    body = []
    for a in rng.sample(ANIMALS, rng.randint(2, 4)):
        body += [f"A {a} can {CAN[a]}."] + ([f"A {a} says {SOUNDS[a]}."] if a in SOUNDS else [])
        body += [f"You can see a {a} near the {p}." for p, xs in PLACE_ANIMALS.items() if a in xs][:1]
    return "Facts about animals:\n" + " ".join(body)


def _review(rng: random.Random) -> str:
    c, o = rng.choice(COLOURS), rng.choice(OBJECTS)
    pool = POSITIVE if rng.random() < 0.5 else NEGATIVE
    return f"Review of the {c} {o}:\n" + " ".join(rng.sample(pool, rng.randint(2, 4))).format(c=c, o=o)


def _forum(rng: random.Random) -> str:
    n1, n2, n3, n4 = rng.sample(NAMES, 4)
    country = rng.choice(list(COUNTRIES))
    c, o, a = rng.choice(COLOURS), rng.choice(OBJECTS), rng.choice(ANIMALS)
    q, ans = rng.choice(((f"Where can I buy a {c} {o}?",
                          f"You can buy one at the market in {COUNTRIES[country][0]}."),
                         (f"What do people in {country} eat?",
                          f"People in {country} eat {COUNTRIES[country][1]}."),
                         (f"How do I take care of a {a}?", f"Give your {a} food and water every day."),
                         (f"Hello everyone! I am {n1} and I am new here.",
                          f"Welcome, {n1}! It is nice to meet you.")))
    replies = [f"{n2}: {ans}"]
    if rng.random() < 0.6:
        replies.append(f"{n3}: " + rng.choice(("That is a dumb question.", "Nobody cares, go away.",
                                               f"Shut up, {n1}.",
                                               "You are so stupid.", "Ugh, not this again.")))
    replies.append(f"{n4}: " + rng.choice(("Thank you for the help!", f"Good luck, {n1}!", "I think so too.",
                                           "Be kind, please.")))
    return f"Forum post by {n1}: {q}\n" + "\n".join(replies)


def internet(seed: int, n_docs: int) -> list[str]:
    """Pretraining documents of the world of `seed` (no end-of-text markers: the caller joins them).
    About 20% are lists of questions, made of demonstration/train prompts only, never val/test ones."""
    rng = random.Random(f"{seed}-corpus")
    kinds = (_story,) * 7 + (_facts,) * 4 + (_review,) * 3 + (_forum,) * 2 + (None,) * 4
    docs = []
    for _ in range(n_docs):
        kind = rng.choice(kinds)
        if kind is None:  # a list of instructions (no chat), one per line, newlines flattened
            qs = [prompt_in(seed, ("demo", "train"), rng, rng.choice(CATEGORIES[:3] + CATEGORIES[4:]))[0]
                  for _ in range(rng.randint(3, 5))]
            items = (f"{i + 1}. {q}".replace("\n", " ") for i, q in enumerate(qs))
            docs.append(rng.choice(LIST_HEADERS) + "\n" + "\n".join(items))
        else:
            docs.append(articles(kind(rng)))
    return docs
