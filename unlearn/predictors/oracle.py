r"""The oracle predictor: outputs of models really retrained without the forget set.

Oracle Matching (OM, Georgiev et al. 2024) fine-tunes towards these outputs; it is the upper
reference for datamodel matching (a perfect attribution method would predict them exactly).
For request seed :math:`s`, the oracle is the one retrained from seed
``first_seed + (s mod count)``; oracles are trained on demand (or loaded) per forget set by
:func:`unlearn.load_or_train_oracles`.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from torch import Tensor, nn

from tda.data.examples import Examples
from tda.fingerprint import array_fingerprint
from tda.models import build_model
from tda.training import TrainConfig
from unlearn.ensembles import load_or_train_oracles
from unlearn.methods.base import ForgetSplit
from unlearn.predictors.base import (
    Output,
    PredictorScope,
    architecture,
    check_output,
    model_outputs,
    training_set,
)


@dataclass
class OraclePredictor:
    """Outputs of models retrained on :math:`R` (one per seed in ``seeds``).

    Attributes:
        model_factory: builds an untrained model.
        data: the training set (or splits whose ``.train`` it is).
        config: the training recipe.
        first_seed: seed of the first oracle; oracles use ``first_seed .. first_seed + count - 1``
            (choose seeds the evaluation's own oracles do not use).
        count: number of oracles.
        root: where the oracles are kept (``root/forget-<hash>/seed-<s>``).
        output: ``"logits"`` or ``"margin"``.
    """

    model_factory: Callable[[], nn.Module]
    data: Any
    config: TrainConfig
    first_seed: int
    count: int
    root: str | os.PathLike
    output: Output = "logits"
    _oracles: dict[str, list[nn.Module]] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        check_output(self.output)
        if self.count < 1:
            raise ValueError(f"OraclePredictor needs at least one oracle, got count={self.count}")
        self.seeds = list(range(self.first_seed, self.first_seed + self.count))
        self._train: Examples = training_set(self.data)
        shape = architecture(build_model(self.model_factory, 0))  # global RNG untouched
        self.scope = PredictorScope(len(self._train), self._train.fingerprint(), shape)

    def check(self, model: nn.Module, split: ForgetSplit) -> None:
        self.scope.check(model, split)

    def audit_description(self) -> dict:
        """What the audit record says about this predictor."""
        return {"output": self.output, "seeds": self.seeds, "root": str(self.root)}

    def prepare(self, forget_indices: np.ndarray) -> None:
        """Train or load the oracles ahead of time.

        Args:
            forget_indices: every example the oracles are trained without: for a follow-up
                request, its forget set and what earlier requests removed (``S \\ R``).
        """
        self._models(forget_indices)

    def _models(self, removed: np.ndarray) -> list[nn.Module]:
        removed = np.sort(np.asarray(removed, dtype=np.int64))
        key = array_fingerprint(removed)
        if key not in self._oracles:
            group = load_or_train_oracles(
                self.model_factory, self._train, removed, self.config, self.seeds, self.root
            )
            self._oracles = {key: group.models}
        return self._oracles[key]

    def targets(self, model, examples, positions, split, *, seed) -> Tensor:
        # retrained on R: without F and without what earlier requests on the model removed
        removed = np.setdiff1d(np.arange(len(self._train)), split.retain_indices)
        oracle = self._models(removed)[seed % len(self.seeds)]
        return model_outputs(_like(oracle, model), examples, self.output)


def _like(oracle: nn.Module, model: nn.Module) -> nn.Module:
    """``oracle`` on ``model``'s device and dtype: a converted copy where they differ, so the
    cached oracle itself is never moved (moved in place to float32 and back, a float64 oracle
    would stay rounded for every later request)."""
    reference = next(model.parameters())
    placed = all(
        p.device == reference.device and p.dtype == reference.dtype for p in oracle.parameters()
    )
    return oracle if placed else copy.deepcopy(oracle).to(reference.device, reference.dtype)
