r"""Inputs and output gradients of Linear and conv layers from one forward and one backward pass.

A Linear layer :math:`y = W a (+ b)` applied at positions :math:`t` (sequence or other leading
dimensions after the batch) has the per-example weight gradient
:math:`G_i = \sum_t g_{i,t} a_{i,t}^\top` of a per-example value :math:`h_i`, with
:math:`g_{i,t} = \partial h_i / \partial y_{i,t}`. A convolution is such a layer over input patches
(:mod:`tda.layer_positions`). Forward hooks record every call's input and output; one backward
pass of :math:`\sum_i h_i` to the recorded outputs then yields every :math:`g_{i,t}` at once,
because in eval mode examples do not interact: a BatchNorm without running statistics, which
normalises by the batch's statistics even then, is refused (:func:`refuse_batch_statistics`).
The hooks see only a layer's calls, so a layer whose weight or bias reaches the value other than
through them (``nn.MultiheadAttention``'s ``out_proj``, a tied decoder) is refused too.

Readers: :class:`~tda.features.kronecker.KroneckerFeaturizer` (sketches of :math:`a` and
:math:`g`) and the K-FAC / EK-FAC solvers of :mod:`tda.curvature.kfac` (their covariances).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from typing import NamedTuple

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from tda.dtypes import compute_dtype
from tda.layer_positions import input_positions, output_positions

Prepare = Callable[[str, Tensor], Tensor]


class LayerCall(NamedTuple):
    """One call of a recorded layer whose output reaches the differentiated value."""

    inputs: Tensor  # prepare(name, a): [b, T, k], from the layer input a as [b, T, in]
    output_gradients: Tensor  # g: [b, T, out], in the compute dtype


def capture_layer_calls(
    model: nn.Module,
    modules: Sequence[tuple[str, nn.Module]],
    inputs: Tensor,
    value: Callable[[Tensor], Tensor],
    prepare: Prepare | None = None,
) -> tuple[dict[str, list[LayerCall]], Tensor]:
    """One forward pass with hooks, one backward pass of ``value(logits).sum()``.

    The caller puts the model in eval mode (see ``tda.grads.evaluation_mode``).

    Args:
        model: the network.
        modules: ``(name, module)`` pairs of the layers to record (Linear or convolution, see
            :mod:`tda.layer_positions`).
        inputs: one chunk of examples ``[b, ...]``.
        value: per-example values ``[b]`` of the logits; differentiated as their sum.
        prepare: applied in the hook to each call's input ``[b, T, in]`` (compute dtype, no grad),
            e.g. a projection; the recorded tensor is its result. Default: the input itself.

    Returns:
        Per module name, the calls whose output reaches the value, in call order; and the logits.

    Raises:
        ValueError: a recorded input has no leading batch dimension of size ``b`` (or does not
            hold the examples on it: a sequence-first ``[T, b, in]`` input), or a layer's
            weight reaches the value without the layer being called (``nn.MultiheadAttention``
            applies its ``out_proj`` weight directly), or its weight or bias reaches it both
            through its calls and directly (a tied decoder ``F.linear(z, enc.weight.t())``), so
            its gradient cannot be recorded.
    """
    records: dict[str, list[tuple[Tensor, Tensor]]] = {name: [] for name, _ in modules}
    shapes: dict[str, list[torch.Size]] = {name: [] for name, _ in modules}
    handles = [
        module.register_forward_hook(_hook(name, records[name], prepare, shapes[name]))
        for name, module in modules
    ]
    try:
        # Gradients are needed even where the caller runs without them (no_grad, inference_mode,
        # under which autograd would record nothing and every gradient would read as zero).
        with torch.inference_mode(False), torch.enable_grad():
            logits = model(inputs.clone() if inputs.is_inference() else inputs)
            total = value(logits).sum()
            recorded = [(name, call) for name, calls in records.items() for call in calls]
            outputs = [output for _, (_, output) in recorded]
            # Layers never called: their weight must not reach the value by another route.
            uncalled = [(n, m.weight) for n, m in modules if not records[n] and _trainable(m)]
            wanted = outputs + [weight for _, weight in uncalled]
            needed = wanted and total.requires_grad  # else nothing recorded reaches the value
            uses = _parameter_uses(total, modules) if needed else Counter()
            grads = torch.autograd.grad(total, wanted, allow_unused=True) if needed else None
            grads = list(grads or [None] * len(wanted))
            gradients = grads[: len(outputs)]
    finally:
        for handle in handles:
            handle.remove()
    _check_called(uncalled, grads[len(outputs) :])
    _check_batch_axis(model, modules, inputs, shapes)
    reaching = Counter(n for (n, _), g in zip(recorded, gradients, strict=True) if g is not None)
    _check_only_called(modules, uses, reaching)
    return _layer_calls(modules, recorded, gradients, len(inputs)), logits


def _layer_calls(
    modules: Sequence[tuple[str, nn.Module]],
    recorded: list[tuple[str, tuple[Tensor, Tensor]]],
    gradients: list[Tensor | None],
    batch: int,
) -> dict[str, list[LayerCall]]:
    """Each recorded call's prepared input with its output gradient, per module name, keeping
    only the calls whose output reaches the value (a gradient that is not ``None``)."""
    captured: dict[str, list[LayerCall]] = {name: [] for name, _ in modules}
    layers = dict(modules)
    for (name, (prepared, _)), gradient in zip(recorded, gradients, strict=True):
        if len(prepared) != batch:
            raise ValueError(
                f"module '{name}' got an input with leading dimension {len(prepared)} in a chunk "
                f"of {batch} examples; Linear inputs must be [batch, ..., in]"
            )
        if gradient is not None:  # None: this output does not reach the value
            g = output_positions(layers[name], gradient.to(prepared.dtype))
            if g.shape[1] != prepared.shape[1]:
                raise ValueError(
                    f"module '{name}' maps {prepared.shape[1]} input positions to "
                    f"{g.shape[1]} output positions; hooks need y = W a + b at every position "
                    "(a Linear subclass with another forward is not supported)"
                )
            captured[name].append(LayerCall(prepared, g))
    return captured


def _trainable(module: nn.Module) -> bool:
    weight = getattr(module, "weight", None)
    return isinstance(weight, Tensor) and weight.requires_grad


def _check_called(uncalled: list[tuple[str, Tensor]], gradients: list[Tensor | None]) -> None:
    """Refuse layers whose weight has a gradient although no call of theirs was recorded."""
    bypassed = [name for (name, _), g in zip(uncalled, gradients, strict=True) if g is not None]
    if bypassed:
        raise ValueError(
            f"the weights of modules {bypassed} reach the value without their forward being "
            "called (e.g. nn.MultiheadAttention's out_proj), so hooks cannot record their "
            "inputs; choose layers the model calls"
        )


def _layer_parameters(module: nn.Module) -> Iterator[Tensor]:
    """The trainable leaf weight and bias of a layer (a computed weight has no accumulator)."""
    for tensor in (getattr(module, "weight", None), getattr(module, "bias", None)):
        if isinstance(tensor, Tensor) and tensor.requires_grad and tensor.grad_fn is None:
            yield tensor


def _parameter_uses(total: Tensor, modules: Sequence[tuple[str, nn.Module]]) -> Counter:
    """Per ``(module name, id of its weight or bias)``: the edges of the autograd graph of
    ``total`` into that parameter's gradient accumulator, one per operation applying it."""
    owners: dict[int, list[str]] = {}
    for name, module in modules:
        for tensor in _layer_parameters(module):
            owners.setdefault(id(tensor), []).append(name)
    uses: Counter = Counter()
    seen, stack = set(), [total.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        for child, _ in node.next_functions:
            leaf = getattr(child, "variable", None)  # set on gradient accumulators only
            if leaf is not None:
                uses.update((name, id(leaf)) for name in owners.get(id(leaf), ()))
            stack.append(child)
    return uses


def _check_only_called(
    modules: Sequence[tuple[str, nn.Module]], uses: Counter, calls: Counter
) -> None:
    """Refuse layers whose weight or bias reaches the value more often than their calls that
    reach it apply it: the other uses' share of the gradient never passes the hooks."""
    bypassed = [
        name
        for name, module in modules
        if calls[name] and any(uses[name, id(t)] > calls[name] for t in _layer_parameters(module))
    ]
    if bypassed:
        raise ValueError(
            f"the parameters of modules {bypassed} reach the value both through their calls and "
            "directly (e.g. a tied decoder F.linear(z, enc.weight.t())), so hooks miss the "
            "direct use's share of their gradient; leave these layers out"
        )


def refuse_batch_statistics(model: nn.Module, instead: str) -> None:
    """Refuse a model with a BatchNorm without running statistics (``track_running_stats=False``):
    it normalises by the batch's statistics even in eval mode, so one backward pass of the summed
    value mixes the examples, and each one's gradients depend on the rest of its chunk.

    Args:
        model: the network.
        instead: the advice ending the message (what to use instead).
    """
    mixing = [
        name or type(model).__name__
        for name, module in model.named_modules()
        if isinstance(module, _BatchNorm)
        and (module.running_mean is None or module.running_var is None)
    ]
    if mixing:
        raise ValueError(
            f"BatchNorm modules {mixing} have no running statistics (track_running_stats=False), "
            "so even in eval mode they normalise each chunk by its own statistics and mix the "
            f"examples' layer gradients; {instead}"
        )


def _check_batch_axis(
    model: nn.Module,
    modules: Sequence[tuple[str, nn.Module]],
    inputs: Tensor,
    shapes: dict[str, list[torch.Size]],
) -> None:
    """Refuse a layer whose input does not hold the examples on its first axis (``[T, b, in]``
    of a sequence-first layer): only its size is checked otherwise, and where another axis has
    the chunk's size it would pass, mixing the examples' positions. In that case the model is
    run once more on one example, whose every layer input must then lead with 1."""
    size = len(inputs)
    if size == 1 or not any(size in shape[1:] for calls in shapes.values() for shape in calls):
        return
    leading: dict[str, list[int]] = {name: [] for name, _ in modules}
    handles = [
        module.register_forward_hook(lambda _, args, __, n=name: leading[n].append(len(args[0])))
        for name, module in modules
    ]
    try:
        with torch.no_grad():
            model(inputs[:1])
    finally:
        for handle in handles:
            handle.remove()
    for name, sizes in leading.items():
        if any(s != 1 for s in sizes):
            raise ValueError(
                f"module '{name}' does not take the examples on the first axis of its input (for "
                f"one example it leads with {max(sizes)}); Linear inputs must be [batch, ..., "
                "in] (e.g. batch_first=True)"
            )


def _hook(name: str, record: list, prepare: Prepare | None, shapes: list[torch.Size]):
    def hook(module: nn.Module, args: tuple, output: Tensor) -> Tensor:
        shapes.append(args[0].shape)
        with torch.no_grad():
            a = args[0].detach()
            a = input_positions(module, a.to(compute_dtype(a.dtype)))  # [b, T, in]
            prepared = a if prepare is None else prepare(name, a)
        record.append((prepared, output))
        # Downstream layers get a copy: after an in-place op on it (ReLU(inplace=True)),
        # autograd.grad w.r.t. `output` would silently return the modified tensor's gradient.
        return output.clone()

    return hook
