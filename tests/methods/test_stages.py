"""Source and TracIn over training in stages, each on its own examples (``fit_stages``).

Same linear-regression oracle as ``test_source.py``: full-batch gradient descent unrolled in closed
form, here first on examples A at one learning rate, then on examples B (overlapping A) at
another, and differentiated by ``jacrev`` with respect to every example's weight in the mean
loss of each stage it is in. With a checkpoint per step, the starting parameters saved and
``gradients="start"``, Source with one segment per step is exact; an example no stage trained on
scores 0. TracIn's reference is its formula written out for linear regression, each
checkpoint's term over its own stage's examples.
"""

from dataclasses import replace

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from tda.checkpoints import load_checkpoint
from tda.methods.source import Source, plan_stages
from tda.methods.stages import TrainingStage, stage_indices
from tda.methods.tracin import TracIn
from tda.training import train
from tests.methods.test_source import TASK, design, factory, relative_error, sgd, trained

START = torch.tensor([0.5, 0.5, -1.0, 0.0], dtype=torch.float64)
FIRST, SECOND = np.arange(0, 5), np.arange(3, 7)  # example 7 is in neither stage
STEPS = {"first": (0.3, 5), "second": (0.1, 5)}


def staged_effect(train_set, queries):
    """τ[q, i] = ∂f(x_q; θ_T(w)) / ∂w_i: each stage descends (1/|D_s|) Σ_{i∈D_s} w_i ℓ_i."""
    features, query_features = design(train_set), design(queries)

    def outputs(weights):
        theta = START
        for indices, (rate, steps) in zip((FIRST, SECOND), STEPS.values(), strict=True):
            x, y, w = features[indices], train_set.targets[indices], weights[indices]
            for _ in range(steps):
                theta = theta - rate * x.T @ (w * (x @ theta - y)) / len(indices)
        return query_features @ theta

    return torch.func.jacrev(outputs)(torch.ones(len(train_set), dtype=torch.float64))


@pytest.fixture(scope="module")
def stages(tmp_path_factory, data):
    """The first stage saved with its starting parameters, the second without (it starts where
    the first ended); a checkpoint per step."""
    train_set, _ = data
    (rate, steps), (rate2, steps2) = STEPS.values()
    first_set, second_set = train_set.subset(FIRST), train_set.subset(SECOND)
    first_config = replace(sgd(rate, steps, steps, first_set), save_initial=True)
    first = trained(tmp_path_factory.mktemp("first"), first_set, START, first_config)
    model = load_checkpoint(first[-1], factory())
    directory = tmp_path_factory.mktemp("second")
    second = train(model, second_set, sgd(rate2, steps2, steps2, second_set), task=TASK,
        checkpoint_dir=directory)  # fmt: skip
    return [TrainingStage(first, FIRST), TrainingStage(second.checkpoints, SECOND)]


def test_a_segment_per_step_of_each_stage_is_exact(data, stages):
    train_set, queries = data
    truth = staged_effect(train_set, queries)
    assert bool((truth[:, 7] == 0).all()) and bool((truth[:, :7] != 0).all())
    source = Source(segments=5, task=TASK, discrete=True, gradients="start")
    scores = source.fit_stages(factory, stages, train_set).score(queries)
    assert relative_error(scores, truth) < 1e-9
    assert bool((scores[:, 7] == 0).all())
    # the whole training set in each stage is another training run, and Source says so
    pooled = [TrainingStage(stage.checkpoints) for stage in stages]
    wrong = source.fit_stages(factory, pooled, train_set).score(queries)
    assert relative_error(wrong, truth) > 0.1


def test_a_later_stage_starts_where_the_previous_one_ended(stages):
    plan = plan_stages(stages, 2)
    assert [len(segment.checkpoints) for segment in plan] == [2, 3, 2, 3]
    assert plan[0].previous is stages[0].checkpoints[0]  # the saved starting parameters
    assert plan[2].previous is stages[0].checkpoints[-1]
    assert plan[3].previous is stages[1].checkpoints[1]


