"""Clocks that time the work, not torch's one-time start-up."""

from __future__ import annotations

import functools

import torch


@functools.cache
def warm_up_torch() -> None:
    """Pay the process's one-time start-up before a clock runs.

    Torch imports ``torch._dynamo`` (about 1 s) when the first optimiser is built; without this,
    that second is timed as part of whatever trains or unlearns first in the process (the first
    oracle's retraining, the first unlearning request). Later calls do nothing.
    """
    parameter = torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.SGD([parameter], lr=0.0)
    parameter.sum().backward()
    optimizer.step()  # the first step's own lazy imports too
