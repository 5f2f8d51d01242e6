"""``Examples``: the in-memory form of a labelled data set, and adapters from user data.

Accepts torch ``Dataset`` / ``DataLoader`` objects yielding ``(input, target)`` pairs and
Hugging Face ``datasets.Dataset`` objects (columns named by the caller).

Dtype policy: the library never casts examples to a model's dtype. The entry points that run a
model on examples (training, per-sample gradients, featurizing, curvature fits, NTKs) call
:func:`check_input_dtype` before any work, which refuses floating-point inputs of another dtype
than the model's, naming both and the fix; integer inputs (token ids) pass.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, IterableDataset, SequentialSampler

from tda.fingerprint import array_fingerprint


@dataclass(frozen=True)
class Examples:
    """Inputs ``[n, ...]`` and integer targets ``[n]`` of one data split.

    Tensors are kept as they are. Arrays (numpy, or anything ``np.asarray`` reads) become tensors
    of their dtype, but integer (and boolean) targets become int64, the class indices the losses
    take; float targets (a regression's) stay float. :func:`as_examples` reads an ``(inputs,
    targets)`` pair the same way, besides checking that targets are classes, and reads other
    data (a ``Dataset``, a ``DataLoader``).
    """

    inputs: Tensor
    targets: Tensor

    def __post_init__(self) -> None:
        if not isinstance(self.inputs, Tensor):  # else the first .to() fails far from here
            object.__setattr__(self, "inputs", _tensor(self.inputs))
        if not isinstance(self.targets, Tensor):
            object.__setattr__(self, "targets", _array_targets(self.targets))
        if len(self.inputs) != len(self.targets):
            raise ValueError(f"{len(self.inputs)} inputs but {len(self.targets)} targets")

    def __len__(self) -> int:
        return len(self.inputs)

    def subset(self, indices: Sequence[int] | np.ndarray | Tensor) -> Examples:
        """The examples at ``indices`` (integer positions or a boolean mask).

        Raises:
            TypeError: non-integer (e.g. float) indices, which would otherwise be truncated.
            ValueError: a single index rather than a sequence of them, a mask of another length,
                or an index outside ``[0, n)``.
        """
        index = indices.cpu() if isinstance(indices, Tensor) else torch.as_tensor(np.array(indices))
        if index.ndim != 1:  # a bare 3 would give examples without their example axis
            raise ValueError(
                f"indices must be one-dimensional (e.g. [3]), got shape {list(index.shape)}"
            )
        if index.dtype != torch.bool:
            if index.numel() and (index.is_floating_point() or index.is_complex()):
                raise TypeError(f"indices must be integers or a boolean mask, got {index.dtype}")
            index = index.long()
        if index.dtype == torch.bool:
            if len(index) != len(self):
                raise ValueError(f"mask has {len(index)} entries for {len(self)} examples")
            index = index.nonzero().squeeze(1)
        outside = (index < 0) | (index >= len(self))
        if bool(outside.any()):
            first = int(index[outside][0])
            raise ValueError(f"index {first} is out of range for {len(self)} examples")
        return Examples(self.inputs[index], self.targets[index])

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None):
        """Move to a device; ``dtype`` applies to floating-point inputs only."""
        inputs = self.inputs.to(device)
        if dtype is not None and inputs.is_floating_point():
            inputs = inputs.to(dtype)
        return Examples(inputs, self.targets.to(device))

    def fingerprint(self) -> str:
        """Content hash of inputs and targets."""
        return array_fingerprint(self.inputs, self.targets)


def check_input_dtype(model: nn.Module, inputs: Tensor) -> None:
    """Refuse floating-point ``inputs`` of another dtype than the model's parameters.

    The library's dtype policy (see the module docstring): inputs are never cast to the model's
    dtype behind the caller's back, which would silently drop precision (float64 data on a
    float32 model); torch would refuse the mismatch only deep inside the forward pass, in terms
    of matrix operands. Integer inputs (token ids) and models without floating parameters pass.

    Raises:
        ValueError: the two dtypes differ; the message names both and how to make them agree.
    """
    model_dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), None)
    if model_dtype is None or not inputs.is_floating_point() or inputs.dtype == model_dtype:
        return
    raise ValueError(
        f"the model's parameters are {model_dtype} but the inputs are {inputs.dtype}; cast one "
        f"to the other: the model with model.to({inputs.dtype}), or the data with "
        f"tda.as_examples(data).to(dtype={model_dtype})"
    )


def _writable(values: Any) -> np.ndarray:
    """``values`` as a numpy array, a read-only one (a pandas frame's values) copied: torch warns
    about sharing it."""
    return np.require(values, requirements="W")


def _tensor(values: Any) -> Tensor:
    """An array as a tensor of its dtype.

    Raises:
        TypeError: ``values`` is not numeric array data (e.g. a ``Dataset``, or text).
    """
    try:
        return torch.as_tensor(_writable(values))
    except (TypeError, ValueError) as error:
        raise TypeError(
            f"Examples takes tensors or numeric arrays, got {type(values).__name__} ({error}); "
            "read other data with tda.as_examples"
        ) from error


def _array_targets(values: Any) -> Tensor:
    """Targets given as an array: int64 where they are integers or booleans (class indices),
    else in their dtype (a regression's floats)."""
    targets = _tensor(values)
    return targets if targets.is_floating_point() or targets.is_complex() else targets.long()


def _stack(items: list[Any]) -> Tensor:
    # tensors as they are: numpy holds no bfloat16, nor a tensor that requires grad or is on CUDA
    return torch.stack(
        [
            item.detach() if isinstance(item, Tensor) else torch.as_tensor(np.asarray(item))
            for item in items
        ]
    )


def _integer_targets(values: Any) -> Tensor:
    """``values`` as int64 class indices; refuses text and fractional or non-finite float
    targets, which ``.long()`` would truncate (or wrap) into other classes."""
    if not isinstance(values, Tensor):
        array = _writable(values)
        if array.dtype.kind not in "biuf":
            raise ValueError(
                f"targets must be integer class indices, got {array.dtype} values such as "
                f"{array.ravel()[:1].tolist()[0]!r}; map them to integers first"
            )
        values = torch.as_tensor(array)
    if values.is_floating_point():
        invalid = ~values.isfinite() | (values != values.round())  # inf == inf.round()
        invalid = invalid.reshape(len(values), -1).any(dim=1)
        if bool(invalid.any()):
            row = int(invalid.nonzero()[0])
            raise ValueError(
                f"target {values[row].tolist()} of example {row} is not an integer class index"
            )
    return values.long()


def _pair(item: Any) -> Any:
    if isinstance(item, Mapping):  # unpacking would read its first two keys as input and target
        raise ValueError(
            f"expected (input, target) pairs, got a mapping with keys {sorted(item)}; pass a "
            "Hugging Face dataset itself, naming its input_column and target_column"
        )
    if len(item) != 2:  # e.g. a list of feature rows passed without its targets
        raise ValueError(
            f"expected (input, target) pairs or an (X, y) tuple of arrays; got an item of "
            f"{type(item).__name__} with {len(item)} elements"
        )
    return item


def _from_pairs(pairs) -> Examples:
    inputs, targets = [], []
    for x, y in map(_pair, pairs):
        inputs.append(x)
        targets.append(y)
    if not inputs:
        raise ValueError("the data set is empty")
    return Examples(_stack(inputs), _integer_targets(_stack(targets)))


def _check_in_order(loader: DataLoader) -> None:
    """Refuse a loader that would hand over a different order (shuffling) or drop examples:
    training sets are identified by their content in order, and positions index them."""
    iterable = isinstance(loader.dataset, IterableDataset)  # yields in its own order
    if not iterable and not isinstance(loader.sampler, SequentialSampler):
        raise ValueError(
            f"the data loader draws examples with a {type(loader.sampler).__name__}, so every read "
            "would give another order; pass its dataset, or a loader without shuffling"
        )
    if loader.drop_last:
        raise ValueError(
            "the data loader drops its last partial batch (drop_last=True), which would lose "
            "examples; pass its dataset, or a loader with drop_last=False"
        )


def _from_loader(loader: DataLoader) -> Examples:
    _check_in_order(loader)
    if loader.batch_sampler is None:  # batch_size=None: the loader yields single examples
        return _from_pairs(loader)
    batches = [(torch.as_tensor(x), torch.as_tensor(y)) for x, y in map(_pair, loader)]
    if not batches:
        raise ValueError("the data loader yielded no batches")
    targets = _integer_targets(torch.cat([b[1] for b in batches]))
    return Examples(torch.cat([b[0] for b in batches]), targets)


def _from_hugging_face(dataset, input_column: str, target_column: str) -> Examples:
    missing = [c for c in (input_column, target_column) if c not in dataset.column_names]
    if missing:
        raise ValueError(f"columns {missing} not in the data set; it has {dataset.column_names}")
    if len(dataset) == 0:
        raise ValueError("the data set is empty")
    table = dataset.with_format("numpy")
    inputs = torch.as_tensor(np.asarray(table[input_column]))
    return Examples(inputs, _integer_targets(table[target_column]))


def _from_arrays(inputs: Any, targets: Any) -> Examples:
    inputs, targets = (a if isinstance(a, Tensor) else _writable(a) for a in (inputs, targets))
    if len(inputs) != len(targets):
        raise ValueError(
            f"inputs and targets differ in length: {len(inputs)} inputs, {len(targets)} targets"
        )
    if len(inputs) == 0:
        raise ValueError("the data set is empty")
    return Examples(torch.as_tensor(inputs), _integer_targets(targets))


def _is_array_pair(data: Any) -> bool:
    """``(inputs, targets)``: a tuple or list of two arrays (scikit-learn's ``X, y``: numpy,
    torch, or anything with ``__array__``, e.g. a pandas DataFrame and Series), not a sequence
    of two ``(input, target)`` pairs."""
    return (
        isinstance(data, tuple | list)
        and len(data) == 2
        and all(_is_array(a) and len(np.shape(a)) >= 1 for a in data)
    )


def _is_array(value: Any) -> bool:
    return isinstance(value, Tensor) or hasattr(value, "__array__")


def as_examples(data: Any, input_column: str = "input", target_column: str = "label") -> Examples:
    """Convert user data to :class:`Examples`.

    Args:
        data: ``Examples``; a tuple ``(inputs, targets)`` of two arrays or tensors (e.g.
            scikit-learn's ``X, y``; dtypes kept); a Hugging Face ``datasets.Dataset``; a torch
            ``DataLoader``; or any torch ``Dataset`` / sequence of ``(input, target)`` pairs.
        input_column: Hugging Face column holding inputs.
        target_column: Hugging Face column holding integer targets.

    Raises:
        ValueError: the data is empty, the named columns do not exist, or a target is not an
            integer (a float target must be whole: 2.0 reads as class 2, 0.7 is refused), or
            ``(inputs, targets)`` arrays differ in length.
    """
    if isinstance(data, Examples):
        return data
    if hasattr(data, "column_names") and hasattr(data, "with_format"):
        return _from_hugging_face(data, input_column, target_column)
    if isinstance(data, DataLoader):
        return _from_loader(data)
    if _is_array_pair(data):
        return _from_arrays(*data)
    if isinstance(data, Dataset) or isinstance(data, Sequence):
        return _from_pairs(data[i] for i in range(len(data)))
    raise TypeError(f"cannot read examples from {type(data).__name__}")


def check_finite_inputs(inputs: Tensor, keep: Tensor | None = None) -> None:
    """Refuse NaN or infinity in floating ``inputs`` (of the examples ``keep`` selects, a
    ``[n]`` boolean mask, if given): one vectorised pass when there is none.

    Raises:
        ValueError: the first such example is named, with its value.
    """
    if not inputs.is_floating_point():
        return
    finite = torch.isfinite(inputs)
    if bool(finite.all()):
        return
    row = first_flagged_example(~finite, keep)
    if row is not None:
        value = float(inputs[row][~finite[row]][0])
        raise ValueError(
            f"the input of example {row} holds {value}: training or curvature on it would be "
            "NaN; impute or drop the non-finite values first"
        )


def first_flagged_example(flags: Tensor, keep: Tensor | None = None) -> int | None:
    """The first example with a True entry in ``flags`` (``[n, ...]``), of those ``keep`` (a
    ``[n]`` boolean mask) selects if given; ``None`` if there is none."""
    rows = flags.reshape(len(flags), -1).any(dim=1)
    if keep is not None:
        rows &= keep.to(rows.device)
    found = rows.nonzero()
    return int(found[0, 0]) if len(found) else None
