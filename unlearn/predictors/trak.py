r"""Predictor from TRAK scores over an ensemble's feature store (DMM's attribution half).

The effect of the forget set on training point :math:`x` is TRAK's summed score,
:math:`\sum_{i\in F}\tau(x)_i`, from per-class-logit features (``output="logits"``: the split
``train.logits``, see :mod:`tda.features.logits`) or margin features (``output="margin"``: the
``train`` split itself). With ``retain_kernel`` the group's effect is TRAK's one-step Newton
estimate of removing it together (the kernel of :math:`S \setminus F`, see
:meth:`tda.methods.TRAK.score_group`): the sum of single-example effects misses that removing a
whole class also removes the curvature only that class supplied, and underestimates its effect
many times over. :func:`trak_predictor` builds everything resumably: the ensemble, its features
and the fitted TRAK.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
from torch import Tensor, nn

from tda.data.examples import Examples
from tda.ensemble import load_member, store_id, train_ensemble
from tda.features import LogitFeaturizer, featurize, logit_split, open_feature_store
from tda.features.featurize import Featurizer
from tda.methods.trak import TRAK
from tda.outputs import logits_of
from tda.training import TrainConfig
from unlearn.predictors.base import (
    Output,
    PredictorScope,
    ShiftPredictor,
    architecture,
    training_set,
)


@dataclass
class TRAKPredictor(ShiftPredictor):
    """Shift outputs by TRAK's summed forget-set scores.

    Attributes:
        trak: a fitted :class:`tda.methods.TRAK` whose training split is the training set; for
            ``output="logits"`` its store must also hold ``logit_split(trak.split)``.
        retain_kernel: score the forget set against the kernel of the retained examples.
    """

    trak: TRAK | None = None
    retain_kernel: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.trak is None or self.trak.store is None:
            raise ValueError("TRAKPredictor needs a fitted TRAK (call TRAK().fit(store) first)")
        splits = self.trak.store.splits()
        size = splits[self.trak.split]
        if size != self.scope.train_size:
            raise ValueError(
                f"the TRAK store has {size} training rows, not {self.scope.train_size}"
            )
        if self.output == "logits":
            _check_logit_split(self.trak, splits)

    def settings(self) -> dict:
        return {
            "damping": self.trak.damping,
            "gauss_newton": self.trak.gauss_newton,
            "checkpoints": list(self.trak.checkpoints),
            "store": str(self.trak.store.root),
            "store_fingerprint": self.trak.store.fingerprint(),  # a store rebuilt there differs
            "retain_kernel": self.retain_kernel,
        }

    def effect(self, forget_indices: np.ndarray) -> Tensor:
        queries = logit_split(self.trak.split) if self.output == "logits" else self.trak.split
        return self.trak.score_group(queries, forget_indices, retain_kernel=self.retain_kernel)


def _check_logit_split(trak: TRAK, splits: dict[str, int]) -> None:
    """Refuse a store without the per-class features that ``output="logits"`` reads."""
    needed, rows = logit_split(trak.split), splits[trak.split]
    if needed not in splits:
        raise ValueError(
            f"output='logits' reads the per-class features of split {trak.split!r} (split "
            f"{needed!r}), which the TRAK store at {trak.store.root} does not hold (it has "
            f"{sorted(splits)}); featurize them with LogitFeaturizer (trak_predictor does) or "
            "use output='margin'"
        )
    if splits[needed] != rows:
        raise ValueError(
            f"split {needed!r} of the TRAK store has {splits[needed]} rows but split "
            f"{trak.split!r} has {rows}: they must hold the same training points"
        )


def trak_predictor(
    model_factory,
    data: Any,
    config: TrainConfig,
    models: int,
    models_root: str | os.PathLike,
    featurizer: Featurizer,
    store_root: str | os.PathLike,
    *,
    damping: float = 0.1,
    gauss_newton: bool = True,
    retain_kernel: bool = False,
    output: Output = "logits",
    scale: float = 1.0,
    forget_scale: float | None = None,
    progress: bool = False,
) -> TRAKPredictor:
    """Train (or load) ``models`` ensemble members, featurize them and fit TRAK; resumable.

    Args:
        model_factory: builds an untrained model (member ``s`` is trained from seed ``s``).
        data: the training set, or splits whose ``.train`` is the training set.
        config: the training recipe of the members (that of the model to unlearn).
        models: :math:`M`, members ``0 .. M-1`` (shared with :func:`tda.ensemble.train_ensemble`
            users of ``models_root``, e.g. the unlearning benchmark's originals).
        models_root: where the members live.
        featurizer: projection of the features (its seed and size define the store).
        store_root: the feature store (splits ``train`` and, for logits, ``train.logits``).
        damping: TRAK's relative damping.
        gauss_newton: weight TRAK's kernel by the loss curvature, so effects come out in output
            units (see :class:`tda.methods.TRAK`); on by default since sizes matter here.
        retain_kernel: predict the forget set's removal together, from the kernel of the
            retained examples (see :class:`TRAKPredictor`).
        output: ``"logits"`` or ``"margin"``.
        scale, forget_scale: factors on TRAK's effect on retain and forget points (see
            :class:`~unlearn.predictors.ShiftPredictor`).
    """
    if models < 1:
        raise ValueError(f"models must be at least 1, got {models}")
    train = training_set(data)
    members = train_ensemble(
        model_factory, train, config, range(models), models_root, progress=progress
    )
    store = open_feature_store(store_root, featurizer)
    checkpoints = []
    for seed in range(models):
        final = members[seed][-1]
        model, checkpoint_id = load_member(model_factory, final), store_id(seed, final)
        splits = {"train": (featurizer, train)}
        if output == "logits":
            classes = _num_classes(model, train)
            splits[logit_split("train")] = (LogitFeaturizer(featurizer, classes), train)
        for split, (split_featurizer, examples) in splits.items():
            featurize(
                model,
                {split: examples},
                split_featurizer,
                store,
                checkpoint_id=checkpoint_id,
                progress=progress,
            )
        checkpoints.append(checkpoint_id)
    trak = TRAK(damping=damping, gauss_newton=gauss_newton).fit(store, checkpoints=checkpoints)
    scope = PredictorScope(len(train), train.fingerprint(), architecture(model))
    return TRAKPredictor(
        scope=scope,
        output=output,
        scale=scale,
        forget_scale=forget_scale,
        trak=trak,
        retain_kernel=retain_kernel,
    )


def _num_classes(model: nn.Module, train: Examples) -> int:
    return logits_of(model, train.subset(np.arange(1))).shape[-1]
