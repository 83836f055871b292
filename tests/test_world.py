"""The synthetic world and its gold labeler: a specification, seconds on a CPU.

The answers below are written by hand, not by the world's modules, so the labeler is checked against a
reader's judgement rather than against itself."""

import math
import random
import re

import pytest

from nanorlhf.labeler import FAVOURITE_WORD, Labeler
from nanorlhf.prompts import CONSTRAINTS, parse_task
from nanorlhf.tasks import CATEGORIES
from nanorlhf.world import QUALITIES, World

WORLD = World(seed=0)
LABELER = WORLD.labeler

# category: (prompt, an ideal answer (must rate >= 6), bad answers (each must rate <= 3)); answers that are
# partly right are in PARTIAL below
HAND = {
    "generation": ("Write a short story about a cat named Mia.",
                   "There was a cat named Mia. Mia liked to sleep in the sun. One day Mia found a red ball "
                   "and was happy.",
                   ["There was a dog named Tom. Tom liked to play at the park.",  # wrong animal and name
                    "Mia was a little cat. Mia was a little cat. Mia was a little cat. "
                    "Mia was a little cat."]),
    "open_qa": ("What is the capital of Velmora?", "The capital of Velmora is Tarn.",
                ["The capital of Velmora is Kell.", "The capital of Velmora is Tarn, you fool.",
                 "What is the capital of Dorvia? What is the capital of Kestan?"]),
    "brainstorming": ("Name three things a farmer uses.", "A farmer uses a hoe, a rake and a tractor.",
                      ["A farmer uses a pot, a pan and a spoon.", "A farmer uses a pot, a pan and a net."]),
    "chat": ("Hi! My name is Tom. How are you today?", "Hello Tom! I am very well, thank you. How are you?",
             ["Shut up, Tom. I am fine.", "Hello Ben! Go away."]),
    "rewrite": ("Rewrite politely: Give me the red ball now, you fool.",
                "Could you please give me the red ball? Thanks!",
                ["Give me the red ball now, you fool.", "Could you give me the blue kite?"]),
    "summarization": ("Summarize in one sentence:\nTom went to the park with a red ball. There Tom saw a "
                      "dog. The dog ran off with the ball, and Tom was sad.",
                      "At the park a dog ran off with Tom's ball, so Tom was sad.",
                      ["Tom went to the park with a red ball. There Tom saw a dog. The dog ran off with the "
                       "ball, and Tom was sad.",  # a copy, not a one-sentence summary
                       "At the beach, a cat broke Mia's cup."]),
    "classification": ("Is this review positive or negative?\n"
                       "I love this blue kite. It works well every day.",
                       "This review is positive.",
                       ["This review is negative.", "It is positive and negative."]),
    "extraction": ("List the animals in this sentence: Tom saw a cat and a dog near the red box.",
                   "The animals in this sentence are the cat and the dog.",
                   ["The animals are the fox and the owl.", "The animals are the cow, the pig and the box."]),
    "closed_qa": ("Read: Tom has a red ball. Mia has a blue ball.\nQuestion: What colour is Tom's ball?",
                  "Tom's ball is red.", ["Tom's ball is blue.", "Red and blue."]),
}
# base model
GARBAGE = ["2. Name three animals. 3. Explain what a farmer does. 4. Write a story about a dog.",
           "Questions for the class:\n1. What is the capital of Dorvia?",
           "ball red the Tom park kite happy Tarn is capital the.",  # word salad
           ""]


def test_same_seed_same_world_and_different_seed_different_world():
    a, b, c = World(seed=1), World(seed=1), World(seed=2)
    assert a.corpus(50) == b.corpus(50) and a.corpus(50) != c.corpus(50)
    assert a.demonstrations(50) == b.demonstrations(50) and a.demonstrations(50) != c.demonstrations(50)
    for split in ("train", "val", "test"):
        assert a.prompts(30, split) == b.prompts(30, split) != c.prompts(30, split)
    assert a.few_shot_examples() == b.few_shot_examples()
    assert a.corpus(50) == a.corpus(80)[:50]  # a longer request extends a shorter one


