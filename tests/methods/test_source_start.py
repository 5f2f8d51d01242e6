"""Source from the starting parameters: ``TrainConfig(save_initial=True)`` + ``gradients="start"``.

Same linear-regression oracle as ``test_source.py`` (full-batch gradient descent unrolled in closed
form and differentiated by ``jacrev``). There a checkpoint's gradients (taken where its steps end)
lag one step behind a generic start; with the step-0 checkpoint each step's gradient can be taken
where the step begins, which is what gradient descent does, so with one segment per step Source is
exact from any start.
"""

from dataclasses import replace

import numpy as np
import pytest
import torch

from tda.methods.source import Source, plan_segments
from tda.methods.tracin import TracIn
from tests.methods.test_source import (
    TASK,
    factory,
    relative_error,
    sgd,
    trained,
    true_effect,
    two_phases,
)

START = torch.tensor([0.5, 0.5, -1.0, 0.0], dtype=torch.float64)  # far from the optimum


@pytest.fixture(scope="module")
def run(tmp_path_factory, data):
    """10 full-batch steps (5 at η = 0.3, 5 at 0.03) from START, a checkpoint per step plus the
    starting parameters; the true effect of down-weighting each example."""
    train_set, queries = data
    config = replace(sgd(0.3, 10, 10, train_set, two_phases()), save_initial=True)
    checkpoints = trained(tmp_path_factory.mktemp("start"), train_set, START, config)
    truth = true_effect(START, train_set, queries, [0.3] * 5 + [0.03] * 5)
    return checkpoints, truth


def test_a_segment_per_step_from_the_start_is_exact(data, run):
    train_set, queries = data
    checkpoints, truth = run
    assert [c.step for c in checkpoints] == list(range(11)) and checkpoints[0].segment_steps == 0
    source = Source(segments=10, task=TASK, discrete=True, gradients="start")
    scores = source.fit(factory, checkpoints, train_set).score(queries)
    assert relative_error(scores, truth) < 1e-9
    lagging = Source(segments=10, task=TASK, discrete=True).fit(factory, checkpoints, train_set)
    assert relative_error(lagging.score(queries), truth) > 0.05  # the one-step lag of "end"


def test_the_start_checkpoint_changes_nothing_for_end_gradients_and_tracin(data, run):
    train_set, queries = data
    checkpoints, _ = run
    for method in (Source(segments=4, task=TASK), TracIn(task=TASK)):
        with_start = method.fit(factory, checkpoints, train_set).score(queries)
        without = method.fit(factory, checkpoints[1:], train_set).score(queries)
        np.testing.assert_array_equal(with_start.numpy(), without.numpy())


def test_the_start_bounds_the_first_segment_and_is_required_for_start_gradients(data, run):
    train_set, _ = data
    checkpoints, _ = run
    plan = plan_segments(checkpoints, 3)
    assert [len(segment.checkpoints) for segment in plan] == [3, 3, 4]
    assert [segment.previous for segment in plan] == [
        checkpoints[0],
        checkpoints[3],
        checkpoints[6],
    ]
    assert plan_segments(checkpoints[1:], 1)[0].previous is None
    with pytest.raises(
        ValueError, match=r"save_initial=True\) \(Hydra: \+\+train.save_initial=true\)"
    ):
        Source(segments=2, gradients="start").fit(factory, checkpoints[1:], train_set)
    with pytest.raises(ValueError, match="only 10 checkpoints were saved after the start"):
        plan_segments(checkpoints, 11)
    with pytest.raises(ValueError, match="close no optimiser steps"):
        plan_segments([checkpoints[1], replace(checkpoints[2], segment_steps=0)], 1)
    with pytest.raises(ValueError, match="gradients must be"):
        Source(gradients="middle")


def test_a_refused_refit_leaves_the_fitted_source_as_it_was(data, run):
    """The refusal came after the new plan was stored: scoring then read a missing start."""
    train_set, queries = data
    checkpoints, _ = run
    source = Source(segments=2, task=TASK, discrete=True, gradients="start")
    before = source.fit(factory, checkpoints, train_set).score(queries)
    with pytest.raises(ValueError, match="save_initial=True"):
        source.fit(factory, checkpoints[1:], train_set)
    assert source.plan == plan_segments(checkpoints, 2)
    np.testing.assert_array_equal(source.score(queries).numpy(), before.numpy())
