"""The small reference setting the unlearning tests share: an MLP 40-64-10 trained on MNIST-1D, a
loop with momentum and weight decay for mask tests, and loss gradients summed example by example."""

from functools import partial

import torch

from tda.data import Examples
from tda.models import MLP
from tda.task import ClassificationTask
from tda.training import TrainConfig
from unlearn import LoopConfig

FACTORY = partial(MLP, 40, (64,), 10)
TRAIN_CONFIG = TrainConfig(epochs=40, batch_size=32)

MOMENTUM_AND_DECAY = LoopConfig(
    epochs=3,
    batch_size=4,
    optimizer=partial(torch.optim.SGD, lr=0.1, momentum=0.9, weight_decay=0.1),
)


def summed_by_loop(model: torch.nn.Module, examples: Examples) -> list[torch.Tensor]:
    """The loss gradient summed over ``examples`` one example at a time, per parameter."""
    parameters = list(model.parameters())
    total = [torch.zeros_like(p) for p in parameters]
    for x, y in zip(examples.inputs, examples.targets, strict=True):
        loss = ClassificationTask().loss(model(x[None]), y[None]).sum()
        for accumulated, g in zip(total, torch.autograd.grad(loss, parameters), strict=True):
            accumulated += g
    return total