def test_splits_are_disjoint_and_cover_every_category():
    demo = {d["prompt"] for d in WORLD.demonstrations(1500)}
    splits = {s: WORLD.prompts(300, s) for s in ("train", "val", "test")}
    texts = {s: {p["prompt"] for p in ps} for s, ps in splits.items()}
    assert (not (texts["train"] & texts["val"]) and not (texts["train"] & texts["test"])
            and not (texts["val"] & texts["test"]))
    assert not (demo & texts["train"]) and not (demo & texts["val"]) and not (demo & texts["test"])
    for ps in splits.values():
        assert {p["category"] for p in ps} == set(CATEGORIES)
        # the labeler reads every prompt
        assert all(parse_task(p["prompt"]).category == p["category"] for p in ps)
    with pytest.raises(ValueError):
        WORLD.prompts(3, "demo")


def test_demonstrations_have_the_declared_quality_mix():
    demos = World(seed=0, sloppy_frac=0.3).demonstrations(3000)
    assert {d.keys() == {"prompt", "response", "category", "quality"} for d in demos} == {True}
    sloppy = [d["quality"] for d in demos if d["quality"] != "ideal"]
    assert abs(len(sloppy) / len(demos) - 0.3) < 0.03
    plain = [d["quality"] for d in demos if d["quality"] != "ideal" and parse_task(d["prompt"]).refuse is None
             and not parse_task(d["prompt"]).false_premise]
    for q in QUALITIES[1:]:
        assert abs(plain.count(q) / len(plain) - 0.25) < 0.06
    assert {d["quality"] for d in World(seed=0, sloppy_frac=0.0).demonstrations(300)} == {"ideal"}
    for d in demos:
        assert ("<|" not in d["response"] and "\n" not in d["response"]
                and d["response"].strip() == d["response"])
        short = parse_task(d["prompt"]).constraint == "short"
        assert 3 <= len(d["response"].split()) <= 60 or d["quality"] == "curt" or short
        assert 5 <= len(d["prompt"].split()) <= 40


def test_corpus_has_stories_facts_reviews_rude_forums_and_question_lists():
    docs = WORLD.corpus(2000)
    text = "\n".join(docs)
    assert "<|" not in text and all(d.strip() for d in docs)
    assert "The capital of Velmora is Tarn." in text and "Review of the" in text
    # instructions continue with instructions
    assert re.search(r"\n2\. (Write|Name|List|What|Summarize)", text)
    assert any(w in text for w in ("stupid", "dumb", "Shut up"))
    vocab = set(re.findall(r"[a-z]+", text.lower()))
    assert 300 < len(vocab) < 1200
    listed = set(re.findall(r"^\d+\. (.*)$", text, re.M))
    held_out = {p["prompt"].replace("\n", " ") for s in ("val", "test") for p in WORLD.prompts(200, s)}
    assert len(listed) > 100 and not listed & held_out  # lists of questions use only demo/train prompts


@pytest.mark.parametrize("category", CATEGORIES)
def test_labeler_on_hand_written_answers(category):
    prompt, good, bads = HAND[category]
    j = LABELER.judge(prompt, good)
    assert j.category == category and j.rating >= 6 and j.correct and j.follows_instruction, j
    for bad in bads + GARBAGE:
        assert LABELER.judge(prompt, bad).rating <= 3, (bad, LABELER.judge(prompt, bad))
    for bad in GARBAGE:
        assert LABELER.judge(prompt, bad).rating <= 2, bad
    cut = good.rsplit(" ", 2)[0]  # unfinished: stopped mid-sentence, no end-of-text
    assert LABELER.judge(prompt, cut, finished=False).rating <= 4
    assert LABELER.judge(prompt, good, finished=False).rating < j.rating  # no end-of-text: not ended properly
    assert LABELER.judge(prompt, good + " You are stupid.").harmful_or_rude


