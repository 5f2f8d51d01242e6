r"""Kronecker-factored curvature of Linear and conv layers: K-FAC factors, eigenbases, EK-FAC.

Per selected ``nn.Linear`` layer with output size :math:`o`, let :math:`a_{n,t} \in \mathbb{R}^c`
be its input at position :math:`t` of example :math:`n` with a 1 appended when the bias is
selected (:math:`c = in + 1`; :math:`c = in` without a bias, :math:`c = 1` for a bias alone), and
:math:`g_{n,t} = \partial \ell_n / \partial y_{n,t} \in \mathbb{R}^o` the gradient of the
example's loss with respect to the layer's output. The example's gradient with respect to
:math:`[W \mid b]` is :math:`G_n = \sum_t g_{n,t} a_{n,t}^\top` (``[o, c]``), flattened row-major.

The curvature of the mean loss :math:`\frac1N \sum_n \ell_n` is approximated by the Fisher
:math:`F = \frac1N \sum_n \operatorname{vec}(G_n) \operatorname{vec}(G_n)^\top`, whose loss
gradients use either the training labels (the "empirical" Fisher) or labels
:math:`\hat y_n \sim p(y \mid x_n)` drawn from the model's softmax (the true Fisher, an unbiased
estimate of the Gauss-Newton matrix for cross-entropy; for
:class:`~tda.task.LanguageModelingTask`, whose loss is the mean over :math:`T_c` counted tokens
with labels drawn at each, a sampled gradient is scaled by :math:`\sqrt{T_c}`, since the mean's
:math:`\mathbb{E}[\nabla\ell \nabla\ell^\top]` is the Gauss-Newton matrix over :math:`T_c`).
K-FAC (Martens & Grosse 2015) keeps the
layers' diagonal blocks :math:`F_l` and factors each as

.. math::
    F_l \approx S \otimes A, \quad A = \tfrac{1}{|P|} \sum_{(n,t) \in P} a_{n,t} a_{n,t}^\top,
    \quad S = \tfrac1N \sum_{n,t} g_{n,t} g_{n,t}^\top,

positions averaged in :math:`A` and summed in :math:`S` (the "expand" setting of Eschenhagen et
al. 2023), over :math:`P = \{(n, t) : g_{n,t} \neq 0\}`, the positions that enter a gradient
:math:`G_n`: :math:`F_l = \frac1N \sum_n \sum_{t, t'} (g_{n,t} g_{n,t'}^\top) \otimes
(a_{n,t} a_{n,t'}^\top)` has no term from another position, so neither has :math:`A` (else the
length of the padding would change it). With :class:`~tda.task.LanguageModelingTask` targets
left out (:data:`~tda.task.IGNORE_INDEX`), :math:`P` drops the padding after a causal model's last
counted token in every layer and the ignored positions in layers that feed only their own
position (the head), and keeps a prompt in the layers through which attention carries it to a
later counted token. Otherwise a position drops out only where its output gradient is exactly
zero, e.g. where a ReLU after the layer is off in every output or a max-pool passes none of it
(:math:`T = 1` for an MLP). Sampled labels are drawn per position of the padded batch, so
another padding length draws other labels and the factors change by that sampling noise.
An ``nn.Conv1d`` / ``nn.Conv2d`` (``groups=1``) is the same
with :math:`a_{n,t}` the input patch under the kernel at output position :math:`t` and
:math:`W` its weight as ``[out, in * kernel]`` (:mod:`tda.layer_positions`): the factors are then
those of KFC (Grosse & Martens 2016, which assumes derivatives at different positions
uncorrelated). With :math:`S = Q_S \operatorname{diag}(s) Q_S^\top` and
:math:`A = Q_A \operatorname{diag}(\alpha) Q_A^\top`,
:math:`F_l \approx (Q_S \otimes Q_A) \operatorname{diag}(\operatorname{vec}\Lambda)
(Q_S \otimes Q_A)^\top` with :math:`\Lambda_{ij} = s_i \alpha_j`. EK-FAC (George et al. 2018)
keeps the eigenbasis and refits :math:`\Lambda_{ij} = \frac1N \sum_n
[Q_S^\top G_n Q_A]_{ij}^2`, the exact diagonal of :math:`F_l` in that basis (the matrix diagonal
in it closest to :math:`F_l` in Frobenius norm). :math:`Q_S^\top G_n Q_A` is built from the
rotated :math:`a` and :math:`g`, a chunk at a time; never ``[N, o, c]``.

Factors are accumulated and decomposed in float64 on the model's device. Matrix functions of the
curvature are elementwise in the eigenbasis: :func:`apply_in_eigenbasis`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import NamedTuple

import torch
from torch import Tensor, nn

from tda.arguments import check_positive_int
from tda.data.examples import Examples, check_input_dtype
from tda.grads import NonFiniteGradientError, evaluation_mode, select_parameters
from tda.layer_capture import capture_layer_calls, refuse_batch_statistics
from tda.layer_positions import is_positional
from tda.task import IGNORE_INDEX, LanguageModelingTask, Task

_MAX_BLOCK_ELEMENTS = 1 << 24  # bounds the [b, o, c] temporaries of EK-FAC with positions


@dataclass(frozen=True, eq=False)
class KroneckerEigenbasis:
    r"""One layer's curvature block, diagonal in its Kronecker eigenbasis.

    The block is :math:`(Q_S \otimes Q_A)\operatorname{diag}(\operatorname{vec}\Lambda)
    (Q_S \otimes Q_A)^\top` over the row-major ``[o, c]`` matrix ``[grad W | grad b]``.

    Attributes:
        module: name of the layer in the model (``""`` when the model is the layer).
        weight: name of its weight parameter when selected, else None.
        bias: name of its bias parameter when selected, else None.
        offset: position of the layer's first parameter in the flattened ``[p]`` vector.
        output_basis: :math:`Q_S` ``[o, o]`` (eigenvectors in columns), float64.
        input_basis: :math:`Q_A` ``[c, c]``, float64.
        eigenvalues: :math:`\Lambda` ``[o, c]`` (K-FAC: :math:`s_i \alpha_j`; EK-FAC: refitted),
            non-negative float64.
    """

    module: str
    weight: str | None
    bias: str | None
    offset: int
    output_basis: Tensor
    input_basis: Tensor
    eigenvalues: Tensor

    @property
    def parameter_count(self) -> int:
        """``o * c``: the layer's entries of the flattened vector."""
        return self.eigenvalues.numel()


