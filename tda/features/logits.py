r"""Per-class-logit features: the projected gradient of every logit, ``[b, C, k]``.

Datamodel matching predicts whole logit vectors, so each query point needs one feature per class:
:math:`\phi_c(x) = P^\top \nabla_\theta\, \text{logit}_c(x;\theta)`, with the *same* projection
:math:`P` as the base featurizer's training features (so TRAK's kernel applies unchanged). The
features are written to a split of their own, ``logit_split(split)``, of the base featurizer's
store:

    featurize(model, {logit_split("train"): train}, LogitFeaturizer(base, 10), store,
              checkpoint_id=...)
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor, nn

from tda.device import to_device_of
from tda.features.featurize import Featurizer, differentiated_parameters
from tda.features.gradient import FeatureBatch
from tda.grads import evaluation_mode
from tda.task import ClassLogit

_SUFFIX = ".logits"


def logit_split(split: str) -> str:
    """The store split holding the per-class features of ``split`` (e.g. ``"train.logits"``)."""
    return split + _SUFFIX


@dataclass(frozen=True)
class LogitFeaturizer:
    """The base featurizer's projection applied to each class logit's gradient.

    Args:
        base: a featurizer with ``task`` and ``function`` fields (:class:`GradientFeaturizer`,
            :class:`KroneckerFeaturizer`); its projector and parameter selection are kept.
        num_classes: number of logits :math:`C`.
    """

    base: Featurizer
    num_classes: int

    def __post_init__(self) -> None:
        if self.num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {self.num_classes}")
        if not hasattr(self.base, "task") or not hasattr(self.base, "function"):
            raise TypeError(f"{type(self.base).__name__} has no task to replace by class logits")

    @property
    def seed(self) -> int:
        """The base featurizer's seed."""
        return self.base.seed

    def with_seed(self, seed: int) -> LogitFeaturizer:
        """The same featurizer with the base projection reseeded."""
        return replace(self, base=self.base.with_seed(seed))

    def parameter_names(self, model: nn.Module) -> list[str] | None:
        """The base featurizer's differentiated parameters for ``model`` (None if it does not
        say)."""
        return differentiated_parameters(self.base, model)

    def config(self) -> dict:
        """The base configuration and the per-class output."""
        return {**self.base.config(), "output": "class_logits", "num_classes": self.num_classes}

    def __call__(self, model: nn.Module, inputs: Tensor, targets: Tensor) -> FeatureBatch:
        """Features ``[b, C, k]`` (and the base out-to-loss weights ``[b]``).

        Raises:
            ValueError: ``num_classes`` is not the model's number of logits (one example's
                forward pass tells), or any error of the base featurizer.
        """
        _check_logit_count(model, inputs, self.num_classes)
        per_class = [
            replace(self.base, task=ClassLogit(c), function="output")(model, inputs, targets)
            for c in range(self.num_classes)
        ]
        features = torch.stack([batch.features for batch in per_class], dim=1)
        return FeatureBatch(features=features, out_to_loss=per_class[0].out_to_loss)


@torch.no_grad()
def _check_logit_count(model: nn.Module, inputs: Tensor, num_classes: int) -> None:
    """Refuse ``num_classes`` other than the width of the model's logits: fewer would drop the
    last classes' features without a word."""
    with evaluation_mode(model):
        (first,) = to_device_of(model, inputs[:1])
        width = model(first).shape[-1]
    if width != num_classes:
        raise ValueError(
            f"LogitFeaturizer has num_classes={num_classes}, but the model gives {width} logits; "
            f"use num_classes={width}"
        )
