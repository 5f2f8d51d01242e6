import copy
import math
from functools import partial

import pytest
import torch

from tda.task import ClassificationTask
from unlearn import (
    DecayingL1Loss,
    FineTune,
    ForgetSplit,
    L1Sparse,
    LoopConfig,
    Phase,
    UnlearningRequest,
    unlearning_loop,
)


def test_the_penalty_decays_linearly_to_zero_over_the_epochs(tiny_mlp, tiny_data):
    loss = DecayingL1Loss(strength=0.2)
    seen = []

    def recording(model, batches, progress):
        value = loss(model, batches, progress)
        fit = (
            ClassificationTask()
            .loss(model(batches["retain"].inputs), batches["retain"].targets)
            .mean()
        )
        l1 = sum(p.abs().sum() for p in model.parameters())
        seen.append((loss.strength_at(progress), float(((value - fit) / l1).detach())))
        return value

    unlearning_loop(
        tiny_mlp, [Phase("retain", {"retain": tiny_data}, recording)], LoopConfig(4, 20)
    )
    assert [s for s, _ in seen] == pytest.approx([0.2, 0.15, 0.1, 0.05])
    assert [measured for _, measured in seen] == pytest.approx([0.2, 0.15, 0.1, 0.05], rel=1e-9)


def _l1_norm(model) -> float:
    return float(sum(p.detach().abs().sum() for p in model.parameters()))


def test_l1_sparse_shrinks_the_weights_compared_with_fine_tuning(tiny_mlp, tiny_data):
    split = ForgetSplit.of(tiny_data, UnlearningRequest([0, 1], train_size=len(tiny_data)))
    loop = LoopConfig(epochs=5, batch_size=6, optimizer=partial(torch.optim.SGD, lr=0.05))
    sparse = L1Sparse(loop, strength=0.05).unlearn(copy.deepcopy(tiny_mlp), split, seed=0)
    plain = FineTune(loop).unlearn(copy.deepcopy(tiny_mlp), split, seed=0)
    unpenalised = L1Sparse(loop, strength=0.0).unlearn(tiny_mlp, split, seed=0)
    assert _l1_norm(sparse) < _l1_norm(plain) - 0.1
    torch.testing.assert_close(unpenalised.state_dict(), plain.state_dict(), rtol=0, atol=1e-14)
    with pytest.raises(ValueError, match="strength must be non-negative"):
        L1Sparse(strength=-1.0)


@pytest.mark.parametrize("strength", [math.nan, math.inf])
def test_l1_sparse_refuses_a_strength_that_is_not_finite(strength):
    # accepted, it made every loss NaN / infinite: a "diverged" run, which tuning skips silently
    with pytest.raises(ValueError, match="strength must be non-negative and finite"):
        L1Sparse(strength=strength)
