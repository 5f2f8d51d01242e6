r"""Per-sample gradients with ``torch.func``: the kernel every attribution method reads.

For examples :math:`z_i = (x_i, y_i)` and a task function :math:`h` (the task's ``output`` or
``loss``), computes :math:`g_i = \nabla_\theta h(z_i; \theta)` restricted to chosen parameters,
flattened in the model's parameter order, chunked over examples so memory is bounded by
``chunk_size * p``. Uses ``vmap(grad(functional_call(...)))``; where a model cannot be traced by
``vmap`` (data-dependent control flow, ``.item()``) it falls back to a per-example autograd loop
and warns once. The fallback is taken only where the loop succeeds: a failure of the model itself
(which the loop meets too) surfaces as itself.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Literal

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from tda.data.examples import check_input_dtype
from tda.device import to_device_of
from tda.task import Task

TaskFunction = Literal["output", "loss"]


class VmapFallbackWarning(UserWarning):
    """``vmap`` could not trace the model; gradients are computed one example at a time."""


VMAP_ERRORS = (RuntimeError, NotImplementedError, ValueError)
"""The errors ``vmap`` raises where it cannot trace a model. A model's own failures (a shape
mismatch) raise them too, so a fallback blames ``vmap`` only once the unbatched loop succeeded;
``torch.OutOfMemoryError`` (a ``RuntimeError``) is raised as itself, asking for a smaller chunk."""


class NonFiniteGradientError(ValueError):
    """A per-sample gradient contains NaN or infinity.

    Attributes:
        quantity: what is not finite (``"per-sample gradient of the output"``) where one example
            is named (:func:`non_finite_example`), else None.
        example: that example's index among the examples given.
    """

    def __init__(
        self, message: str, *, quantity: str | None = None, example: int | None = None
    ) -> None:
        super().__init__(message)
        self.quantity, self.example = quantity, example


def non_finite_example(quantity: str, example: int, where: str = "") -> NonFiniteGradientError:
    """The error for a non-finite ``quantity`` of example ``example``; ``where`` names the set the
    index counts in (e.g. ``" of split 'train'"``)."""
    return NonFiniteGradientError(
        f"the {quantity} for example {example}{where} is not finite; check the model's outputs, "
        "the input and the target (one outside the model's classes gives NaN) for that example",
        quantity=quantity,
        example=example,
    )


def check_finite_examples(values: Tensor, offset: int, quantity: str) -> None:
    """Refuse NaN or infinity in ``values`` ``[b, ...]``, naming the first such example (its row
    plus ``offset``)."""
    if bool(torch.isfinite(values.sum())):  # fast path; an overflowing sum just checks exactly
        return
    finite = torch.isfinite(values.flatten(1)).all(dim=1)
    if not bool(finite.all()):
        raise non_finite_example(quantity, int((~finite).nonzero()[0, 0]) + offset)


ParameterNames = Sequence[str] | Callable[[nn.Module], Sequence[str]] | None
"""Parameters to differentiate: names, a rule giving them for a model (e.g.
:func:`tda.curvature.kronecker_parameters`), or ``None`` for every trainable one."""


def select_parameters(model: nn.Module, names: ParameterNames = None) -> dict[str, Tensor]:
    """Detached trainable parameters by name, in model order (all of them when ``names`` is None;
    ``names(model)`` when it is a rule).

    Raises:
        TypeError: a single string instead of a list of names (it would read as its letters).
        ValueError: a name is not a trainable parameter of the model, is a tied weight's second
            name (its first one is named), or the selection is empty.
    """
    if callable(names):
        names = names(model)
    if isinstance(names, str):
        raise TypeError(f"parameters must be a list of names, got the string {names!r}")
    available = {name: p.detach() for name, p in model.named_parameters() if p.requires_grad}
    if names is None:
        selected = available
    else:
        unknown = [name for name in names if name not in available]
        if unknown:
            _refuse_second_names(model, unknown, available)
            raise ValueError(
                f"parameters {unknown} are not trainable parameters of the model; "
                f"available: {list(available)}"
            )
        wanted = set(names)
        selected = {name: p for name, p in available.items() if name in wanted}
    if not selected:
        raise ValueError("no parameters selected for per-sample gradients")
    return selected


def _refuse_second_names(model: nn.Module, names: Sequence[str], available: Mapping) -> None:
    """Refuse a trainable tied weight named by another name than its first, under which
    ``named_parameters`` lists it once (and the selection and its records name it)."""
    first = {id(p): name for name, p in model.named_parameters()}
    tied = [
        f"'{name}' is tied to '{first[id(p)]}'"
        for name, p in model.named_parameters(remove_duplicate=False)
        if name in names and first[id(p)] != name and first[id(p)] in available
    ]
    if tied:
        raise ValueError(
            f"parameter {', '.join(tied)}: name a tied weight by its first name (it is "
            "differentiated once, through every use)"
        )


def frozen_state(model: nn.Module, params: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The model's parameters and buffers (detached) that ``functional_call`` takes as they are
    beside ``params``: every entry but the selected parameters and the names tied to them (an
    embedding and an output head sharing one weight), which ``functional_call`` ties to the value
    given, so the gradient counts every use of a shared weight. A tensor under several names (a
    frozen tied weight, a buffer shared by two submodules) is detached once, so its names stay
    tied: ``functional_call`` refuses different values for tied names."""
    chosen = {id(model.get_parameter(name)) for name in params}
    state = model.state_dict(keep_vars=True)
    detached: dict[int, Tensor] = {}
    return {
        name: detached.setdefault(id(v), v.detach())
        for name, v in state.items()
        if id(v) not in chosen
    }