class _Layer(NamedTuple):
    module_name: str
    module: nn.Module  # nn.Linear, or a convolution read as one (tda.layer_positions)
    weight: str | None
    bias: str | None
    offset: int


def _kronecker_layers(model: nn.Module, parameters: Sequence[str] | None) -> list[_Layer]:
    """The layers holding the selected parameters, in the flattened order of ``tda.grads``.

    Raises:
        ValueError: a selected parameter is not the weight or bias of an ``nn.Linear`` or a
            ``groups=1`` ``nn.Conv1d`` / ``nn.Conv2d`` (the message names every such parameter and
            its module), is shared by several modules, or a layer's selected parameters are not
            consecutive in weight-then-bias order.
    """
    named = dict(model.named_parameters())
    owners = _parameter_owners(model)
    selected = {name: owners[id(named[name])] for name in select_parameters(model, parameters)}
    foreign = [
        f"'{name}' ({_describe(found[0][1])} '{found[0][0]}')"
        for name, found in selected.items()
        if not (is_positional(found[0][1]) and found[0][2] in ("weight", "bias"))
    ]
    if foreign:
        raise ValueError(
            "K-FAC and EK-FAC support nn.Linear and groups=1 nn.Conv1d / nn.Conv2d layers; "
            f"trainable parameters {', '.join(foreign)} belong to other modules: pass "
            "`parameters` naming only the weights and biases of those layers"
        )
    layers: list[_Layer] = []
    offset = 0
    for name, found in selected.items():
        if len(found) > 1:
            raise ValueError(f"parameter '{name}' is shared by several modules; K-FAC needs one")
        module_name, module, attribute = found[0]
        last = layers[-1] if layers else None
        if last is not None and last.module_name == module_name and last.bias is None:
            if attribute != "bias":
                raise ValueError(f"parameters of '{module_name}' must come weight, then bias")
            layers[-1] = last._replace(bias=name)
        elif any(layer.module_name == module_name for layer in layers):
            raise ValueError(f"the parameters of '{module_name}' are not consecutive")
        else:
            weight, bias = (name, None) if attribute == "weight" else (None, name)
            layers.append(_Layer(module_name, module, weight, bias, offset))
        offset += named[name].numel()
    return layers


