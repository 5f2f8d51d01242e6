r"""A predictor's prediction written as a model: the original with its final layer replaced.

The head predictors (:mod:`unlearn.predictors.head`, :mod:`unlearn.predictors.head_difference`)
predict the retrained outputs as :math:`\hat f(x) = \hat W\phi(x) + \hat b` on the original's
frozen features :math:`\phi`: exactly the outputs of the original with its final layer set to
:math:`(\hat W, \hat b)`. That model makes DMM's matching loss zero on every point, so it is the
matching objective's global minimum, reached without fine-tuning
(``DatamodelMatching(matching="exact")``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor, nn

from unlearn.masks import Mask, check_mask
from unlearn.methods.base import ForgetSplit


@dataclass(frozen=True)
class LayerEdit:
    """New values for one ``nn.Linear`` layer of a model.

    Attributes:
        name: the layer's module name.
        weight: its new weight ``[C, d]`` (float64; cast to the layer's dtype when written).
        bias: its new bias ``[C]``, or ``None`` for a layer without one.
    """

    name: str
    weight: Tensor
    bias: Tensor | None


class LayerEditPredictor(Protocol):
    """A predictor whose predictions are the outputs of the model with one layer replaced."""

    def layer_edit(self, model: nn.Module, split: ForgetSplit) -> LayerEdit:
        """The layer values whose outputs are this predictor's targets for ``split``."""
        ...


def apply_layer_edit(model: nn.Module, edit: LayerEdit, mask: Mask | None = None) -> nn.Module:
    """Write ``edit`` into ``model`` in place and return it.

    Raises:
        ValueError: ``mask`` (or ``requires_grad=False``) freezes a weight of the edited layer,
            which the edit would change.
        FloatingPointError: the edit holds a non-finite value (``model`` is left as it was).
    """
    values = [edit.weight] if edit.bias is None else [edit.weight, edit.bias]
    if not all(bool(torch.isfinite(value).all()) for value in values):
        raise FloatingPointError(f"the edit of layer {edit.name!r} holds non-finite values")
    layer = dict(model.named_modules())[edit.name]
    frozen = _frozen(model, edit.name, mask)
    if frozen:
        raise ValueError(
            f"exact matching replaces layer {edit.name!r}, but {', '.join(frozen)} is frozen "
            "(by the mask or requires_grad=False); use matching='fine_tune'"
        )
    with torch.no_grad():
        layer.weight.copy_(edit.weight.to(layer.weight.dtype))
        if edit.bias is not None:
            layer.bias.copy_(edit.bias.to(layer.bias.dtype))
    return model


def _frozen(model: nn.Module, name: str, mask: Mask | None) -> list[str]:
    """The parameters of layer ``name`` that ``mask`` or ``requires_grad=False`` freezes, in
    whole or in part."""
    trainable = {} if mask is None else check_mask(model, mask)
    frozen = []
    for key, parameter in dict(model.named_modules())[name].named_parameters():
        full = f"{name}.{key}" if name else key
        if not parameter.requires_grad or not bool(trainable.get(full, torch.tensor(True)).all()):
            frozen.append(full)
    return frozen
