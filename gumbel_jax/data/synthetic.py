"""The synthetic multi-hop world: questions answerable only by reading two passages together.

A question asks "Where was the mentor of E born ?". Its candidates are

* the **bridge** passage "E studied under M , who was born in X ." where X is a country (gold,
  names no city, so it does not contain the answer: *indirect*),
* the **answer** passage "M was born in C ." where C is a city of X (gold),
* a **trap** about E itself, "E was born in C' .", which overlaps the question most,
* distractors about other people: "P was born in C'' ." (the answer passage's relation, one
  city in each of the other countries) and "S studied under T ." (the bridge's relation
  about someone else, saying nothing about where anyone was born). The number of "born in"
  distractors may vary per question (``born_distractors_spread``); the false bridges fill
  the remaining candidates.

Two kinds of knowledge: the world itself (which country each city lies in) is fixed, like a
reader's general knowledge; the facts about people are drawn anew for every question, so a
reader cannot memorise answers and has to read, and held-out questions are new facts about
familiar words (every name is seen in training, so the word-level vocabulary is trained).

Why per-document signals miss the bridge: read alone, the bridge names no city, so it can
at best make the reader guess among its country's cities, and EMDR / PDist targets computed
one passage at a time rank it low. Read together with several "P was born in C" passages,
the bridge is what tells the reader which of those cities is the answer (the only one in
country X): its value exists jointly, which is what G-Rerank's mask over several passages
measures. The answer passage does not mention the question's person, so a reranker that
scores one passage at a time cannot tell it from the other "born in" distractors (the trap
names the question's person, so it can be ruled out); the best top k holds the bridge and
k - 1 of the m answer-like passages (the answer and its distractors), and keeps the answer
with probability min(1, (k - 1) / m). Deterministic given the seed.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from gumbel_jax.data.records import Passage, Record

_SYLLABLES = ["ka", "lo", "mi", "ra", "ven", "to", "sa", "dor", "el", "ni", "bru", "qua",
              "zel", "fi", "gar", "hu", "jo", "pe", "ris", "tam", "ul", "vo", "wen", "yar"]

ROLES = ("bridge", "answer", "trap", "distractor", "false_bridge")


@dataclasses.dataclass(frozen=True)
class WorldConfig:
    num_people: int = 300  # size of the pool of person names
    num_cities: int = 80  # size of the pool of city names
    num_countries: int = 5  # the cities are dealt round-robin into this many countries
    num_candidates: int = 10  # n: passages per question
    num_born_distractors: int = 4  # "P was born in C" passages about other people
    # Each question draws its number of born-in distractors uniformly from
    # num_born_distractors ± spread (0: always num_born_distractors), so the number of
    # answer-like passages is not the same for every question (nor tied to any k).
    born_distractors_spread: int = 0
    seed: int = 0


def _names(rng: np.random.Generator, count: int, syllables: int) -> list[str]:
    if count > len(_SYLLABLES) ** syllables // 2:
        raise ValueError(f"cannot make {count} distinct names of {syllables} syllables")
    names: set[str] = set()
    while len(names) < count:
        names.add("".join(rng.choice(_SYLLABLES, size=syllables)).capitalize())
    return sorted(names)


@dataclasses.dataclass(frozen=True)
class World:
    """The name pools and the fixed geography; facts about people are drawn per question
    (:func:`make_question`)."""

    people: list[str]
    cities: list[str]
    countries: list[str]
    country_of: np.ndarray  # [cities] index of each city's country


def make_world(config: WorldConfig) -> World:
    fewest_born = config.num_born_distractors - config.born_distractors_spread
    most_born = config.num_born_distractors + config.born_distractors_spread
    if config.born_distractors_spread < 0 or fewest_born < 0:
        raise ValueError(f"born_distractors_spread={config.born_distractors_spread}: must be "
                         f"in [0, num_born_distractors={config.num_born_distractors}]")
    false_bridges = config.num_candidates - 3 - fewest_born  # the most a question can have
    if config.num_candidates - 3 - most_born < 0:
        raise ValueError("num_candidates must leave room for bridge, answer, trap and the "
                         f"{most_born} born-in distractors")
    if config.num_people < 2 + fewest_born + 2 * false_bridges:
        raise ValueError(f"num_people={config.num_people} is too few for "
                         f"{config.num_candidates} candidates about distinct people")
    if config.num_countries < 1 + most_born:
        raise ValueError(f"num_countries={config.num_countries}: need one for the answer and "
                         f"one for each of the {most_born} born-in distractors")
    if config.num_cities < 2 * config.num_countries:
        raise ValueError(f"num_cities={config.num_cities}: need >= 2 per country "
                         f"({config.num_countries} countries)")
    rng = np.random.default_rng(config.seed)
    # One pool of distinct names, so no city shares a name with a person; countries have
    # two syllables, people and cities three.
    names = list(rng.permutation(_names(rng, config.num_people + config.num_cities, 3)))
    people, cities = names[: config.num_people], names[config.num_people:]
    countries = list(rng.permutation(_names(rng, config.num_countries, 2)))
    country_of = np.arange(config.num_cities) % config.num_countries
    return World([str(p) for p in people], [str(c) for c in cities],
                 [str(c) for c in countries], country_of)


def make_question(world: World, config: WorldConfig, rng: np.random.Generator,
                  question_id: str) -> Record:
    """One question with its own facts; ``metadata["roles"]`` names each passage's role."""
    people, cities, countries = world.people, world.cities, world.countries
    num_born = config.num_born_distractors
    if config.born_distractors_spread:  # no draw otherwise: fixed-count worlds keep their data
        spread = config.born_distractors_spread
        num_born += int(rng.integers(-spread, spread + 1))
    num_false = config.num_candidates - 3 - num_born
    chosen = [people[i] for i in
              rng.choice(len(people), size=2 + num_born + 2 * num_false, replace=False)]
    subject, mentor = chosen[:2]
    born = chosen[2: 2 + num_born]
    students = chosen[2 + num_born: 2 + num_born + num_false]
    teachers = chosen[2 + num_born + num_false:]
    answer_city = int(rng.integers(len(cities)))
    home = int(world.country_of[answer_city])
    # One distractor city in each of num_born other countries: every country among the
    # "born in" passages appears once, so nothing but the bridge singles out the answer's.
    abroad = rng.choice([c for c in range(len(countries)) if c != home], size=num_born,
                        replace=False)
    born_cities = [int(rng.choice(np.flatnonzero(world.country_of == c))) for c in abroad]
    foreign = [c for c in np.flatnonzero(world.country_of != home) if c not in born_cities]
    trap_city = int(rng.choice(foreign))
    answer = cities[answer_city]
    passages = [
        (f"{subject} studied under {mentor} , who was born in {countries[home]} .", subject,
         "bridge"),
        (f"{mentor} was born in {answer} .", mentor, "answer"),
        (f"{subject} was born in {cities[trap_city]} .", subject, "trap"),
        *[(f"{p} was born in {cities[c]} .", p, "distractor")
          for p, c in zip(born, born_cities, strict=True)],
        *[(f"{s} studied under {t} .", s, "false_bridge")
          for s, t in zip(students, teachers, strict=True)],
    ]
    order = rng.permutation(len(passages))
    ctxs = tuple(Passage(passages[i][1], passages[i][0],
                         is_gold=passages[i][2] in ("bridge", "answer"),
                         has_answer=answer in passages[i][0].split()) for i in order)
    return Record(question_id, f"Where was the mentor of {subject} born ?", (answer,), ctxs,
                  {"roles": [passages[i][2] for i in order]})


def make_records(config: WorldConfig, num_questions: int, *, split_seed: int = 0,
                 prefix: str = "q") -> list[Record]:
    """``num_questions`` questions drawn from one world's name pools; ``split_seed``
    separates splits."""
    world = make_world(config)
    rng = np.random.default_rng([config.seed, split_seed])
    return [make_question(world, config, rng, f"{prefix}{i}") for i in range(num_questions)]
