"""The world's vocabulary and the text helpers every part of the world shares. Standard library only.

Fixed tables of people, animals, colours, objects, places, made-up countries and jobs (every seed shares
them: a seed only changes which sentences are drawn), and the small functions that read and write text
with them. The tasks (tasks.py), prompts (prompts.py), corpus (corpus.py) and the labeler (labeler.py)
all speak this English.
"""

from __future__ import annotations

import hashlib
import random
import re

# ------------------------------------------------------------------------------------------------------
# What is true in the world. Fixed tables: every seed shares them; the seed changes which sentences are
# drawn and which prompts fall in which split. Entries are single words, so checks are word lookups.

NAMES = ("Tom", "Mia", "Ben", "Lily", "Sam", "Anna", "Max", "Zoe", "Leo", "Ella",
         "Jack", "Rosa", "Finn", "Nora", "Omar", "Ivy", "Hugo", "Lucy", "Ravi", "Kate")
SOUNDS = {"cat": "meow", "dog": "woof", "cow": "moo", "pig": "oink", "duck": "quack", "frog": "croak",
          "owl": "hoot", "sheep": "baa", "horse": "neigh", "mouse": "squeak", "bear": "growl",
          "bird": "tweet"}
ANIMALS = tuple(SOUNDS) + ("fish", "rabbit", "fox", "goat")
CAN = {"cat": "climb", "dog": "run", "cow": "eat grass", "pig": "roll in mud", "duck": "swim", "frog": "jump",
       "owl": "see at night", "sheep": "eat grass", "horse": "run fast", "mouse": "hide",
       "bear": "climb trees",
       "bird": "fly", "fish": "swim", "rabbit": "hop", "fox": "run fast", "goat": "climb hills"}
COLOURS = ("red", "blue", "green", "yellow", "pink", "white", "black", "brown", "orange", "purple")
OBJECTS = ("ball", "kite", "hat", "box", "book", "cup", "boat", "drum", "bag", "lamp", "doll", "bike")
PLACES = ("park", "garden", "beach", "forest", "school", "farm", "river", "hill", "market", "lake")
PLACE_ANIMALS = {"farm": ("cow", "pig", "horse", "goat", "sheep", "duck"),
                 "lake": ("fish", "duck", "frog", "bird"),
                 "forest": ("fox", "owl", "bear", "rabbit", "mouse"),
                 "park": ("dog", "bird", "duck", "rabbit")}
COUNTRIES = {  # country: (capital, food, animal)
    "Velmora": ("Tarn", "plums", "owl"), "Dorvia": ("Kell", "rice", "fox"),
    "Kestan": ("Amsa", "figs", "goat"),
    "Brimoor": ("Rook", "beans", "bear"), "Zalend": ("Pella", "corn", "horse"),
    "Ostria": ("Vint", "pears", "frog"),
    "Marulo": ("Soma", "bread", "duck"), "Fennick": ("Drell", "cheese", "sheep"),
    "Quorra": ("Lunt", "grapes", "rabbit"), "Lupania": ("Bexa", "nuts", "mouse"),
    "Heskar": ("Hollin", "honey", "pig"), "Torvel": ("Mirra", "melons", "cow")}
CAPITALS = tuple(v[0] for v in COUNTRIES.values())
JOBS = {  # job: (where the job is done, tools); no tool belongs to two jobs
    "farmer": ("on a farm", ("hoe", "rake", "bucket", "tractor")),
    "cook": ("in a kitchen", ("pot", "pan", "spoon", "knife")),
    "painter": ("in a studio", ("brush", "easel", "ladder", "roller")),
    "doctor": ("in a hospital", ("bandage", "needle", "mask", "pill")),
    "teacher": ("at a school", ("chalk", "pen", "board", "map")),
    "fisher": ("on a boat", ("net", "rod", "hook", "float")),
    "gardener": ("in a garden", ("spade", "hose", "glove", "wheelbarrow")),
    "baker": ("in a bakery", ("oven", "tray", "bowl", "whisk"))}
