"""Train / test splits of the reference data sets."""

from __future__ import annotations

from dataclasses import dataclass

from tda.arguments import check_positive_int
from tda.data.examples import Examples, first_flagged_example
from tda.task import outside_classes


@dataclass(frozen=True)
class DataSplits:
    """A training split and a held-out test split with the number of classes.

    ``num_classes`` is the width of a model's output for the data: the classes of integer labels
    (targets ``[n]``), or a language model's vocabulary (targets ``[n, T]``).

    Raises:
        ValueError: ``num_classes`` is not a positive integer, or a split's integer labels
            (targets ``[n]``) include one outside ``0..num_classes-1``.
    """

    train: Examples
    test: Examples
    num_classes: int

    def __post_init__(self) -> None:
        check_positive_int("num_classes", self.num_classes)
        for split in ("train", "test"):
            _check_labels(split, getattr(self, split), self.num_classes)

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one input."""
        return tuple(self.train.inputs.shape[1:])


def _check_labels(split: str, examples: Examples, num_classes: int) -> None:
    """Refuse integer labels ``[n]`` outside ``0..num_classes-1``; other targets (a language
    model's ``[n, T]`` tokens, a regression's floats) are not class labels and pass."""
    targets = examples.targets
    if targets.dim() != 1 or targets.is_floating_point() or targets.is_complex():
        return
    row = first_flagged_example(outside_classes(targets, num_classes))
    if row is not None:
        raise ValueError(
            f"{split} label {int(targets[row])} of example {row} is outside the classes "
            f"0..{num_classes - 1} (num_classes={num_classes}); pass the number of classes "
            "the labels take, or map the labels to 0..num_classes-1 first"
        )
