"""Value and self-influence scores: means, diagonals and loss-gradient norms against loops."""

import numpy as np
import pytest
import torch

from tda.checkpoints import load_checkpoint
from tda.curvature import ExplicitSolver
from tda.data import Examples
from tda.methods import InfluenceFunction
from tda.models import MLP, build_model
from tda.task import ClassificationTask
from tda.training import TrainConfig, train
from tda.valuation import (
    checkpoint_loss,
    loss_gradient_norms,
    self_scores,
    tracin_self_influence,
    values_from_scores,
)


def test_values_are_mean_scores_over_queries():
    scores = torch.tensor([[1.0, -2.0, 0.5], [3.0, 0.0, -0.5]])
    torch.testing.assert_close(values_from_scores(scores), torch.tensor([2.0, -1.0, 0.0]).double())
    torch.testing.assert_close(values_from_scores(scores.numpy()), values_from_scores(scores))
    with pytest.raises(ValueError, match="NaN"):
        values_from_scores(torch.tensor([[float("nan")]]))
    with pytest.raises(ValueError, match="n_query >= 1"):
        values_from_scores(torch.zeros(0, 3))


@pytest.mark.parametrize("chunk_size", [1, 3, 100])
def test_self_scores_read_the_diagonal(chunk_size):
    full = torch.arange(49, dtype=torch.float64).reshape(7, 7)
    calls = []

    def score_rows(rows):
        calls.append(list(rows))
        return full[rows]

    torch.testing.assert_close(self_scores(score_rows, 7, chunk_size), torch.diagonal(full))
    assert sorted(sum(calls, [])) == list(range(7))


def test_self_scores_refuse_wrong_shapes():
    with pytest.raises(ValueError, match="expected"):
        self_scores(lambda rows: torch.zeros(len(rows), 3), 5)


def test_self_scores_of_influence_match_its_self_influence(tiny_mlp, tiny_data):
    influence = InfluenceFunction(ExplicitSolver(damping=0.01)).fit(tiny_mlp, tiny_data)
    through_scores = self_scores(lambda rows: influence.score(tiny_data.subset(rows)), 20, 6)
    torch.testing.assert_close(through_scores, influence.self_influence(), rtol=1e-10, atol=1e-12)
    assert bool((through_scores >= -1e-12).all())  # margin output + cross-entropy: non-negative


def test_loss_gradient_norms_match_an_autograd_loop(tiny_mlp, tiny_data):
    task = ClassificationTask()
    expected = []
    for x, y in zip(tiny_data.inputs, tiny_data.targets, strict=True):
        loss = task.loss(tiny_mlp(x.unsqueeze(0)).squeeze(0), y)
        grads = torch.autograd.grad(loss, list(tiny_mlp.parameters()))
        expected.append(sum(float(g.pow(2).sum()) for g in grads))
    norms = loss_gradient_norms(tiny_mlp, tiny_data, chunk_size=7)
    np.testing.assert_allclose(norms.numpy(), expected, rtol=1e-12)


def float64_mlp():
    return MLP(6, (8,), 3).double()


@pytest.fixture
def saved(tiny_data, tmp_path):
    """Four checkpoints of a float64 MLP trained on ``tiny_data``."""
    model = build_model(float64_mlp, seed=0, dtype=torch.float64)
    config = TrainConfig(epochs=4, batch_size=5, checkpoints=4)
    return train(model, tiny_data, config, seed=0, checkpoint_dir=tmp_path).checkpoints


def test_tracin_self_influence_sums_weighted_checkpoint_norms(tiny_data, saved):
    factory = float64_mlp
    expected = sum(
        c.segment_learning_rate * loss_gradient_norms(load_checkpoint(c, factory()), tiny_data)
        for c in saved
    )
    torch.testing.assert_close(tracin_self_influence(factory, saved, tiny_data), expected)
    with pytest.raises(ValueError, match="at least one checkpoint"):
        tracin_self_influence(factory, [], tiny_data)


def test_checkpoint_loss_is_the_mean_cross_entropy_over_checkpoints(tiny_data, saved):
    factory = float64_mlp
    by_hand = []
    for checkpoint in saved:
        logits = load_checkpoint(checkpoint, factory())(tiny_data.inputs).detach()
        by_hand.append(
            torch.nn.functional.cross_entropy(logits, tiny_data.targets, reduction="none")
        )
    expected = torch.stack(by_hand).mean(0)
    torch.testing.assert_close(checkpoint_loss(factory, saved, tiny_data, batch_size=7), expected)
    with pytest.raises(ValueError, match="at least one checkpoint"):
        checkpoint_loss(factory, [], tiny_data)
    outside = Examples(tiny_data.inputs, torch.full_like(tiny_data.targets, 5))  # no class 5
    with pytest.raises(ValueError, match="checkpoint losses hold NaN"):
        checkpoint_loss(factory, saved, outside)