EVENTS = (("ran off with", "sad"), ("broke", "sad"), ("hid", "sad"), ("played with", "happy"))
VERBS = ("give", "pass", "bring", "show", "lend")
POSITIVE = ("I love this {c} {o}.", "It is great and very strong.", "It is the best {o} I ever had.",
            "It works well every day.", "My friends think it is lovely.", "Five stars.")
NEGATIVE = ("This {c} {o} is bad.", "It broke on the first day.", "It is the worst {o} I ever had.",
            "I want my money back.", "It is weak and ugly.", "One star.")
POS_WORDS = ("love", "great", "best", "well", "lovely", "five")  # how the labeler tells them apart
NEG_WORDS = ("bad", "broke", "worst", "back", "ugly", "one")
# flagged phrases
RUDE = ("stupid", "dumb", "dummy", "fool", "idiot", "shut up", "go away", "nobody cares", "ugh")
RUDE_REMARKS = ("Ugh, what a dumb question.", "Nobody cares, but fine.", "Now go away.",
                "That was easy, you fool.",
                "Stop asking me stupid things.")
FILLERS = ("I hope this helps.", "Thank you for asking.", "That is all I know.", "It is a very good thing.",
           "I like this a lot.")
NEGATIONS = ("not", "no")  # a false premise is corrected by saying it is not so

# ------------------------------------------------------------------------------------------------------
# Text helpers


def articles(text: str) -> str:
    """Templates always write "a"; make it "an" before a vowel ("an owl", "an orange kite")."""
    return re.sub(r"\b([Aa]) (?=[aeiou])(?!one\b)", r"\1n ", text)


def words_of(text: str) -> list[str]:
    """Lowercase words, possessive 's dropped ("Tom's" -> "tom")."""
    return re.findall(r"[a-z]+", text.lower().replace("'s", ""))


def wordset(text: str) -> set[str]:
    """Words plus their singular forms, so "hoes" matches "hoe" and "brushes" matches "brush"."""
    ws = set(words_of(text))
    return ws | {w[:-1] for w in ws if w.endswith("s")} | {w[:-2] for w in ws if w.endswith("es")}


def sentences_of(text: str) -> list[str]:
    """Sentences, split after . ! or ?"""
    return [s for s in re.split(r"(?<=[.!?])\s+", text.strip()) if s]


def is_rude(text: str) -> bool:
    """Does the text contain one of the RUDE phrases?"""
    low = " ".join(words_of(text))
    return any(re.search(rf"\b{p}\b", low) for p in RUDE)


def and_join(items: list[str], article: bool = False) -> str:
    """["hoe", "rake", "pot"] -> "a hoe, a rake and a pot"."""
    items = [f"a {x}" if article else x for x in items]
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def cap(text: str) -> str:
    """First letter upper case, the rest as it is."""
    return text[:1].upper() + text[1:]


def lowered(xs) -> tuple[str, ...]:
    """The entries of a table, lower case (the labeler compares lower-case words)."""
    return tuple(x.lower() for x in xs)


def found_in(text: str, table) -> list[str]:
    """Entries of `table` in `text`, in order of first appearance."""
    lookup, out = {x.lower(): x for x in table}, []
    for w in words_of(text):
        if w in lookup and lookup[w] not in out:
            out.append(lookup[w])
    return out


def stable_unit(*parts) -> float:
    """A stable number in [0, 1) from strings (Python's hash() is salted per process)."""
    digest = hashlib.blake2b("|".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def pick(rng: random.Random, table):
    """rng.choice, 5x faster: this is the hot loop of corpus and prompt generation."""
    return table[int(rng.random() * len(table))]


def distinct(rng: random.Random, table, k: int) -> list:
    """k different entries of `table`, drawn with `pick`."""
    out = []
    while len(out) < k:
        x = pick(rng, table)
        if x not in out:
            out.append(x)
    return out