def parameter_count(model: nn.Module, names: Sequence[str] | None = None) -> int:
    """Number of gradient coordinates ``p`` for the selected parameters."""
    return sum(p.numel() for p in select_parameters(model, names).values())


@contextlib.contextmanager
def modes_restored(model: nn.Module) -> Iterator[None]:
    """Give every submodule its own train/eval mode back afterwards (``model.train(mode)`` would
    set one mode for all, waking a normalisation layer its owner had frozen in eval mode)."""
    modes = [(module, module.training) for module in model.modules()]
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


@contextlib.contextmanager
def evaluation_mode(model: nn.Module) -> Iterator[None]:
    """Run with dropout off and normalisation statistics frozen, then restore every mode."""
    with modes_restored(model):
        model.eval()
        yield


def _example_function(model: nn.Module, task: Task, function: TaskFunction, frozen: dict):
    task_function = getattr(task, function)

    def example_value(params: dict[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
        logits = functional_call(model, {**frozen, **params}, (x.unsqueeze(0),)).squeeze(0)
        return task_function(logits, y)

    return example_value


def _flatten(gradients: dict[str, Tensor], batch: int) -> Tensor:
    return torch.cat([g.reshape(batch, -1) for g in gradients.values()], dim=1)


def _loop_gradients(value_fn, params, inputs: Tensor, targets: Tensor) -> Tensor:
    grad_fn = grad(value_fn)
    rows = [_flatten(grad_fn(params, x, y), 1) for x, y in zip(inputs, targets, strict=True)]
    return torch.cat(rows, dim=0)


def iter_per_sample_gradients(
    model: nn.Module,
    task: Task,
    inputs: Tensor,
    targets: Tensor,
    *,
    function: TaskFunction = "output",
    parameters: Sequence[str] | None = None,
    chunk_size: int = 256,
    vectorize: bool | Literal["auto"] = "auto",
) -> Iterator[Tensor]:
    """Yield per-sample gradients ``[chunk, p]`` for consecutive chunks of the examples.

    Args:
        model: the network; evaluated in eval mode with its current parameters and buffers.
        task: supplies the per-example ``output`` / ``loss`` of the logits.
        inputs: ``[n, ...]`` examples (each chunk is moved to the model's device, where the
            gradients are computed and returned).
        targets: ``[n]`` targets.
        function: differentiate the task's ``"output"`` or ``"loss"``.
        parameters: names of the parameters to differentiate (default: all trainable ones).
        chunk_size: examples per vectorised call; bounds memory at ``chunk_size * p`` floats.
        vectorize: ``True`` forces ``vmap``, ``False`` the loop, ``"auto"`` tries ``vmap`` first.

    Raises:
        ValueError: empty or mismatched inputs, floating inputs of another dtype than the model,
            bad arguments, or a non-finite gradient.
        torch.OutOfMemoryError: a chunk's vectorised gradients do not fit (lower ``chunk_size``).
    """
    if len(inputs) == 0:
        raise ValueError("cannot compute per-sample gradients of an empty set of examples")
    if len(inputs) != len(targets):
        raise ValueError(f"{len(inputs)} inputs but {len(targets)} targets")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be at least 1, got {chunk_size}")
    check_input_dtype(model, inputs)
    params = select_parameters(model, parameters)
    frozen = frozen_state(model, params)
    value_fn = _example_function(model, task, function, frozen)
    batched = vmap(grad(value_fn), in_dims=(None, 0, 0))
    use_vmap = vectorize is not False
    with evaluation_mode(model):
        for start in range(0, len(inputs), chunk_size):
            x, y = to_device_of(
                model, inputs[start : start + chunk_size], targets[start : start + chunk_size]
            )
            gradients, use_vmap = _chunk_gradients(
                batched, value_fn, params, x, y, use_vmap, vectorize
            )
            check_finite_examples(gradients, start, f"per-sample gradient of the {function}")
            yield gradients


def _chunk_gradients(batched, value_fn, params, x, y, use_vmap, vectorize):
    """A chunk's gradients and whether ``vmap`` is still used. Where ``vmap`` fails, the loop is
    run outside the ``except``, so that its own failure is raised alone, before any warning."""
    failure = None
    if use_vmap:
        try:
            return _flatten(batched(params, x, y), len(x)), True
        except torch.OutOfMemoryError as error:  # a RuntimeError, but no failure to trace
            raise torch.OutOfMemoryError(
                f"out of memory computing the per-sample gradients of a chunk of {len(x)} "
                f"examples ({error}); lower chunk_size"
            ) from error
        except VMAP_ERRORS as error:
            if vectorize is True:
                raise
            failure = error
    gradients = _loop_gradients(value_fn, params, x, y)
    if failure is not None:
        warnings.warn(
            f"vmap could not trace this model ({type(failure).__name__}: {failure}); "
            "falling back to a per-example loop, which is slower but exact",
            VmapFallbackWarning,
            stacklevel=4,
        )
    return gradients, False


def per_sample_gradients(
    model: nn.Module,
    task: Task,
    inputs: Tensor,
    targets: Tensor,
    **options,
) -> Tensor:
    """All per-sample gradients ``[n, p]`` at once (see :func:`iter_per_sample_gradients`)."""
    return torch.cat(list(iter_per_sample_gradients(model, task, inputs, targets, **options)))
