"""The synthetic multi-hop world: questions answerable only by chaining two passages.

Every person has a mentor and a birth city. A question asks "Where was the mentor of E
born?". Its candidates are

* the **bridge** passage "E studied under M." (gold, contains no answer: *indirect*),
* the **answer** passage "M was born in C." (gold),
* a **trap** about E itself, "E was born in C'.", which overlaps the question most,
* distractors of both kinds about other people: "P was born in C''." (same relation as the
  answer passage, other cities) and "P' studied under P''.".

Why per-document signals miss the bridge: read alone, the bridge cannot produce the answer
(it names no city), so EMDR / PDist targets computed one passage at a time rank it low. Read
together with several "X was born in Y" passages, the bridge is the only thing that tells the
reader which city is the answer: its value exists only jointly, which is what G-Rerank's
mask over several passages measures. Deterministic given the seed.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from gumbel_jax.data.records import Passage, Record

_SYLLABLES = ["ka", "lo", "mi", "ra", "ven", "to", "sa", "dor", "el", "ni", "bru", "qua",
              "zel", "fi", "gar", "hu", "jo", "pe", "ris", "tam", "ul", "vo", "wen", "yar"]


@dataclasses.dataclass(frozen=True)
class WorldConfig:
    num_people: int = 300
    num_cities: int = 40
    num_candidates: int = 10  # n: passages per question
    num_born_distractors: int = 4  # "P was born in C" passages about other people
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
    people: list[str]
    cities: list[str]
    mentor: np.ndarray  # [people] index of each person's mentor (never themselves)
    city: np.ndarray  # [people] index of each person's birth city


def make_world(config: WorldConfig) -> World:
    if config.num_candidates < 3 + config.num_born_distractors:
        raise ValueError("num_candidates must leave room for bridge, answer, trap and the "
                         f"{config.num_born_distractors} born-in distractors")
    rng = np.random.default_rng(config.seed)
    # One pool of distinct names, so no city shares a name with a person.
    names = list(rng.permutation(_names(rng, config.num_people + config.num_cities, 3)))
    people, cities = names[: config.num_people], names[config.num_people:]
    offset = rng.integers(1, config.num_people, size=config.num_people)
    mentor = (np.arange(config.num_people) + offset) % config.num_people
    city = rng.integers(0, config.num_cities, size=config.num_people)
    return World([str(p) for p in people], [str(c) for c in cities], mentor, city)


def make_question(world: World, config: WorldConfig, rng: np.random.Generator,
                  question_id: str) -> Record:
    people, cities = world.people, world.cities
    subject = int(rng.integers(len(people)))
    mentor = int(world.mentor[subject])
    answer_city = int(world.city[mentor])
    others = [p for p in rng.permutation(len(people))
              if p not in (subject, mentor) and world.city[p] != answer_city]
    born = others[: config.num_born_distractors]
    passages = [
        Passage(people[subject], f"{people[subject]} studied under {people[mentor]} .",
                is_gold=True),
        Passage(people[mentor], f"{people[mentor]} was born in {cities[answer_city]} .",
                is_gold=True),
    ]
    trap_city = world.city[subject]
    if trap_city == answer_city:
        trap_city = (answer_city + 1) % len(cities)
    passages.append(Passage(people[subject], f"{people[subject]} was born in "
                                             f"{cities[trap_city]} .", is_gold=False))
    passages += [Passage(people[p], f"{people[p]} was born in {cities[world.city[p]]} .",
                         is_gold=False) for p in born]
    fillers = others[config.num_born_distractors:]
    while len(passages) < config.num_candidates:
        student, teacher = fillers.pop(), (born[len(passages) % len(born)] if born
                                           else fillers.pop())
        passages.append(Passage(people[student], f"{people[student]} studied under "
                                                 f"{people[teacher]} .", is_gold=False))
    order = rng.permutation(len(passages))
    answer = cities[answer_city]
    ctxs = tuple(dataclasses.replace(passages[i], has_answer=answer in passages[i].text.split())
                 for i in order)
    roles = ["bridge", "answer", "trap"] + ["distractor"] * (len(passages) - 3)
    return Record(question_id, f"Where was the mentor of {people[subject]} born ?", (answer,),
                  ctxs, {"roles": [roles[i] for i in order]})


def make_records(config: WorldConfig, num_questions: int, *, split_seed: int = 0,
                 prefix: str = "q") -> list[Record]:
    """``num_questions`` questions about one world; ``split_seed`` separates splits."""
    world = make_world(config)
    rng = np.random.default_rng([config.seed, split_seed])
    return [make_question(world, config, rng, f"{prefix}{i}") for i in range(num_questions)]