def kronecker_parameters(model: nn.Module) -> list[str]:
    """Names of the trainable parameters K-FAC and EK-FAC can cover, in model order: weights and
    biases of ``nn.Linear`` and ``groups=1`` convolutions (pass them as ``parameters`` for a model
    with other layers too, e.g. a transformer's embeddings and LayerNorms).

    Raises:
        ValueError: the model has no such layer.
    """
    owners = _parameter_owners(model)
    names = [
        name
        for name, parameter in model.named_parameters()
        if parameter.requires_grad
        and len(owners[id(parameter)]) == 1
        and is_positional(owners[id(parameter)][0][1])
        and owners[id(parameter)][0][2] in ("weight", "bias")
    ]
    if not names:
        raise ValueError("the model has no nn.Linear or groups=1 convolution layer for K-FAC")
    return names


def _describe(module: nn.Module) -> str:
    groups = getattr(module, "groups", 1)
    return type(module).__name__ + (f" with groups={groups}" if groups != 1 else "")


def _parameter_owners(model: nn.Module) -> dict[int, list[tuple[str, nn.Module, str]]]:
    owners: dict[int, list[tuple[str, nn.Module, str]]] = {}
    for module_name, module in model.named_modules():
        for attribute, parameter in module.named_parameters(recurse=False):
            owners.setdefault(id(parameter), []).append((module_name, module, attribute))
    return owners


def sample_targets(logits: Tensor, seed: int) -> Tensor:
    r"""Labels drawn from :math:`\operatorname{softmax}` of ``logits`` ``[n, C]`` (``[n]``), or
    of a sequence model's ``[n, T, V]`` at every position (``[n, T]``).

    Inverse-CDF sampling with one float64 uniform per label from a CPU generator seeded by
    ``seed``, so the labels of example ``i`` do not depend on how examples are chunked.
    """
    return _inverse_cdf(logits, _uniforms(tuple(logits.shape[:-1]), seed))


def _uniforms(shape: tuple[int, ...], seed: int) -> Tensor:
    generator = torch.Generator(device="cpu").manual_seed(seed)
    return torch.rand(shape, generator=generator, dtype=torch.float64)


def _inverse_cdf(logits: Tensor, uniforms: Tensor) -> Tensor:
    if tuple(logits.shape[:-1]) != tuple(uniforms.shape):
        raise ValueError(
            f"sampled labels need one uniform per label: logits {list(logits.shape)}, "
            f"uniforms {list(uniforms.shape)}"
        )
    cumulative = torch.softmax(logits.detach().to(torch.float64), dim=-1).cumsum(-1)
    below = cumulative < uniforms.to(cumulative.device).unsqueeze(-1)
    return below.sum(-1).clamp(max=logits.shape[-1] - 1)


