"""A small English grammar: varied, well-formed sentences from a seed.

Used to script the embedded eSpeak corpus. Sentences are statements,
questions, exclamations and compound sentences, roughly 3 to 20 words, from
a few hundred words of vocabulary, so that many English phonemes and
phoneme contexts occur. Everything is drawn from a `numpy.random.Generator`,
so `sentences(seed, n)` is a pure function.
"""
from __future__ import annotations

import numpy as np

DETERMINERS = ("the", "a", "this", "that", "every", "one", "my", "your", "our", "their")
PLURAL_DETERMINERS = ("the", "some", "these", "those", "many", "few", "two", "three", "seven",
                      "twelve", "all the")
ADJECTIVES = ("quick", "lazy", "bright", "quiet", "heavy", "gentle", "young", "old", "tiny",
              "enormous", "purple", "golden", "curious", "sleepy", "clever", "noisy", "careful",
              "happy", "strange", "wooden", "frozen", "shiny", "brave", "hungry", "distant",
              "ancient", "smooth", "thirsty", "yellow", "patient")
NOUNS = ("cat", "dog", "river", "teacher", "garden", "window", "mountain", "child", "engine",
         "village", "letter", "bridge", "farmer", "island", "rabbit", "storm", "machine",
         "painter", "forest", "kitchen", "doctor", "sailor", "lantern", "melody", "pencil",
         "orchard", "tiger", "baker", "journey", "thunder", "feather", "judge", "puzzle",
         "violin", "harbour", "zebra", "shadow", "engineer", "cheese", "oyster")
PLURAL_NOUNS = ("cats", "dogs", "rivers", "teachers", "gardens", "windows", "children",
                "engines", "letters", "farmers", "rabbits", "machines", "doctors", "sailors",
                "lanterns", "pencils", "tigers", "bakers", "feathers", "puzzles", "oysters",
                "birds", "clouds", "stones", "boats")
NAMES = ("Alice", "Bob", "Charlotte", "David", "Eleanor", "George", "Hannah", "Isaac", "Judith",
         "Kevin", "Laura", "Martin", "Nora", "Oliver", "Priya", "Quentin", "Rosa", "Samuel",
         "Theo", "Ursula", "Victor", "Wendy", "Yusuf", "Zoe")
TRANSITIVE_PAST = ("found", "watched", "painted", "carried", "followed", "opened", "fixed",
                   "chased", "visited", "borrowed", "noticed", "remembered", "pushed", "loved",
                   "measured", "threw", "built", "heard", "thanked", "washed")
TRANSITIVE_BASE = ("find", "watch", "paint", "carry", "follow", "open", "fix", "chase", "visit",
                   "borrow", "notice", "remember", "push", "love", "measure", "throw", "build",
                   "hear", "thank", "wash")
INTRANSITIVE_PAST = ("slept", "laughed", "waited", "arrived", "vanished", "sang", "shivered",
                     "whispered", "jumped", "smiled", "wandered", "listened", "danced", "froze")
ADVERBS = ("slowly", "quickly", "quietly", "happily", "carefully", "suddenly", "again",
           "yesterday", "together", "early", "very loudly", "at last", "without a sound")
PREPOSITIONS = ("near", "under", "behind", "beside", "across", "inside", "above", "around",
                "towards", "beyond", "through")
PLACES = ("the old bridge", "the kitchen table", "the village square", "the dark forest",
          "the quiet harbour", "the top of the hill", "the railway station", "the museum",
          "the orchard wall", "the frozen lake")
TIMES = ("on Monday", "on Thursday evening", "at seven o'clock", "in the morning",
         "after lunch", "last winter", "before midnight", "in nineteen ninety eight",
         "every Sunday", "at half past four")
INTERJECTIONS = ("Oh", "Well", "Look", "Honestly", "Listen", "Wow", "Alright")
QUESTION_WORDS = ("Why", "Where", "When", "How")
CONJUNCTIONS = ("and", "but", "so", "because", "while")


def _pick(rng: np.random.Generator, words: tuple[str, ...]) -> str:
    return words[int(rng.integers(len(words)))]


def _noun_phrase(rng: np.random.Generator, depth: int = 0) -> str:
    kind = rng.random()
    if kind < 0.2:
        return _pick(rng, NAMES)
    plural = rng.random() < 0.3
    det = _pick(rng, PLURAL_DETERMINERS if plural else DETERMINERS)
    noun = _pick(rng, PLURAL_NOUNS if plural else NOUNS)
    adjectives = [_pick(rng, ADJECTIVES) for _ in range(int(rng.choice([0, 1, 1, 2])))]
    phrase = " ".join([det, *adjectives, noun])
    if det == "a" and phrase.split()[1][0] in "aeiou":
        phrase = "an" + phrase[1:]
    if depth == 0 and rng.random() < 0.2:
        phrase += f" {_pick(rng, PREPOSITIONS)} {_noun_phrase(rng, depth + 1)}"
    return phrase


def _verb_phrase(rng: np.random.Generator) -> str:
    kind = rng.random()
    if kind < 0.5:
        phrase = f"{_pick(rng, TRANSITIVE_PAST)} {_noun_phrase(rng)}"
    elif kind < 0.8:
        phrase = _pick(rng, INTRANSITIVE_PAST)
    else:
        phrase = f"was {_pick(rng, ADJECTIVES)}"
    if rng.random() < 0.4:
        phrase += f" {_pick(rng, ADVERBS)}"
    if rng.random() < 0.3:
        phrase += f" {_pick(rng, PREPOSITIONS)} {_pick(rng, PLACES)}"
    if rng.random() < 0.25:
        phrase += f" {_pick(rng, TIMES)}"
    return phrase


def _clause(rng: np.random.Generator) -> str:
    return f"{_noun_phrase(rng)} {_verb_phrase(rng)}"


def _capitalise(text: str) -> str:
    return text[0].upper() + text[1:]


def sentence(rng: np.random.Generator) -> str:
    """One sentence, capitalised and punctuated."""
    kind = rng.random()
    if kind < 0.45:
        return _capitalise(_clause(rng)) + "."
    if kind < 0.6:
        return (f"{_capitalise(_clause(rng))}, {_pick(rng, CONJUNCTIONS)} "
                f"{_clause(rng)}.")
    if kind < 0.72:
        return f"Did {_noun_phrase(rng)} {_pick(rng, TRANSITIVE_BASE)} {_noun_phrase(rng)}?"
    if kind < 0.82:
        return (f"{_pick(rng, QUESTION_WORDS)} did {_noun_phrase(rng)} "
                f"{_pick(rng, TRANSITIVE_BASE)} {_noun_phrase(rng)}?")
    if kind < 0.92:
        return f"{_pick(rng, INTERJECTIONS)}, {_clause(rng)}!"
    return f"{_capitalise(_pick(rng, TIMES))}, {_clause(rng)}."


def sentences(seed: int, count: int) -> list[str]:
    """`count` sentences, a pure function of `seed`."""
    rng = np.random.default_rng(seed)
    return [sentence(rng) for _ in range(count)]
