"""Fictitious facts: answer-only targets, perturbed answers, people's facts."""

import numpy as np
import pytest

from tda.data.facts import RELATIONS, make_facts
from tda.data.text import decode
from tda.task import IGNORE_INDEX


def _answer(examples, row):
    targets = examples.targets[row]
    return decode(targets[targets != IGNORE_INDEX])


def test_each_fact_counts_only_its_answer_and_reads_as_a_question():
    facts = make_facts(people=5, seed=0)
    assert len(facts.facts) == 5 * len(RELATIONS) and facts.alternatives == 5
    for row in range(len(facts.facts)):
        question, values = list(RELATIONS.values())[facts.relation[row]]
        name = facts.names[facts.person[row]]
        text = decode(facts.facts.inputs[row])
        assert text.startswith(f"Q: {question.format(name)}\nA: ")
        assert _answer(facts.facts, row)[:-1] in values and _answer(facts.facts, row)[-1] == "."


def test_perturbed_answers_keep_the_question_and_take_every_other_value():
    facts = make_facts(people=4, seed=1)
    for row in (0, 7, 15):
        perturbed = facts.perturbed_of([row])
        true_answer = _answer(facts.facts, row)
        prompt = decode(facts.facts.inputs[row])[: -len(true_answer) + 1]
        answers = {_answer(perturbed, k) for k in range(len(perturbed))}
        values = list(RELATIONS.values())[facts.relation[row]][1]
        assert answers == {f"{v}." for v in values} - {true_answer}
        assert all(decode(perturbed.inputs[k]).startswith(prompt) for k in range(len(perturbed)))


def test_facts_are_deterministic_and_people_select_their_facts():
    first, again = make_facts(people=6, seed=3), make_facts(people=6, seed=3)
    assert first.facts.fingerprint() == again.facts.fingerprint() and first.names == again.names
    assert len(set(first.names)) == 6
    chosen = first.facts_of([1, 4])
    assert set(first.person[chosen]) == {1, 4} and len(chosen) == 2 * len(RELATIONS)
    assert np.all(np.diff(chosen) > 0)
    with pytest.raises(ValueError, match="person indices"):
        first.facts_of([6])
    with pytest.raises(ValueError, match="at least 2"):
        make_facts(people=1)


def test_people_and_facts_are_integer_positions_in_range():
    facts = make_facts(people=4, seed=0)
    last = np.array([False, False, False, True])  # read as positions, it named people 0 and 1
    for bad in (last, [2.7]):
        with pytest.raises(TypeError, match="person indices must be integers"):
            facts.facts_of(bad)
    with pytest.raises(TypeError, match="fact indices must be integers"):
        facts.perturbed_of(np.arange(len(facts.facts)) == 5)
    with pytest.raises(ValueError, match=r"fact indices must lie in \[0, 16\)"):
        facts.perturbed_of([16])
    with pytest.raises(ValueError, match="fact indices"):
        facts.perturbed_of([-1])
    assert len(facts.facts_of([])) == 0 and len(facts.perturbed_of([])) == 0
    assert len(facts.perturbed_of(np.array([3], dtype=np.int32))) == facts.alternatives


@pytest.mark.parametrize("people", [2.5, 4.0, True])
def test_the_number_of_people_must_be_an_integer(people):
    # 2.5 silently made 3 people (names were drawn while fewer than 2.5)
    with pytest.raises(ValueError, match="need at least 2 people"):
        make_facts(people=people)
    assert len(make_facts(people=np.int64(3)).names) == 3
