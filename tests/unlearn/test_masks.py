from functools import partial

import torch
from torch import nn

from tda.data import Examples
from tda.models import build_model
from unlearn import LoopConfig, Phase, WeightedLoss, unlearning_loop
from unlearn.masks import intersect_masks, pin, restore_frozen, zero_frozen_gradients


class TransposedLinear(nn.Module):
    """A linear map whose weight is a non-contiguous (transposed) parameter."""

    def __init__(self) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        weight = torch.randn(3, 6, generator=generator, dtype=torch.float64)
        self.weight = nn.Parameter(weight.t())  # [6, 3], strides (1, 6)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return inputs @ self.weight


def test_enforcement_writes_exactly_the_frozen_positions_in_any_layout():
    model = TransposedLinear()
    assert not model.weight.is_contiguous()
    trainable = torch.rand(6, 3, generator=torch.Generator().manual_seed(1)) < 0.5
    before = model.weight.detach().clone()
    pinned = pin(model, {"weight": trainable})
    model.weight.grad = torch.full((3, 6), float("nan"), dtype=torch.float64).t()
    zero_frozen_gradients(pinned)
    assert (model.weight.grad[~trainable] == 0).all() and model.weight.grad[trainable].isnan().all()
    with torch.no_grad():
        model.weight.add_(1.0)
    restore_frozen(pinned)
    assert torch.equal(model.weight.detach()[~trainable], before[~trainable])
    assert torch.equal(model.weight.detach()[trainable], before[trainable] + 1.0)


def test_a_non_contiguous_masked_parameter_keeps_its_frozen_weights_bitwise(tiny_data):
    model = TransposedLinear()
    trainable = torch.rand(6, 3, generator=torch.Generator().manual_seed(1)) < 0.5
    before = model.weight.detach().clone().view(torch.int64)
    optimizer = partial(torch.optim.SGD, lr=0.1, momentum=0.9, weight_decay=0.1)
    phase = Phase("retain", {"retain": tiny_data}, WeightedLoss({"retain": 1.0}))
    unlearning_loop(model, [phase], LoopConfig(3, 6, optimizer), mask={"weight": trainable})
    after = model.weight.detach().clone().view(torch.int64)
    assert torch.equal(after[~trainable], before[~trainable])
    assert (after[trainable] != before[trainable]).all()


class SparseEmbeddingBag(nn.Module):
    """Token ids [n, 3] -> mean of their embeddings (sparse gradients) -> 3 logits."""

    def __init__(self) -> None:
        super().__init__()
        self.embedding = nn.Embedding(6, 4, sparse=True)
        self.head = nn.Linear(4, 3)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.embedding(tokens).mean(1))


def test_masked_out_weights_with_sparse_gradients_stay_bitwise_unchanged():
    model = build_model(SparseEmbeddingBag, 0, torch.float64)
    generator = torch.Generator().manual_seed(0)
    data = Examples(
        torch.randint(0, 6, (12, 3), generator=generator),
        torch.randint(0, 3, (12,), generator=generator),
    )
    trainable = torch.rand(6, 4, generator=generator) < 0.5
    before = model.embedding.weight.detach().clone().view(torch.int64)
    optimizer = partial(torch.optim.SGD, lr=0.5, momentum=0.9)
    phase = Phase("retain", {"retain": data}, WeightedLoss({"retain": 1.0}))
    mask = {"embedding.weight": trainable}
    unlearning_loop(model, [phase], LoopConfig(3, 4, optimizer), mask=mask)  # raised: no reshape
    after = model.embedding.weight.detach().clone().view(torch.int64)
    assert torch.equal(after[~trainable], before[~trainable])
    assert (after[trainable] != before[trainable]).any()


def test_intersecting_with_no_mask_returns_the_other_even_when_it_names_nothing():
    frozen = {"weight": torch.tensor([True, False])}
    assert intersect_masks({}, None) == {} and intersect_masks(None, {}) == {}
    assert intersect_masks(None, None) is None
    assert intersect_masks(frozen, None) == frozen and intersect_masks(None, frozen) == frozen
