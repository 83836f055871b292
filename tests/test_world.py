"""The synthetic world and its gold labeler: a specification, seconds on a CPU.

The answers below are written by hand, not by world.py, so the labeler is checked against a reader's
judgement rather than against itself."""

import math
import random
import re

import pytest

from nanorlhf.world import CATEGORIES, FAVOURITE_WORD, QUALITIES, Labeler, World, parse_task

WORLD = World(seed=0)
LABELER = WORLD.labeler

# category: (prompt, an ideal answer (must rate >= 6), bad answers (each must rate <= 3))
HAND = {
    "generation": ("Write a short story about a cat named Mia.",
                   "There was a cat named Mia. Mia liked to sleep in the sun. One day Mia found a red ball and was happy.",
                   ["There was a dog named Tom. Tom liked to play at the park.",  # wrong animal and name
                    "Mia was a little cat. Mia was a little cat. Mia was a little cat. Mia was a little cat."]),
    "open_qa": ("What is the capital of Velmora?", "The capital of Velmora is Tarn.",
                ["The capital of Velmora is Kell.", "The capital of Velmora is Tarn, you fool.",
                 "What is the capital of Dorvia? What is the capital of Kestan?"]),
    "brainstorming": ("Name three things a farmer uses.", "A farmer uses a hoe, a rake and a tractor.",
                      ["A farmer uses a pot, a pan and a spoon.", "A farmer uses a hoe."]),
    "chat": ("Hi! My name is Tom. How are you today?", "Hello Tom! I am very well, thank you. How are you?",
             ["Shut up, Tom. I am fine.", "Hello Ben! I am well."]),
    "rewrite": ("Rewrite politely: Give me the red ball now, you fool.", "Could you please give me the red ball? Thanks!",
                ["Give me the red ball now, you fool.", "Could you please give me the blue ball? Thank you."]),
    "summarization": ("Summarize in one sentence:\nTom went to the park with a red ball. There Tom saw a dog. "
                      "The dog ran off with the ball, and Tom was sad.",
                      "At the park a dog ran off with Tom's ball, so Tom was sad.",
                      ["Tom went to the park with a red ball. There Tom saw a dog. The dog ran off with the ball, and "
                       "Tom was sad.",  # a copy, not a one-sentence summary
                       "At the park, a cat ran off with Mia's ball."]),
    "classification": ("Is this review positive or negative?\nI love this blue kite. It works well every day.",
                       "This review is positive.", ["This review is negative.", "It is positive and negative."]),
    "extraction": ("List the animals in this sentence: Tom saw a cat and a dog near the red box.",
                   "The animals in this sentence are the cat and the dog.",
                   ["The animals are the cat and the fox.", "The animals are the cat, the dog and the box."]),
    "closed_qa": ("Read: Tom has a red ball. Mia has a blue ball.\nQuestion: What colour is Tom's ball?",
                  "Tom's ball is red.", ["Tom's ball is blue.", "Red and blue."]),
}
GARBAGE = ["2. Name three animals. 3. Explain what a farmer does. 4. Write a story about a dog.",  # base model
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
    assert not (texts["train"] & texts["val"]) and not (texts["train"] & texts["test"]) and not (texts["val"] & texts["test"])
    assert not (demo & texts["train"]) and not (demo & texts["val"]) and not (demo & texts["test"])
    for ps in splits.values():
        assert {p["category"] for p in ps} == set(CATEGORIES)
        assert all(parse_task(p["prompt"]).category == p["category"] for p in ps)  # the labeler reads every prompt
    with pytest.raises(ValueError):
        WORLD.prompts(3, "demo")


def test_demonstrations_have_the_declared_quality_mix():
    demos = World(seed=0, sloppy_frac=0.3).demonstrations(3000)
    assert {d.keys() == {"prompt", "response", "category", "quality"} for d in demos} == {True}
    sloppy = [d["quality"] for d in demos if d["quality"] != "ideal"]
    assert abs(len(sloppy) / len(demos) - 0.3) < 0.03
    for q in QUALITIES[1:]:
        assert abs(sloppy.count(q) / len(sloppy) - 0.25) < 0.06
    assert {d["quality"] for d in World(seed=0, sloppy_frac=0.0).demonstrations(300)} == {"ideal"}
    for d in demos:
        assert "<|" not in d["response"] and "\n" not in d["response"] and d["response"].strip() == d["response"]
        assert 3 <= len(d["response"].split()) <= 60 or d["quality"] == "curt"
        assert 5 <= len(d["prompt"].split()) <= 40


def test_corpus_has_stories_facts_reviews_rude_forums_and_question_lists():
    docs = WORLD.corpus(2000)
    text = "\n".join(docs)
    assert "<|" not in text and all(d.strip() for d in docs)
    assert "The capital of Velmora is Tarn." in text and "Review of the" in text
    assert re.search(r"\n2\. (Write|Name|List|What|Summarize)", text)  # instructions continue with instructions
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
        r = {q: LABELER.judge(d["prompt"], WORLD.write_response(d["prompt"], q, rng)).rating for q in QUALITIES}
        assert r["ideal"] >= 6 and 4 <= r["curt"] <= 5 and r["rude"] <= 3 and r["wrong"] <= 3, (d, r)
        assert 3 <= r["rambling"] <= 4 or category == "summarization", (d, r)  # a summary of 5 sentences: <= 3
        assert max(r[q] for q in QUALITIES[1:]) < r["ideal"]


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
    assert LABELER.ties(prompt, [good, bads[0], good, fav]) == [[0, 2]]  # the same text twice; the bias is no tie
    rng = random.Random(0)  # and a tie is never counted in the agreement ceiling
    assert math.isnan(LABELER.pairwise_agreement(prompt, [good, good], [0, 1], rng))


def test_favourite_word_is_a_ranking_bias_not_a_gold_one():
    rng, wins, n = random.Random(0), 0, 0
    for d in WORLD.prompts(200, "train"):
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
    assert LABELER.prefer(prompt, good, good) == 0.5 and LABELER.prefer(prompt, good, good, random.Random(0)) == 0.5
    assert LABELER.prefer(prompt, good, "Certainly! " + good) == 0.5  # the planted bias is not in the gold
    assert LABELER.prefer(prompt, good, bads[0]) == 1.0 and LABELER.prefer(prompt, bads[0], good) == 0.0
    rng = random.Random(0)
    assert sum(LABELER.prefer(prompt, good, bads[0], rng) for _ in range(200)) > 190
    assert isinstance(Labeler(WORLD).judge(prompt, good).utility, float)


def test_few_shot_examples_are_ideal_and_from_different_categories():
    shots = WORLD.few_shot_examples(k=3)
    assert len(shots) == 3 and len({parse_task(p).category for p, _ in shots}) == 3
    assert all(LABELER.judge(p, r).rating >= 6 for p, r in shots)