def _chunks(
    model: nn.Module,
    task: Task,
    examples: Examples,
    layers: list[_Layer],
    sampled_labels: bool,
    seed: int,
    chunk_size: int,
) -> Iterator[list[tuple[Tensor, Tensor] | None]]:
    """Per chunk and layer, ``(a [b, T, c], g [b, T, o])`` in float64 (None: no call reaches)."""
    device = next(model.parameters()).device
    uniforms = _uniforms(tuple(examples.targets.shape), seed) if sampled_labels else None
    modules = [(layer.module_name, layer.module) for layer in layers]
    prepare = _prepare({layer.module_name: layer for layer in layers})
    with evaluation_mode(model):
        for start in range(0, len(examples), chunk_size):
            x = examples.inputs[start : start + chunk_size].to(device)
            y = examples.targets[start : start + chunk_size].to(device)
            chunk_uniforms = None if uniforms is None else uniforms[start : start + chunk_size]
            value = _loss_value(task, y, chunk_uniforms)
            calls, _ = capture_layer_calls(model, modules, x, value, prepare)
            yield [_join_calls(calls[name]) for name, _ in modules]


def _prepare(layers: dict[str, _Layer]) -> Callable[[str, Tensor], Tensor]:
    def prepare(name: str, a: Tensor) -> Tensor:  # a: [b, T, in] -> [b, T, c] in float64
        layer = layers[name]
        a = a.to(torch.float64)
        parts = [a] if layer.weight is not None else []
        if layer.bias is not None:
            parts.append(a.new_ones(*a.shape[:-1], 1))
        return torch.cat(parts, dim=-1)

    return prepare


def _loss_value(task: Task, targets: Tensor, uniforms: Tensor | None) -> Callable[[Tensor], Tensor]:
    def value(logits: Tensor) -> Tensor:
        if uniforms is None:
            return task.loss(logits, targets)
        sampled = _inverse_cdf(logits, uniforms)  # positions not counted stay not counted
        loss = task.loss(logits, torch.where(targets == IGNORE_INDEX, targets, sampled))
        if isinstance(task, LanguageModelingTask):
            # the mean of T_c token losses has E[grad grad^T] = GN / T_c: scale to the GN
            counted = (targets != IGNORE_INDEX).sum(-1).clamp_min(1).to(loss.dtype)
            loss = loss * counted.sqrt()
        return loss

    return value


def _join_calls(calls) -> tuple[Tensor, Tensor] | None:
    """Repeated calls of a layer act as further positions: concatenated along ``T``."""
    if not calls:
        return None
    inputs = torch.cat([call.inputs for call in calls], dim=1)
    return inputs, torch.cat([call.output_gradients for call in calls], dim=1)


def fit_kronecker_eigenbases(
    model: nn.Module,
    task: Task,
    examples: Examples,
    *,
    parameters: Sequence[str] | None = None,
    corrected: bool = False,
    sampled_labels: bool = True,
    seed: int = 0,
    chunk_size: int = 256,
) -> tuple[KroneckerEigenbasis, ...]:
    """K-FAC eigenbases of the selected layers, with EK-FAC eigenvalues if ``corrected``.

    Args:
        model: evaluated in eval mode at its current parameters.
        task: its ``loss`` is the per-example loss whose mean is the training objective.
        examples: the training examples (moved chunk by chunk to the model's device).
        parameters: names of the parameters (default: all trainable ones, which must then all
            belong to ``nn.Linear`` or ``groups=1`` ``nn.Conv1d`` / ``nn.Conv2d`` layers).
        corrected: refit the eigenvalues (EK-FAC; a second pass over the examples).
        sampled_labels: differentiate the loss at labels drawn from the model's softmax (true
            Fisher) instead of the training labels (empirical Fisher).
        seed: seed of the sampled labels; both passes use the same labels.
        chunk_size: examples per forward/backward pass.

    Returns:
        One :class:`KroneckerEigenbasis` per layer, in the flattened parameter order.

    Raises:
        ValueError: no examples, a ``chunk_size`` below 1, floating inputs of another dtype
            than the model, parameters outside those layers, a
            selected layer that no forward call reaching the loss goes through or whose weight
            also reaches it directly (a tied decoder), or a BatchNorm without running statistics
            (it mixes the examples of a chunk, whose gradients come from one backward pass).
        NonFiniteGradientError: a factor holds NaN or infinity (e.g. a target outside the
            model's classes).
    """
    if len(examples) == 0:
        raise ValueError("cannot fit a curvature to an empty set of examples")
    check_positive_int("chunk_size", chunk_size)
    check_input_dtype(model, examples.inputs)
    refuse_batch_statistics(model, "use DiagonalSolver, which differentiates each example alone")
    layers = _kronecker_layers(model, parameters)
    options = (sampled_labels, seed, chunk_size)
    factors = _factors(_chunks(model, task, examples, layers, *options), layers, len(examples))
    bases = [_eigenbasis(layer, A, S) for layer, (A, S) in zip(layers, factors, strict=True)]
    if corrected:
        chunks = _chunks(model, task, examples, layers, *options)
        eigenvalues = _corrected_eigenvalues(chunks, bases, len(examples))
        bases = [replace(b, eigenvalues=e) for b, e in zip(bases, eigenvalues, strict=True)]
    return tuple(bases)


