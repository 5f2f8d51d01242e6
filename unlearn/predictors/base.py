r"""Output predictors: what a model retrained without the forget set would output.

Datamodel matching (:class:`~unlearn.DatamodelMatching`) fine-tunes a model towards predicted
outputs. A predictor gives, for training points :math:`x` (forget and retain points, named by their
positions in :math:`S`), the predicted output of the model retrained on :math:`S \setminus F`:

- attribution-based predictors (TRAK, datamodels, any score matrix) shift the original's outputs by
  the predicted effect of the forget set,
  :math:`\hat f(x) = f(x;\theta_o) - s\sum_{i \in F} \beta_i(x)` (a scale :math:`s` calibrates
  scores that are right in direction but not in size);
- the oracle predictor reads real retrained models (Oracle Matching, the upper reference).

``output`` is ``"logits"`` (whole logit vectors ``[n, C]``) or ``"margin"`` (``[n]``).
A predictor is built for one training set and one architecture and refuses any other.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import numpy as np
import torch
from torch import Tensor, nn

from tda.data.examples import Examples, as_examples
from tda.fingerprint import array_fingerprint, config_fingerprint
from tda.indices import integer_positions
from tda.outputs import logits_of
from tda.task import ClassificationTask
from unlearn.methods.base import ForgetSplit

Output = Literal["logits", "margin"]
OUTPUTS = ("logits", "margin")


def architecture(model: nn.Module) -> str:
    """A digest of the model's parameter names and shapes (not its values)."""
    shapes = [[name, list(p.shape)] for name, p in model.named_parameters()]
    return config_fingerprint({"parameters": shapes})[:16]


def model_outputs(model: nn.Module, examples: Examples, output: Output) -> Tensor:
    """The model's logits ``[n, C]`` or margins ``[n]`` on ``examples`` (eval mode, no grad)."""
    logits = logits_of(model, examples)
    if output == "logits":
        return logits
    return ClassificationTask().output(logits, examples.targets)


def training_set(data: Any) -> Examples:
    """``data`` itself, or its ``.train`` split (e.g. :func:`tda.data.load_mnist1d`'s result)."""
    return as_examples(getattr(data, "train", data))


def check_scale(name: str, value: float | None) -> None:
    """Refuse a scale that is negative, infinite or NaN (``None``: unset, allowed)."""
    if value is not None and not 0 <= value < math.inf:
        raise ValueError(f"{name} must be non-negative and finite, got {value}")


def check_output(output: str) -> None:
    """Refuse an unknown output kind."""
    if output not in OUTPUTS:
        raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")


@dataclass(frozen=True)
class PredictorScope:
    """The training set and architecture a predictor was built for.

    Attributes:
        train_size: number of training examples the predictor scores.
        train_fingerprint: ``Examples.fingerprint()`` of that training set (``None``: unchecked).
        architecture: :func:`architecture` of the models it was built from (``None``: unchecked).
    """

    train_size: int
    train_fingerprint: str | None = None
    architecture: str | None = None

    def check(self, model: nn.Module, split: ForgetSplit) -> None:
        """Raise ``ValueError`` unless the predictor was built for ``model`` and ``split``."""
        if self.architecture is not None and architecture(model) != self.architecture:
            raise ValueError(
                f"the predictor was built for models of architecture {self.architecture} but the "
                f"model to unlearn has architecture {architecture(model)}; build the predictor "
                "from models of the same kind"
            )
        if split.train_size is not None and split.train_size != self.train_size:
            raise ValueError(
                f"the predictor scores {self.train_size} training examples but the request's "
                f"training set has {split.train_size}: its forget points have no scores"
            )
        if None not in (split.train_fingerprint, self.train_fingerprint) and (
            split.train_fingerprint != self.train_fingerprint
        ):
            raise ValueError(
                f"the predictor was built on training set {self.train_fingerprint[:12]}... but the "
                f"request's training set is {split.train_fingerprint[:12]}...; refusing to "
                "predict for other data"
            )
        outside = split.forget_indices[split.forget_indices >= self.train_size]
        if len(outside):
            raise ValueError(
                f"forget point {int(outside[0])} has no scores: the predictor covers "
                f"{self.train_size} training examples"
            )


class OutputPredictor(Protocol):
    """Predicts the outputs of the model retrained without a forget set, on training points."""

    output: Output

    def check(self, model: nn.Module, split: ForgetSplit) -> None:
        """Raise ``ValueError`` if the predictor was built for another model or training set."""
        ...

    def prepare(self, forget_indices: np.ndarray) -> None:
        """Do the per-forget-set work ahead of time (so it can be timed apart); optional."""
        ...

    def targets(
        self,
        model: nn.Module,
        examples: Examples,
        positions: np.ndarray,
        split: ForgetSplit,
        *,
        seed: int,
    ) -> Tensor:
        """Predicted outputs ``[len(positions), C]`` (or ``[len(positions)]`` for margins).

        Args:
            model: the original model (the outputs being shifted).
            examples: the training examples at ``positions``.
            positions: their positions in the training set.
            split: the request's forget / retain split.
            seed: the request seed.
        """
        ...


