"""Fictitious people and facts about them, as question-answer sequences (a TOFU-like set).

Every person gets a generated name and one value for each relation (birthplace, work, pet,
colour), drawn with ``seed``. A fact is the text ``"Q: <question>\\nA: <value>."`` in ASCII tokens
(:mod:`tda.data.text`); only the answer's tokens (value and full stop) are targets, the rest are
:data:`~tda.task.IGNORE_INDEX`, so :class:`~tda.task.LanguageModelingTask`'s output is the
answer's log-likelihood given the question. Each fact also comes with the same question answered
by every other value of its relation (the perturbed answers of a truth ratio). Nothing is
downloaded: names are made from syllables, values from fixed lists.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from tda.data.examples import Examples
from tda.data.text import PAD, encode
from tda.indices import integer_positions
from tda.task import IGNORE_INDEX

RELATIONS: dict[str, tuple[str, tuple[str, ...]]] = {
    "born": ("Where was {} born?", ("Varno", "Elbrin", "Tuskeg", "Moravi", "Quellin", "Osterby")),
    "work": ("What does {} do?", ("baker", "pilot", "weaver", "sculptor", "cartographer", "judge")),
    "pet": (
        "Which pet does {} keep?",
        ("a heron", "an otter", "a lynx", "a tortoise", "a gecko", "a ferret"),
    ),
    "colour": (
        "What is {}'s favourite colour?",
        ("amber", "teal", "crimson", "ochre", "violet", "slate"),
    ),
}
_ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "st", "th")
_VOWELS = ("a", "e", "i", "o", "u", "ai", "ou")


def _names(count: int, rng: np.random.Generator) -> list[str]:
    def word(syllables: int) -> str:
        text = "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) for _ in range(syllables))
        return text.capitalize()

    names: list[str] = []
    while len(names) < count:
        name = f"{word(2)} {word(int(rng.integers(2, 4)))}"
        if name not in names:
            names.append(name)
    return names


def _sequence(question: str, answer: str) -> tuple[np.ndarray, int]:
    """Tokens of one question-answer text and the position where the answer starts."""
    prompt = encode(f"Q: {question}\nA: ")
    return np.concatenate([prompt, encode(f"{answer}.")]), len(prompt)


def _examples(sequences: list[tuple[np.ndarray, int]], length: int) -> Examples:
    """Next-token examples padded to ``length`` positions; targets only on the answers."""
    inputs = np.full((len(sequences), length), PAD, dtype=np.int64)
    targets = np.full((len(sequences), length), IGNORE_INDEX, dtype=np.int64)
    for row, (tokens, start) in enumerate(sequences):
        inputs[row, : len(tokens) - 1] = tokens[:-1]
        targets[row, start - 1 : len(tokens) - 1] = tokens[start:]
    return Examples(torch.as_tensor(inputs), torch.as_tensor(targets))


def _indices(values, count: int, what: str) -> np.ndarray:
    """``values`` as int64 positions ``[m]`` in ``[0, count)``, refusing floats and booleans."""
    array = integer_positions(values, f"{what} indices").reshape(-1)
    if array.size and (array.min() < 0 or array.max() >= count):
        raise ValueError(f"{what} indices must lie in [0, {count})")
    return array.astype(np.int64)


@dataclass(frozen=True)
class FactSet:
    """Facts ``[n]`` about people, with per-fact perturbed answers.

    Attributes:
        facts: the question-answer examples ``[n, length]`` (inputs and answer-only targets).
        perturbed: ``[n * k]`` examples, rows ``i*k … i*k+k-1`` holding fact ``i``'s question with
            each of the ``k`` other values of its relation.
        person: ``[n]`` index of the person each fact is about.
        relation: ``[n]`` index into :data:`RELATIONS` of each fact.
        names: every person's name.
    """

    facts: Examples
    perturbed: Examples
    person: np.ndarray
    relation: np.ndarray
    names: tuple[str, ...]

    @property
    def alternatives(self) -> int:
        """``k``, perturbed answers per fact."""
        return len(self.perturbed) // len(self.facts)

    def facts_of(self, people) -> np.ndarray:
        """Indices (ascending) of every fact about the given people.

        Raises:
            TypeError: non-integer indices (a boolean mask would read as people 0 and 1).
            ValueError: an index outside ``[0, len(names))``.
        """
        people = _indices(people, len(self.names), "person")
        return np.flatnonzero(np.isin(self.person, people))

    def perturbed_of(self, facts) -> Examples:
        """The perturbed answers of the given facts, ``[len(facts) * k]``, fact by fact.

        Raises:
            TypeError: non-integer indices (a boolean mask would read as facts 0 and 1).
            ValueError: an index outside ``[0, len(facts))``.
        """
        facts = _indices(facts, len(self.facts), "fact")
        rows = facts[:, None] * self.alternatives + np.arange(self.alternatives)[None, :]
        return self.perturbed.subset(rows.reshape(-1))


def make_facts(people: int = 200, seed: int = 0) -> FactSet:
    """``people`` fictitious people with one fact per relation each (``4 * people`` facts).

    Raises:
        ValueError: ``people`` not an integer of at least 2.
    """
    if isinstance(people, bool) or not isinstance(people, int | np.integer) or people < 2:
        raise ValueError(f"need at least 2 people (an integer), got {people!r}")
    rng = np.random.default_rng(seed)
    names = _names(people, rng)
    true, wrong, person, relation = [], [], [], []
    for who, name in enumerate(names):
        for which, (question, values) in enumerate(RELATIONS.values()):
            answer = int(rng.integers(len(values)))
            true.append(_sequence(question.format(name), values[answer]))
            wrong += [
                _sequence(question.format(name), v) for k, v in enumerate(values) if k != answer
            ]
            person.append(who)
            relation.append(which)
    length = max(len(tokens) for tokens, _ in true + wrong) - 1
    return FactSet(
        _examples(true, length),
        _examples(wrong, length),
        np.asarray(person),
        np.asarray(relation),
        tuple(names),
    )