def _factors(chunks, layers: list[_Layer], count: int) -> list[tuple[Tensor, Tensor]]:
    """``(A [c, c], S [o, o])`` per layer, ``A`` over the positions ``P`` (see the module doc)."""
    sums: list[list] = [[0.0, 0.0, 0, False] for _ in layers]  # a a^T, g g^T, |P|, called
    for chunk in chunks:
        for total, item in zip(sums, chunk, strict=True):
            if item is not None:
                a, g = (t.reshape(-1, t.shape[-1]) for t in item)
                reaching = (g != 0).any(-1)  # the positions in P
                a = a if bool(reaching.all()) else a[reaching]
                total[0] = total[0] + a.T @ a
                total[1] = total[1] + g.T @ g
                total[2] += len(a)
                total[3] = True
    factors = []
    for layer, (a_sum, g_sum, positions, called) in zip(layers, sums, strict=True):
        if not called:
            raise ValueError(
                f"no forward call of module '{layer.module_name}' reached the loss, so hooks saw "
                "none of its inputs (an unused layer, or one whose weights are used without "
                "calling it, like nn.MultiheadAttention.out_proj): leave its parameters out"
            )
        # no position in P: every output gradient is zero, so are S and this Fisher block
        factors.append((a_sum / max(positions, 1), g_sum / count))
    return factors


def _eigenbasis(layer: _Layer, A: Tensor, S: Tensor) -> KroneckerEigenbasis:
    for name, factor in (("input", A), ("output-gradient", S)):
        if not bool(torch.isfinite(factor).all()):
            raise NonFiniteGradientError(
                f"the {name} factor of module '{layer.module_name}' is not finite; check the "
                "model's outputs, the inputs and the targets (one outside the model's classes "
                "gives NaN)"
            )
    input_values, input_basis = torch.linalg.eigh(A)
    output_values, output_basis = torch.linalg.eigh(S)
    # eigh of a PSD matrix can return tiny negative eigenvalues from round-off
    eigenvalues = torch.outer(output_values.clamp(min=0), input_values.clamp(min=0))
    return KroneckerEigenbasis(
        layer.module_name,
        layer.weight,
        layer.bias,
        layer.offset,
        output_basis,
        input_basis,
        eigenvalues,
    )


def _corrected_eigenvalues(chunks, bases: list[KroneckerEigenbasis], count: int) -> list[Tensor]:
    r""":math:`\frac1N \sum_n [Q_S^\top G_n Q_A]^2` per layer."""
    totals = [torch.zeros_like(base.eigenvalues) for base in bases]
    for chunk in chunks:
        for total, base, item in zip(totals, bases, chunk, strict=True):
            if item is not None:
                a, g = item
                total += _squared_rotation(a @ base.input_basis, g @ base.output_basis)
    return [total / count for total in totals]