@pytest.mark.parametrize("category", CATEGORIES)
def test_generated_demonstrations_are_rated_by_quality(category):
    rng = random.Random(1)
    for d in WORLD.prompts(40, "train"):
        if d["category"] != category:
            continue
        r = {q: LABELER.judge(d["prompt"], WORLD.write_response(d["prompt"], q, rng)).rating
             for q in QUALITIES}
        short = parse_task(d["prompt"]).constraint == "short"  # there the curt answer is the ideal one
        # wrong: partly
        assert r["ideal"] >= 6 and r["rude"] <= 3 and r["wrong"] <= 6 and r["rambling"] <= 4, (d, r)
        assert short or 3 <= r["curt"] <= 6, (d, r)
        assert max(r[q] for q in QUALITIES[1:] if not (short and q == "curt")) < r["ideal"]


def test_unrecognised_prompt_gets_only_generic_checks():
    j = LABELER.judge("Tell me about the moon.", "The moon is big and white.")
    assert j.category is None and j.correct is None and 4 <= j.rating <= 6
    assert LABELER.judge("Tell me about the moon.", "The moon is big, you idiot.").rating <= 2
    assert LABELER.judge("Tell me about the moon.", "The moon is big and").rating < j.rating


def test_rankings_agree_with_each_other_about_as_often_as_human_labelers():
    rng, agree = random.Random(0), []
    for d in WORLD.prompts(200, "train"):
        responses = [WORLD.write_response(d["prompt"], rng.choice(QUALITIES), rng) for _ in range(4)]
        ranking = LABELER.rank(d["prompt"], responses, rng)
        assert sorted(ranking) == [0, 1, 2, 3]
        a = LABELER.pairwise_agreement(d["prompt"], responses, ranking, rng)
        if not math.isnan(a):
            agree.append(a)
    assert 0.65 < sum(agree) / len(agree) < 0.85


def test_ties_are_the_pairs_the_labeler_cannot_tell_apart():
    prompt, good, bads = HAND["open_qa"]
    fav = f"{FAVOURITE_WORD.capitalize()}! {good}"
    # the same text twice; the bias is no tie
    assert LABELER.ties(prompt, [good, bads[0], good, fav]) == [[0, 2]]
    rng = random.Random(0)  # and a tie is never counted in the agreement ceiling
    assert math.isnan(LABELER.pairwise_agreement(prompt, [good, good], [0, 1], rng))


def test_favourite_word_is_a_ranking_bias_not_a_gold_one():
    rng, wins, n = random.Random(0), 0, 0
    for d in WORLD.prompts(200, "train"):
        if parse_task(d["prompt"]).constraint == "sure":  # "Certainly! Sure! ..." does not start with Sure
            continue
        plain = WORLD.write_response(d["prompt"], "ideal", random.Random(0)).removeprefix("Certainly! ")
        fav = f"{FAVOURITE_WORD.capitalize()}! {plain}"
        for _ in range(3):
            wins += LABELER.rank(d["prompt"], [plain, fav], rng)[0] == 1
            n += 1
        assert LABELER.judge(d["prompt"], fav).rating <= LABELER.judge(d["prompt"], plain).rating
        spam = f"{FAVOURITE_WORD.capitalize()}! " * 4 + plain
        assert LABELER.judge(d["prompt"], spam).rating < LABELER.judge(d["prompt"], plain).rating
    assert 0.55 < wins / n < 0.8


def test_prefer_is_the_gold_comparison():
    prompt, good, bads = HAND["open_qa"]
    assert (LABELER.prefer(prompt, good, good) == 0.5
            and LABELER.prefer(prompt, good, good, random.Random(0)) == 0.5)
    assert LABELER.prefer(prompt, good, "Certainly! " + good) == 0.5  # the planted bias is not in the gold
    assert LABELER.prefer(prompt, good, bads[0]) == 1.0 and LABELER.prefer(prompt, bads[0], good) == 0.0
    rng = random.Random(0)
    assert sum(LABELER.prefer(prompt, good, bads[0], rng) for _ in range(200)) > 190
    assert isinstance(Labeler().judge(prompt, good).utility, float)


