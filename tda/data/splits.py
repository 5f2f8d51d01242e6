"""Train / test splits of the reference data sets."""

from __future__ import annotations

from dataclasses import dataclass

from tda.data.examples import Examples


@dataclass(frozen=True)
class DataSplits:
    """A training split and a held-out test split with the number of classes."""

    train: Examples
    test: Examples
    num_classes: int

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one input."""
        return tuple(self.train.inputs.shape[1:])