def _squared_rotation(a: Tensor, g: Tensor) -> Tensor:
    r"""``[o, c]``: :math:`\sum_n (\sum_t g_{n,t} a_{n,t}^\top)^2` elementwise.

    ``a`` ``[b, T, c]`` and ``g`` ``[b, T, o]`` arrive already rotated into the eigenbasis.
    """
    if a.shape[1] == 1:  # rank-one gradients: the square of an outer product is the outer square
        return (g[:, 0] ** 2).T @ (a[:, 0] ** 2)
    step = max(1, _MAX_BLOCK_ELEMENTS // (g.shape[-1] * a.shape[-1]))
    total = 0.0
    for start in range(0, len(a), step):
        rotated = g[start : start + step].transpose(1, 2) @ a[start : start + step]  # [b, o, c]
        total = total + (rotated**2).sum(0)
    return total


def apply_in_eigenbasis(
    bases: Sequence[KroneckerEigenbasis], vectors: Tensor, function: Callable[[Tensor], Tensor]
) -> Tensor:
    r"""``[q, p] -> [q, p]``: :math:`f(H) v` for the block-diagonal :math:`H` of ``bases``.

    Per layer, :math:`f(H_l) \operatorname{vec}(V) = \operatorname{vec}(Q_S [f(\Lambda) \odot
    (Q_S^\top V Q_A)] Q_A^\top)`, with :math:`V` ``[o, c]`` the layer's slice of ``v`` as
    ``[weight | bias]``. E.g. ``function = lambda e: 1 / (e + damping)`` is the damped inverse.

    Args:
        bases: the layers' eigenbases, covering the flattened vector in order.
        vectors: ``[q, p]`` in the flattened parameter order of ``tda.grads``.
        function: maps the eigenvalues ``[o, c]`` (float64) to the multipliers ``[o, c]``.

    Returns:
        ``[q, p]`` in the dtype and on the device of ``vectors``.

    Raises:
        ValueError: the layers do not tile ``[0, p)`` in order.
    """
    stops = [0, *(base.offset + base.parameter_count for base in bases)]
    if [base.offset for base in bases] != stops[:-1] or vectors.shape[-1] != stops[-1]:
        raise ValueError(
            f"the layers cover offsets {[b.offset for b in bases]} up to {stops[-1]}, not "
            f"consecutive blocks of the {vectors.shape[-1]} columns of `vectors`"
        )
    result = torch.empty_like(vectors)
    for base in bases:
        stop = base.offset + base.parameter_count
        block = _to_block(base, vectors[:, base.offset : stop])
        output_basis, input_basis = base.output_basis.to(vectors), base.input_basis.to(vectors)
        rotated = output_basis.T @ block @ input_basis
        rotated = rotated * function(base.eigenvalues).to(vectors)
        result[:, base.offset : stop] = _from_block(base, output_basis @ rotated @ input_basis.T)
    return result


def _to_block(base: KroneckerEigenbasis, flat: Tensor) -> Tensor:
    """``[q, o * c]`` as ``[weight (o * in, row-major) | bias (o)]`` -> ``[q, o, c]``."""
    o, c = base.eigenvalues.shape
    parts = []
    if base.weight is not None:
        inputs = c - (base.bias is not None)
        parts.append(flat[:, : o * inputs].reshape(len(flat), o, inputs))
    if base.bias is not None:
        parts.append(flat[:, -o:].reshape(len(flat), o, 1))
    return torch.cat(parts, dim=2)


def _from_block(base: KroneckerEigenbasis, block: Tensor) -> Tensor:
    """Inverse of :func:`_to_block`."""
    parts = []
    if base.weight is not None:
        parts.append(block[:, :, : block.shape[2] - (base.bias is not None)].flatten(1))
    if base.bias is not None:
        parts.append(block[:, :, -1])
    return torch.cat(parts, dim=1)
