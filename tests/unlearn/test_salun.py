import copy
import math
from functools import partial

import pytest
import torch

from tda.fingerprint import model_fingerprint
from tda.task import ClassificationTask
from unlearn import (
    ForgetSplit,
    LoopConfig,
    RandomLabels,
    SalUn,
    UnlearningRequest,
    saliency_mask,
    summed_gradient,
    top_fraction_mask,
)

MOMENTUM_AND_DECAY = LoopConfig(
    epochs=3,
    batch_size=4,
    optimizer=partial(torch.optim.SGD, lr=0.1, momentum=0.9, weight_decay=0.1),
)


def test_the_summed_gradient_equals_a_loop_over_examples(tiny_mlp, tiny_data):
    expected = {name: torch.zeros_like(p) for name, p in tiny_mlp.named_parameters()}
    for x, y in zip(tiny_data.inputs, tiny_data.targets, strict=True):
        loss = ClassificationTask().loss(tiny_mlp(x.unsqueeze(0)), y.unsqueeze(0)).sum()
        for (name, _), g in zip(
            tiny_mlp.named_parameters(),
            torch.autograd.grad(loss, list(tiny_mlp.parameters())),
            strict=True,
        ):
            expected[name] += g
    computed = summed_gradient(tiny_mlp, tiny_data, batch_size=7)
    for name in expected:
        torch.testing.assert_close(computed[name], expected[name], rtol=0, atol=1e-12)
    assert all(p.grad is None for p in tiny_mlp.parameters())


@pytest.mark.parametrize("fraction", [0.01, 0.3, 1.0])
def test_the_saliency_mask_keeps_the_largest_gradients_globally(tiny_mlp, tiny_data, fraction):
    mask = saliency_mask(tiny_mlp, tiny_data, fraction)
    magnitude = torch.cat(
        [g.abs().flatten() for g in summed_gradient(tiny_mlp, tiny_data).values()]
    )
    chosen = torch.cat([m.flatten() for m in mask.values()])
    assert int(chosen.sum()) == math.ceil(fraction * 83)
    if fraction < 1:
        assert magnitude[chosen].min() >= magnitude[~chosen].max()
    with pytest.raises(ValueError, match=r"must be in \(0, 1\]"):
        top_fraction_mask({"w": torch.ones(3)}, 0.0)


def test_salun_is_random_labels_inside_the_mask_and_leaves_the_rest_bitwise(tiny_mlp, tiny_data):
    request = UnlearningRequest([0, 3, 5, 8], train_size=len(tiny_data), seed=1)
    split = ForgetSplit.of(tiny_data, request)
    mask = saliency_mask(tiny_mlp, split.forget, 0.4)
    before = {name: p.detach().clone() for name, p in tiny_mlp.named_parameters()}
    salun = SalUn(MOMENTUM_AND_DECAY, fraction=0.4).unlearn(copy.deepcopy(tiny_mlp), split, seed=1)
    by_hand = RandomLabels(MOMENTUM_AND_DECAY).unlearn(tiny_mlp, split, seed=1, mask=mask)
    assert model_fingerprint(salun) == model_fingerprint(by_hand)
    for name, p in salun.named_parameters():
        frozen = ~mask[name]
        assert torch.equal(
            p.detach()[frozen].view(torch.int64), before[name][frozen].view(torch.int64)
        )
        assert (p.detach()[mask[name]] != before[name][mask[name]]).all()


def test_salun_intersects_its_mask_with_the_callers(tiny_mlp, tiny_data):
    split = ForgetSplit.of(tiny_data, UnlearningRequest([1, 2], train_size=len(tiny_data)))
    caller = {"2.weight": torch.zeros_like(tiny_mlp.get_parameter("2.weight"), dtype=torch.bool)}
    before = tiny_mlp.get_parameter("2.weight").detach().clone()
    unlearned = SalUn(MOMENTUM_AND_DECAY, fraction=1.0).unlearn(
        tiny_mlp, split, seed=0, mask=caller
    )
    assert torch.equal(unlearned.get_parameter("2.weight"), before)
    with pytest.raises(ValueError, match="fraction must be in"):
        SalUn(fraction=1.5)