@dataclass
class ShiftPredictor:
    r"""Base of the attribution-based predictors: :math:`\hat f = f(\theta_o) - \text{effect}_F`.

    Subclasses implement :meth:`effect`, the summed scores of the forget set for every training
    point, ``[n_train, C]`` or ``[n_train]``; it is cached per forget set, output and
    :meth:`settings` (the scales are applied on every call, so changing them needs no new effect).

    Attributes:
        scope: the training set and architecture the predictor serves.
        output: ``"logits"`` or ``"margin"``.
        scale: factor (non-negative) on the effect on retain points. Attribution scores are
            often right in direction but not in size; :func:`~unlearn.predictors.calibrate` fits
            it.
        forget_scale: factor on the effect on the forget points themselves (``None``: ``scale``).
            Linearised estimates underestimate how much a point's own output depends on it
            (memorisation), so it is usually much larger than ``scale``.
    """

    scope: PredictorScope
    output: Output = "logits"
    scale: float = 1.0
    forget_scale: float | None = None
    _cache: dict[str, Tensor] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        check_output(self.output)
        self.check_scales()

    def check_scales(self) -> None:
        """Raise ``ValueError`` unless both scales are non-negative and finite."""
        check_scale("scale", self.scale)
        check_scale("forget_scale", self.forget_scale)

    def check(self, model: nn.Module, split: ForgetSplit) -> None:
        self.scope.check(model, split)

    def audit_description(self) -> dict:
        """What the audit record says about this predictor (not its arrays)."""
        scope = dataclasses.asdict(self.scope)
        scales = {"scale": self.scale, "forget_scale": self.forget_scale}
        return {"output": self.output, **scales, "scope": scope, **self.settings()}

    def settings(self) -> dict:
        """The subclass's own settings for :meth:`audit_description`."""
        return {}

    def effect(self, forget_indices: np.ndarray) -> Tensor:
        """:math:`\\sum_{i \\in F}\\beta_i(x)` for every training point ``x``."""
        raise NotImplementedError

    def prepare(self, forget_indices: np.ndarray) -> None:
        self.forget_effect(forget_indices)

    def forget_effect(self, forget_indices: Sequence[int] | np.ndarray) -> Tensor:
        """:meth:`effect` of ``forget_indices``, computed once per forget set and checked finite.

        Raises:
            ValueError: indices that are not integers (a boolean mask), lie outside the
                training set the predictor scores (``-1`` is not the last point) or repeat.
        """
        forget = np.sort(self._forget_positions(forget_indices))
        # settings changed in place (e.g. retain_kernel) must not be served the old effect
        key = config_fingerprint(
            {"forget": array_fingerprint(forget), "output": self.output, **self.settings()}
        )
        if key not in self._cache:
            effect = self.effect(forget)
            bad = ~torch.isfinite(effect.reshape(len(effect), -1)).all(dim=1)
            if bool(bad.any()):
                raise ValueError(
                    f"the predicted effect of the forget set is not finite at training point "
                    f"{int(bad.nonzero()[0])}: those points have no scores"
                )
            self._cache = {key: effect}  # one forget set at a time: bounded memory
        return self._cache[key]

    def _forget_positions(self, forget_indices: Sequence[int] | np.ndarray) -> np.ndarray:
        forget = integer_positions(forget_indices, "forget indices").reshape(-1)
        size = self.scope.train_size
        if (forget < 0).any():
            raise ValueError(
                f"forget index {int(forget[forget < 0][0])} is out of range for the predictor's "
                f"{size} training examples"
            )
        if (forget >= size).any():
            raise ValueError(
                f"forget point {int(forget[forget >= size][0])} has no scores: the predictor "
                f"covers {size} training examples (out of range)"
            )
        values, counts = np.unique(forget, return_counts=True)
        if (counts > 1).any():
            raise ValueError(f"forget index {int(values[counts > 1][0])} is repeated")
        return forget

    def scaled_effect(self, forget_indices: np.ndarray, positions: np.ndarray) -> Tensor:
        """The effect at ``positions`` times ``forget_scale`` (forget points) or ``scale``.

        Raises:
            ValueError: a scale set after construction (e.g. by hand) that is negative, infinite
                or NaN.
        """
        self.check_scales()
        effect = self.forget_effect(forget_indices)[torch.as_tensor(positions)]
        forget_scale = self.scale if self.forget_scale is None else self.forget_scale
        is_forget = torch.as_tensor(np.isin(positions, forget_indices))
        factors = torch.where(is_forget, forget_scale, self.scale).to(effect.dtype)
        return effect * factors.reshape(-1, *([1] * (effect.dim() - 1)))

    def targets(self, model, examples, positions, split, *, seed):
        shift = self.scaled_effect(split.forget_indices, positions)
        outputs = model_outputs(model, examples, self.output)
        return outputs - shift.to(outputs.device, outputs.dtype)