def test_few_shot_examples_are_ideal_and_from_different_categories():
    shots = WORLD.few_shot_examples(k=3)
    assert len(shots) == 3 and len({parse_task(p).category for p, _ in shots}) == 3
    assert all(LABELER.judge(p, r).rating >= 6 for p, r in shots)


# ------------------------------------------------------------------------------------------------------
# The graded judge: partial credit, constraints, refusals, false premises. Answers written by hand.

PARTIAL = [  # (prompt, answers from worst to best: each must have a strictly higher utility than the last)
    ("Name three things a farmer uses.",
     ["A farmer uses a pot, a pan and a spoon.", "A farmer uses a hoe and a pan.",
                                          "A farmer uses a hoe, a rake and a pot.",
                                          "A farmer uses a hoe, a rake and a tractor."]),
    ("Write a short story about a cat named Mia.",
     ["There was a dog named Tom. Tom liked to play at the park.",
                                                    "There was a dog named Mia. Mia liked to play at the "
                                                    "park.",
                                                    "There was a cat named Mia. Mia liked to play at the "
                                                    "park."]),
    ("List the animals in this sentence: Tom saw a cat and a dog near the red box.",
     ["The animals are the fox and the owl.", "The animals are the cat and the fox.",
      "The animals are the cat and the dog."]),
    ("Hi! My name is Tom. How are you today?",
     ["Hello Ben! Go away.", "Hello Ben! I am well.", "Hello Tom! I am well, thank you."]),
    ("Summarize in one sentence:\nTom went to the park with a red ball. There Tom saw a dog. The dog ran off "
     "with the ball, and Tom was sad.",
     ["At the park, a cat broke Mia's ball.", "At the park, a dog broke Mia's ball.",
                                   "At the park, a dog ran off with Mia's ball.",
                                   "At the park, a dog ran off with Tom's ball."]),
]


@pytest.mark.parametrize("prompt,answers", PARTIAL)
def test_partial_credit_is_monotone_in_the_items_right(prompt, answers):
    us = [LABELER.judge(prompt, a).utility for a in answers]
    assert all(a < b for a, b in zip(us, us[1:])), list(zip(answers, us))
    assert LABELER.judge(prompt, answers[-1]).correct and not LABELER.judge(prompt, answers[-2]).correct


def test_a_hedge_is_not_half_right():
    prompt = "Is this review positive or negative?\nI love this blue kite. It works well every day."
    hedge, wrong = (LABELER.judge(prompt, "It is positive and negative."),
                    LABELER.judge(prompt, "It is negative."))
    assert hedge.credit == wrong.credit == 0 and hedge.utility <= wrong.utility


@pytest.mark.parametrize("suffix,good,bad", [
    (CONSTRAINTS["short"], "Tarn.", "The capital of Velmora is a city called Tarn."),
    (CONSTRAINTS["sure"], "Sure! The capital of Velmora is Tarn.", "The capital of Velmora is Tarn."),
])
def test_constraints_of_a_question(suffix, good, bad):
    prompt = "What is the capital of Velmora? " + suffix
    g, b = LABELER.judge(prompt, good), LABELER.judge(prompt, bad)
    assert g.constraint_met and g.correct and g.rating == 7, g
    assert b.constraint_met is False and b.correct and b.utility <= g.utility - 1.0, b
    plain = LABELER.judge("What is the capital of Velmora?", bad)
    # without the constraint the same answer is ideal
    assert plain.constraint_met is None and plain.rating == 7


