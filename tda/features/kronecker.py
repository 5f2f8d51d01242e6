r"""Kronecker-structured projection of Linear-layer gradients, never forming per-sample gradients.

For a Linear layer with weight :math:`W \in \mathbb{R}^{o \times n}` (a trainable bias adds an
input column: :math:`c = n + 1`), the per-sample gradient of :math:`h_i` is
:math:`G_i = \sum_t g_{i,t} a_{i,t}^\top`, with :math:`a_{i,t}` the layer's input at position
:math:`t` (a 1 appended for the bias) and :math:`g_{i,t} = \partial h_i / \partial y_{i,t}` for the
layer's output :math:`y`. Projecting with :math:`P = B \otimes A` (:math:`A` ``[c, k_in]``,
:math:`B` ``[o, k_out]``, i.i.d. :math:`\pm 1/\sqrt{k_{in}}`, :math:`\pm 1/\sqrt{k_{out}}`) gives
:math:`B^\top G_i A = \sum_t (B^\top g_{i,t})(A^\top a_{i,t})^\top` at a cost of
:math:`O(T(o k_{out} + n k_{in} + k_{out} k_{in}))` per example instead of :math:`O(o n k)`.
Since :math:`\mathbb{E}[P P^\top] = \mathbb{E}[B B^\top] \otimes \mathbb{E}[A A^\top] = I`, inner
products are preserved in expectation, with a larger variance than a dense JL map of equal size.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import NamedTuple

import torch
from torch import Tensor, nn

from tda.features.gradient import FeatureBatch
from tda.grads import NonFiniteGradientError, TaskFunction, evaluation_mode
from tda.task import ClassificationTask, Task


class _Layer(NamedTuple):
    name: str
    module: nn.Linear
    k_out: int
    k_in: int


@dataclass(frozen=True)
class KroneckerFeaturizer:
    r"""Features :math:`\phi_i = [\operatorname{vec}(B_l^\top G_{i,l} A_l)]_l` of Linear layers.

    Per chunk: one forward pass, whose hooks record each layer's input already multiplied by
    :math:`A_l`, and one backward pass of ``task.<function>(logits, targets).sum()`` to the layers'
    outputs. Differentiating the sum gives every example's :math:`g_{i,t}` at once because the
    model runs in eval mode, where examples do not interact (no batch statistics). Blocks are
    concatenated in model order, each ``[k_out, k_in]`` row-major: for one layer, the block equals
    the row-major flattening of ``[grad W | grad b]`` times ``torch.kron(B, A)``.

    Size rule (deterministic): with :math:`s_l = o_l c_l` and :math:`S = \sum_l s_l`, layer ``l``
    gets ``share = clamp(round(dim * s_l / S), 1, s_l)``, ``k_out = clamp(round(sqrt(share * o /
    c)), 1, o)`` (so ``k_out / k_in ~ o / c``) and ``k_in = clamp(round(share / k_out), 1, c)``.
    ``output_dim(model)`` (the sum of ``k_out * k_in``) may differ slightly from ``dim``.

    Accuracy: for rank-1 gradients (:math:`T = 1`, e.g. MLPs) an inner product is the product of
    two small sketches, :math:`(g^\top B B^\top g')(a^\top A A^\top a')`, so its error relative to
    the norms is about :math:`\sqrt{2/k_{out} + 2/k_{in}} \sim k^{-1/4}`, not a dense map's
    :math:`\sqrt{2/k}`: use a larger ``dim`` than with a dense projector (it is cheap here).

    Args:
        dim: target total feature size ``k``.
        task: defines the output that is differentiated and the out-to-loss weight.
        seed: factors are drawn on CPU from a SHA-256 hash of (seed, layer name).
        modules: names of ``nn.Linear`` modules (default: every Linear with a trainable weight,
            and then every trainable parameter of the model must belong to one of them).
        function: ``"output"`` (TRAK, influence queries) or ``"loss"``.
        chunk_size: examples per forward/backward pass.
    """

    dim: int
    task: Task = ClassificationTask()
    seed: int = 0
    modules: tuple[str, ...] | None = None
    function: TaskFunction = "output"
    chunk_size: int = 256
    # (name, side, rows, cols, device, dtype) -> factor (small: o*k_out + c*k_in); not compared.
    _cache: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for name in ("dim", "chunk_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"seed must be an int, got {self.seed!r}")
        if self.function not in ("output", "loss"):
            raise ValueError(f"function must be 'output' or 'loss', got {self.function!r}")
        if self.modules is not None:  # accept any sequence (e.g. a Hydra list); store a tuple
            object.__setattr__(self, "modules", tuple(self.modules))

    def with_seed(self, seed: int) -> KroneckerFeaturizer:
        """The same featurizer with other factors (e.g. per checkpoint)."""
        return replace(self, seed=seed)

    def config(self) -> dict:
        """JSON-able description; stores are keyed by it."""
        return {
            "featurizer": type(self).__name__,
            "dim": self.dim,
            "seed": self.seed,
            "task": type(self.task).__name__,
            "modules": list(self.modules) if self.modules is not None else None,
            "function": self.function,
        }

    def output_dim(self, model: nn.Module) -> int:
        r"""Realised feature dimension :math:`\sum_l k_{out,l} k_{in,l}` for ``model``."""
        return sum(layer.k_out * layer.k_in for layer in self._plan(model))

    def factors(self, model: nn.Module) -> dict[str, tuple[Tensor, Tensor]]:
        """Per layer name, ``(A [c, k_in], B [out, k_out])`` as float64 on CPU, for inspection."""
        cpu = torch.device("cpu")
        return {
            layer.name: tuple(self._factor(layer, side, cpu, torch.float64) for side in "AB")
            for layer in self._plan(model)
        }

    def __call__(self, model: nn.Module, inputs: Tensor, targets: Tensor) -> FeatureBatch:
        """Features ``[b, output_dim(model)]`` (float64 for a float64 model) and ``Q`` ``[b]``.

        Raises:
            ValueError: empty or mismatched inputs, bad ``modules``, Linear inputs without a leading
                batch dimension, or a non-finite feature (``NonFiniteGradientError``).
        """
        if len(inputs) == 0:
            raise ValueError("cannot featurize an empty set of examples")
        if len(inputs) != len(targets):
            raise ValueError(f"{len(inputs)} inputs but {len(targets)} targets")
        plan = self._plan(model)
        features, weights = [], []
        with evaluation_mode(model), self._recording(plan) as records:
            for start in range(0, len(inputs), self.chunk_size):
                stop = start + self.chunk_size
                x, y = inputs[start:stop], targets[start:stop]
                chunk, logits = self._chunk_features(model, plan, records, x, y)
                _check_finite(chunk, start, self.function)
                features.append(chunk)
                with torch.no_grad():  # Q from the same forward pass (cf. gradient.out_to_loss)
                    weights.append(self.task.out_to_loss(logits.detach(), y))
        return FeatureBatch(features=torch.cat(features), out_to_loss=torch.cat(weights))

    def _plan(self, model: nn.Module) -> list[_Layer]:
        chosen = _chosen_linears(model, self.modules)
        shapes = [(module.out_features, _columns(module)) for _, module in chosen]
        sizes = _factor_sizes(self.dim, shapes)
        return [_Layer(n, m, *size) for (n, m), size in zip(chosen, sizes, strict=True)]

    def _factor(self, layer: _Layer, side: str, device: torch.device, dtype: torch.dtype):
        """``A`` ``[c, k_in]`` (side "A") or ``B`` ``[out, k_out]`` (side "B"), cached."""
        out, columns = layer.module.out_features, _columns(layer.module)
        rows, cols = (columns, layer.k_in) if side == "A" else (out, layer.k_out)
        key = (layer.name, side, rows, cols, str(device), dtype)
        if key not in self._cache:
            generator = torch.Generator(device="cpu")
            generator.manual_seed(_stable_seed(self.seed, layer.name, side))
            bits = torch.randint(0, 2, (rows, cols), generator=generator, dtype=torch.int8)
            signs = bits.to(torch.float64) * 2.0 - 1.0
            self._cache[key] = (signs / math.sqrt(cols)).to(device=device, dtype=dtype)
        return self._cache[key]

    @contextlib.contextmanager
    def _recording(self, plan: list[_Layer]) -> Iterator[dict[str, list]]:
        """Forward hooks storing ``(A^T a [b, T, k_in], output)`` per call of each layer."""
        records: dict[str, list] = {layer.name: [] for layer in plan}
        handles = []
        try:
            for layer in plan:
                hook = self._hook(layer, records[layer.name])
                handles.append(layer.module.register_forward_hook(hook))
            yield records
        finally:
            for handle in handles:
                handle.remove()

    def _hook(self, layer: _Layer, record: list):
        def hook(module: nn.Module, args: tuple, output: Tensor) -> Tensor:
            with torch.no_grad():
                a = args[0].detach()
                a = a.to(_compute_dtype(a.dtype)).reshape(len(a), -1, a.shape[-1])  # [b, T, in]
                factor = self._factor(layer, "A", a.device, a.dtype)
                projected = a @ factor[: a.shape[-1]]
                if _columns(module) > a.shape[-1]:
                    projected += factor[-1]  # the bias's constant-1 input column
            record.append((projected, output))
            # Downstream layers get a copy: after an in-place op on it (ReLU(inplace=True)),
            # autograd.grad w.r.t. `output` would silently return the modified tensor's gradient.
            return output.clone()

        return hook

    def _chunk_features(self, model, plan, records, x: Tensor, y: Tensor):
        """Features ``[b, k]`` and logits of one chunk from one forward and one backward pass."""
        for record in records.values():
            record.clear()
        with torch.enable_grad():
            logits = model(x)
            total = getattr(self.task, self.function)(logits, y).sum()
            outputs = [output for record in records.values() for _, output in record]
            needed = outputs and total.requires_grad  # else no recorded output reaches the value
            grads = torch.autograd.grad(total, outputs, allow_unused=True) if needed else None
            gradients = iter(grads or [None] * len(outputs))
        blocks = []
        for layer in plan:
            dtype = _compute_dtype(total.dtype)
            block = torch.zeros(len(x), layer.k_out * layer.k_in, dtype=dtype, device=total.device)
            for projected, _ in records[layer.name]:
                gradient = next(gradients)
                if len(projected) != len(x):
                    raise ValueError(
                        f"module '{layer.name}' got an input with leading dimension "
                        f"{len(projected)} in a chunk of {len(x)} examples; Linear inputs must be "
                        "[batch, ..., in] for KroneckerFeaturizer"
                    )
                if gradient is not None:  # None: this output does not reach the task's value
                    block = block + self._block(layer, projected, gradient)
            blocks.append(block)
        return torch.cat(blocks, dim=1), logits

    def _block(self, layer: _Layer, projected: Tensor, gradient: Tensor) -> Tensor:
        r""":math:`\sum_t (B^\top g_t)(A^\top a_t)^\top` flattened to ``[b, k_out * k_in]``."""
        g = gradient.to(projected.dtype).reshape(len(projected), -1, gradient.shape[-1])
        g = g @ self._factor(layer, "B", g.device, g.dtype)  # [b, T, k_out]
        return (g.transpose(1, 2) @ projected).reshape(len(projected), -1)


def _factor_sizes(dim: int, shapes: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """``(k_out, k_in)`` per layer of gradient shape ``(out, c)`` (the rule in the class doc)."""
    total = sum(out * columns for out, columns in shapes)
    sizes = []
    for out, columns in shapes:
        share = min(out * columns, max(1, round(dim * out * columns / total)))
        k_out = min(out, max(1, round(math.sqrt(share * out / columns))))
        sizes.append((k_out, min(columns, max(1, round(share / k_out)))))
    return sizes


def _columns(module: nn.Linear) -> int:
    """Input columns of the gradient: ``in``, plus one for a trainable bias."""
    return module.in_features + int(module.bias is not None and module.bias.requires_grad)


def _chosen_linears(model: nn.Module, names: tuple[str, ...] | None) -> list[tuple[str, nn.Linear]]:
    """The selected Linear modules in model order, validated."""
    named = dict(model.named_modules())
    if names is None:
        return _all_linears(model, named)
    for name in names:
        module = named.get(name)
        if not isinstance(module, nn.Linear):
            found = "not a module of the model" if module is None else type(module).__name__
            raise ValueError(f"module '{name}' is {found}; KroneckerFeaturizer needs nn.Linear")
        if not module.weight.requires_grad:
            raise ValueError(f"module '{name}' has a frozen weight; choose trainable layers")
    return [(name, module) for name, module in named.items() if name in set(names)]


def _all_linears(model: nn.Module, named: dict) -> list[tuple[str, nn.Linear]]:
    chosen = [
        (n, m) for n, m in named.items() if isinstance(m, nn.Linear) and m.weight.requires_grad
    ]
    covered = {id(p) for _, m in chosen for p in m.parameters()}
    uncovered = [n for n, p in model.named_parameters() if p.requires_grad and id(p) not in covered]
    if uncovered:
        raise ValueError(
            f"trainable parameters {uncovered} are not in any nn.Linear; pass `modules` to "
            "attribute through chosen Linear layers only, or use GradientFeaturizer"
        )
    if not chosen:
        raise ValueError("the model has no nn.Linear module with a trainable weight")
    return chosen


def _stable_seed(seed: int, name: str, side: str) -> int:
    """Generator seed: SHA-256 of (seed, layer name, side), stable across processes and machines."""
    digest = hashlib.sha256(f"kronecker\x00{seed}\x00{name}\x00{side}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _check_finite(features: Tensor, offset: int, function: str) -> None:
    finite = torch.isfinite(features).all(dim=1)
    if not bool(finite.all()):
        first = int((~finite).nonzero()[0, 0]) + offset
        raise NonFiniteGradientError(
            f"the projected gradient of the {function} for example {first} is not finite; "
            "check the model's outputs and the input for that example"
        )