def test_one_stage_over_all_examples_in_any_order_is_fit(data, stages):
    train_set, queries = data
    checkpoints = stages[0].checkpoints
    expected = Source(segments=2, task=TASK).fit(factory, checkpoints, train_set).score(queries)
    shuffled = np.random.default_rng(0).permutation(len(train_set))
    staged = Source(segments=2, task=TASK).fit_stages(
        factory, [TrainingStage(checkpoints, shuffled)], train_set
    )
    np.testing.assert_allclose(staged.score(queries), expected, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize(
    ("examples", "message"),
    [
        ([0, 0, 1], "more than once"),
        ([0, 8], r"index the training set \[0, 8\)"),
        ([-1, 2], "index the training set"),
        ([], "no examples"),
        ([0.0, 1.0], "integer indices"),
        ([[0, 1]], "integer indices"),
    ],
)
def test_bad_stage_examples_are_refused(data, stages, examples, message):
    train_set, _ = data
    with pytest.raises(ValueError, match=message):
        Source(task=TASK).fit_stages(
            factory, [TrainingStage(stages[0].checkpoints, examples)], train_set
        )


def test_no_stages_is_refused(data):
    with pytest.raises(ValueError, match="at least one training stage"):
        Source(task=TASK).fit_stages(factory, [], data[0])
    assert stage_indices(None, 3) is None


def tracin_formula(stages, train_set, queries):
    """Σ_c η_c ∇f(x_q)·(−∇ℓ(z_i; θ_c)) over each stage's checkpoints and examples."""
    features, query_features = design(train_set), design(queries)
    total = torch.zeros(len(queries), len(train_set), dtype=torch.float64)
    for stage in stages:
        for checkpoint in stage.checkpoints:
            state = load_file(checkpoint.path)
            theta = torch.cat([state["weight"][0], state["bias"]])
            x, y = features[stage.examples], train_set.targets[stage.examples]
            loss_gradients = x * (x @ theta - y).unsqueeze(1)
            term = -checkpoint.segment_learning_rate * query_features @ loss_gradients.T
            total[:, stage.examples] += term
    return total


def test_tracin_sums_each_checkpoints_term_over_its_own_stage(data, stages):
    train_set, queries = data
    scores = TracIn(task=TASK).fit_stages(factory, stages, train_set).score(queries)
    reference = tracin_formula(stages, train_set, queries)
    np.testing.assert_allclose(scores, reference, rtol=1e-10, atol=1e-14)
    assert bool((scores[:, 7] == 0).all()) and bool((scores[:, :7] != 0).all())
    pooled = TracIn(task=TASK).fit_stages(factory, [TrainingStage(s.checkpoints) for s in stages],
        train_set).score(queries)  # fmt: skip
    assert relative_error(pooled, reference) > 0.1
    checkpoints = [c for stage in stages for c in stage.checkpoints]
    whole = TracIn(task=TASK).fit(factory, checkpoints, train_set).score(queries)
    np.testing.assert_array_equal(whole.numpy(), pooled.numpy())
    with pytest.raises(ValueError, match="more than once"):
        TracIn(task=TASK).fit_stages(factory, [TrainingStage(checkpoints, [1, 1])], train_set)
    with pytest.raises(ValueError, match="at least one checkpoint"):
        TracIn(task=TASK).fit_stages(factory, [TrainingStage([], [1])], train_set)


@pytest.mark.parametrize("dtype", [np.uint16, np.uint32, np.uint64])
def test_unsigned_stage_examples_are_read_as_their_indices(data, stages, dtype):
    """torch has no min/max for uint16/32/64: numpy's unsigned indices failed in them."""
    train_set, queries = data
    expected = TracIn(task=TASK).fit_stages(factory, stages, train_set).score(queries)
    unsigned = [TrainingStage(s.checkpoints, np.asarray(s.examples, dtype=dtype)) for s in stages]
    scores = TracIn(task=TASK).fit_stages(factory, unsigned, train_set).score(queries)
    np.testing.assert_array_equal(scores.numpy(), expected.numpy())
    as_torch = torch.from_numpy(np.array([4, 0], dtype=dtype))
    assert stage_indices(as_torch, 8).tolist() == [4, 0]
    with pytest.raises(ValueError, match=r"index the training set \[0, 8\), got 0\.\.8"):
        stage_indices(np.array([0, 8], dtype=dtype), 8)
    with pytest.raises(ValueError, match="integer indices"):
        stage_indices(np.array([1 + 0j]), 8)