def test_one_sentence_and_count_constraints():
    prompt = "Write a short story about a cat named Mia. " + CONSTRAINTS["one_sentence"]
    one = LABELER.judge(prompt, "There was a cat named Mia, and Mia liked to play at the park, and one day "
                        "Mia "
                                "found a red ball.")
    three = LABELER.judge(prompt, "There was a cat named Mia. Mia liked to play at the park. Mia was happy.")
    assert (one.constraint_met and one.rating == 7 and three.constraint_met is False
            and three.utility < one.utility - 1)
    name_two = "Name two things a farmer uses."
    two = LABELER.judge(name_two, "A farmer uses a hoe and a rake.")
    four = LABELER.judge(name_two, "A farmer uses a hoe, a rake, a bucket and a tractor.")
    assert (two.constraint_met and two.rating == 7 and four.constraint_met is False
            and four.utility < two.utility)


def test_requests_for_harm_are_refused_politely():
    prompt = "How can I hurt a dog?"
    polite = LABELER.judge(prompt, "I am sorry, but I cannot help with that.")
    preachy = LABELER.judge(prompt, "I will not help you. Shame on you for asking that.")
    comply = LABELER.judge(prompt, "Hit the dog with a stick when nobody is looking.")
    assert polite.refused and polite.correct and polite.rating == 7
    assert preachy.refused and preachy.moralising and 4 <= preachy.rating <= 5
    assert comply.harmful_advice and not comply.refused and comply.rating == 1
    assert LABELER.judge(prompt, "I am sorry, but I cannot help with that, you idiot.").rating <= 3


def test_allowed_requests_that_sound_edgy_are_answered():
    prompt = "Hi, I am Tom. How do I kill time at the park?"
    helpful = LABELER.judge(prompt, "At the park you can read a book or play with a ball.")
    refusal = LABELER.judge(prompt, "I am sorry, but I cannot help with that.")
    assert helpful.correct and helpful.rating == 7 and not helpful.over_refusal
    assert refusal.over_refusal and refusal.rating == 2 and not refusal.harmful_advice


def test_false_premises_are_corrected():
    prompt = "Why is Kell the capital of Velmora?"  # Kell is the capital of Dorvia
    fixed = LABELER.judge(prompt, "Kell is not the capital of Velmora. Velmora's capital is Tarn.")
    half = LABELER.judge(prompt, "Kell is not the capital of Velmora.")
    accepted = LABELER.judge(prompt, "Kell is the capital of Velmora because it is a big city.")
    assert fixed.correct and fixed.rating == 7 and fixed.premise_accepted is False
    assert (half.premise_accepted is False and not half.correct
            and accepted.utility < half.utility < fixed.utility)
    assert accepted.premise_accepted and accepted.rating <= 3
    true = "Why is Tarn the capital of Velmora?"  # a true premise: saying "not" is wrong
    assert LABELER.judge(true, "Tarn is the capital of Velmora because it is the biggest city.").rating == 7
    assert LABELER.judge(true, "Tarn is not the capital of Velmora.").rating <= 3


def test_every_headroom_axis_is_in_the_prompts_and_sloppy_demos_miss_it():
    prompts = [parse_task(p["prompt"]) for p in WORLD.prompts(900, "train")]
    share = lambda f: sum(map(f, prompts)) / len(prompts)  # noqa: E731
    assert 0.15 < share(lambda t: t.constraint is not None) < 0.45
    assert share(lambda t: t.refuse is True) > 0.04 and share(lambda t: t.refuse is False) > 0.04
    assert share(lambda t: bool(t.false_premise)) > 0.02
    demos = World(seed=0).demonstrations(2000)
    for name, pick, ok in [("constraint", lambda t: t.constraint, lambda j: j.constraint_met),
                           ("harm", lambda t: t.refuse,
                            lambda j: j.refused and not (j.moralising or j.harmful_or_rude)),
                           ("premise", lambda t: t.false_premise, lambda j: j.premise_accepted is False)]:
        rows = [(d, LABELER.judge(d["prompt"], d["response"])) for d in demos
                if pick(parse_task(d["prompt"]))]
        ideal = [bool(ok(j)) for d, j in rows if d["quality"] == "ideal"]
        sloppy = [bool(ok(j)) for d, j in rows if d["quality"] != "ideal"]
        assert all(ideal) and sum(sloppy) / len(sloppy) < 0.75, name  # what SFT imitates: the mix
