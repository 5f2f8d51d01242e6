r"""Exact retraining: the oracle :math:`\theta_R = \mathrm{train}(\theta_0, R)` from scratch.

Every approximate unlearner is measured against it, and it is itself the method of choice when
its cost is acceptable. With the same initialisation seed, training configuration, task and seed as
a direct :func:`tda.train` call on :math:`R`, it gives bitwise the same weights on CPU.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

from torch import nn

from tda.models import build_model
from tda.task import ClassificationTask, Task
from tda.training import TrainConfig, train
from unlearn.masks import Mask
from unlearn.methods.base import ForgetSplit


def _check_same_architecture(fresh: nn.Module, model: nn.Module) -> None:
    fresh_shapes = {k: tuple(v.shape) for k, v in fresh.state_dict().items()}
    model_shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    if fresh_shapes != model_shapes:
        raise ValueError(
            "model_factory builds a different architecture from the model being unlearned "
            f"({len(fresh_shapes)} vs {len(model_shapes)} tensors or different shapes)"
        )


@dataclass(frozen=True)
class ExactRetraining:
    """Retrain from a fresh initialisation on the retain set (the oracle).

    The retrained model is returned in the training mode of the model it replaces, as the other
    methods return theirs.

    Attributes:
        model_factory: builds an untrained model of the same architecture (e.g. ``tda.MLP``).
        config: training configuration, normally the one the original model was trained with.
        init_seed: seed of the fresh initialisation (:func:`tda.build_model`); ``None`` uses the
            request's seed.
        task: the loss trained on, normally the original model's (default cross-entropy; a
            language model's token NLL with :class:`~tda.task.LanguageModelingTask`).
    """

    model_factory: Callable[[], nn.Module]
    config: TrainConfig = field(default_factory=TrainConfig)
    init_seed: int | None = None
    task: Task = field(default_factory=ClassificationTask)
    requires_forget_set: ClassVar[bool] = False

    def unlearn(
        self, model: nn.Module, split: ForgetSplit, *, seed: int, mask: Mask | None = None
    ) -> nn.Module:
        if mask is not None:
            raise ValueError("exact retraining trains every weight from scratch; it takes no mask")
        reference = next(model.parameters())
        init_seed = seed if self.init_seed is None else self.init_seed
        fresh = build_model(self.model_factory, init_seed, dtype=reference.dtype)
        fresh = fresh.to(reference.device)
        _check_same_architecture(fresh, model)
        retrained = train(fresh, split.retain, self.config, seed=seed, task=self.task).model
        return retrained.train(model.training)  # as every loop method: the mode it was given
