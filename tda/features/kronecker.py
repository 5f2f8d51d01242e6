r"""Structured projections of Linear and conv layer gradients that never form per-sample gradients.

For a Linear layer with weight :math:`W \in \mathbb{R}^{o \times n}` (a trainable bias adds an
input column: :math:`c = n + 1`; a ``groups=1`` convolution is one over its input patches,
:math:`n = in \times` kernel, :mod:`tda.layer_positions`), the per-sample gradient of :math:`h_i` is
:math:`G_i = \sum_t g_{i,t} a_{i,t}^\top`, with :math:`a_{i,t}` the layer's input at position
:math:`t` (a 1 appended for the bias) and :math:`g_{i,t} = \partial h_i / \partial y_{i,t}` for the
layer's output :math:`y`. Both structures sketch the two sides, :math:`B^\top g_{i,t}` and
:math:`A^\top a_{i,t}` (Rademacher :math:`A` ``[c, k_in]``, :math:`B` ``[o, k_out]``), then combine:

* ``"kronecker"``: :math:`P = B \otimes A` (entries of :math:`A`, :math:`B`:
  :math:`\pm 1/\sqrt{k_{in}}`, :math:`\pm 1/\sqrt{k_{out}}`), features
  :math:`B^\top G_i A = \sum_t (B^\top g_{i,t})(A^\top a_{i,t})^\top`, ``k_out * k_in`` per layer at
  :math:`O(T(o k_{out} + c k_{in} + k_{out} k_{in}))` per example.
* ``"khatri_rao"``: :math:`P` has the :math:`k` columns :math:`b_j \otimes a_j` (entries of
  :math:`A` :math:`\pm 1/\sqrt{k}`, of :math:`B` :math:`\pm 1`; :math:`k_{in} = k_{out} = k`),
  features :math:`\phi_{i,j} = b_j^\top G_i a_j = \sum_t (b_j^\top g_{i,t})(a_j^\top a_{i,t})`,
  at :math:`O(T k (o + c))` per example.

Either way :math:`\mathbb{E}[P P^\top] = I`, so inner products are preserved in expectation, and the
cost is far below a dense map's :math:`O(o c k)`. They differ in variance. For rank-1 gradients
(:math:`T = 1`, e.g. MLPs), a Kronecker inner product is the product of two small sketches,
:math:`(g^\top B B^\top g')(a^\top A A^\top a')`, with an error relative to the norms of about
:math:`\sqrt{2/k_{out} + 2/k_{in}} \sim k^{-1/4}`. A Khatri-Rao inner product averages :math:`k`
independent terms :math:`(b_j^\top g)(b_j^\top g')(a_j^\top a)(a_j^\top a')`, so its error falls as
:math:`k^{-1/2}` like a dense JL map's, with a constant a few times larger (fourth moments of two
sketches multiply).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Literal, NamedTuple

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from tda.arguments import check_positive_int
from tda.data.examples import check_input_dtype
from tda.device import to_device_of
from tda.dtypes import compute_dtype
from tda.features.gradient import FeatureBatch, task_config
from tda.features.layer_sketch import (
    khatri_rao_block,
    kronecker_block,
    kronecker_sizes,
    proportional_shares,
)
from tda.grads import TaskFunction, check_finite_examples, evaluation_mode
from tda.layer_capture import capture_layer_calls, refuse_batch_statistics
from tda.layer_positions import is_positional
from tda.projection.base import check_seed, hash_to_int63, rademacher
from tda.task import ClassificationTask, Task

Structure = Literal["kronecker", "khatri_rao"]


class _Layer(NamedTuple):
    name: str
    module: nn.Module  # nn.Linear or a groups=1 convolution
    k_out: int  # columns of B
    k_in: int  # columns of A
    width: int  # features of the layer: k_out * k_in (kronecker) or k_out == k_in (khatri_rao)


@dataclass(frozen=True)
class KroneckerFeaturizer:
    r"""Features :math:`\phi_i = [\phi_{i,l}]_l` of Linear / conv layers, Kronecker or Khatri-Rao
    sketched.

    Per layer ``l``, :math:`\phi_{i,l} = \operatorname{vec}(B_l^\top G_{i,l} A_l)` (``"kronecker"``)
    or :math:`\phi_{i,l,j} = b_{l,j}^\top G_{i,l} a_{l,j}` (``"khatri_rao"``); see the module doc.
    Either block equals the row-major flattening of ``[grad W | grad b]`` times the layer's ``P``:
    ``torch.kron(B, A)``, or the matrix whose column ``j`` is ``torch.kron(B[:, j], A[:, j])``.

    Per chunk: one forward pass, whose hooks record each layer's input already multiplied by
    :math:`A_l`, and one backward pass of ``task.<function>(logits, targets).sum()`` to the layers'
    outputs. Differentiating the sum gives every example's :math:`g_{i,t}` at once because the
    model runs in eval mode, where examples do not interact; a BatchNorm without running statistics
    (``track_running_stats=False``) normalises by the chunk's statistics even then, so such a model
    is refused (use ``GradientFeaturizer``). Blocks are concatenated in model order.

    Size rules (deterministic), with :math:`s_l = o_l c_l` the layer's parameter count:
    ``"khatri_rao"`` gives each of the :math:`L` layers one feature, then splits the other
    ``dim - L`` in proportion to :math:`s_l` by largest remainder
    (``layer_sketch.proportional_shares``), so ``output_dim(model) == dim``. ``"kronecker"``
    factors a share :math:`\approx` ``dim * s_l / S`` into ``k_out * k_in`` with ``k_out / k_in ~
    o / c`` (``layer_sketch.kronecker_sizes``), so ``output_dim(model)`` may differ from ``dim``.

    Which to choose: ``"khatri_rao"`` (the default) in general. Measured on the MNIST-1D MLP
    (23,050 parameters; ``benchmarks/bench_kronecker.py``, ``results/kronecker.json``): the
    correlation of feature inner products with exact per-sample-gradient inner products (100 test
    examples, pairs ``i < j``, mean of 5 seeds) at ``dim`` 512 / 2048 / 8192 was 0.92 / 0.98 / 0.99
    for Khatri-Rao (relative RMS error 0.55 / 0.27 / 0.12), 0.45 / 0.80 / 0.91 for Kronecker
    (1.33 / 0.62 / 0.62) and 0.99 / 0.998 / 0.999 for a dense JL map (0.15 / 0.07 / 0.04).
    Throughput (float32, one CPU thread, busy shared machine, +-20%) at ``dim`` 512 / 2048:
    Khatri-Rao ~90k / ~40k examples/s, Kronecker ~95k / ~55k, dense ~3k / ~1k, sparse ~5k / ~5k:
    the forward and backward passes weigh about as much as Khatri-Rao's extra work, so Kronecker
    is at most ~1.5x faster. Kronecker's error also has a floor:
    ``k_out <= o``, so a layer with few outputs (a 10-class head) keeps a coarse output-side
    sketch whatever ``dim`` is (on that head alone, relative RMS ~0.5 even at ``k_out * k_in = p``).
    ``"kronecker"`` remains the cheaper choice for long sequences: Khatri-Rao's
    :math:`T k_l (o + c)` per layer exceeds the layer's own forward cost :math:`T o c` once
    :math:`k_l > oc/(o + c)`, while Kronecker's :math:`T (o k_{out} + c k_{in})` stays small (not
    measured here). Where inner products must be accurate to a few percent and ``p * dim`` fits the
    budget, use ``GradientFeaturizer`` with a dense or sparse projector.

    Args:
        dim: target total feature size ``k``.
        task: defines the output that is differentiated and the out-to-loss weight.
        seed: factors are drawn on CPU from a SHA-256 hash of (seed, layer name, side).
        modules: names of ``nn.Linear`` or ``groups=1`` ``nn.Conv1d`` / ``nn.Conv2d`` modules
            whose weight and bias are plain parameters, not computed by a parametrization
            (``weight_norm``, ``spectral_norm``), whose gradient the hooks would give instead
            (default: every such layer with a trainable weight, and then every trainable
            parameter of the model must be a weight or bias of one of them).
        function: ``"output"`` (TRAK, influence queries) or ``"loss"``.
        chunk_size: examples per forward/backward pass.
        structure: ``"khatri_rao"`` or ``"kronecker"`` (see above).
    """

    dim: int
    task: Task = ClassificationTask()
    seed: int = 0
    modules: tuple[str, ...] | None = None
    function: TaskFunction = "output"
    chunk_size: int = 256
    structure: Structure = "khatri_rao"
    # (name, side, rows, cols, device, dtype) -> factor (o*k_out + c*k_in entries); not compared.
    _cache: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for name in ("dim", "chunk_size"):
            check_positive_int(name, getattr(self, name))
        check_seed(self.seed)
        if self.function not in ("output", "loss"):
            raise ValueError(f"function must be 'output' or 'loss', got {self.function!r}")
        if self.structure not in ("kronecker", "khatri_rao"):
            raise ValueError(
                f"structure must be 'kronecker' or 'khatri_rao', got {self.structure!r}"
            )
        if self.modules is not None:  # accept any sequence (e.g. a Hydra list); store a tuple
            object.__setattr__(self, "modules", tuple(self.modules))

    def with_seed(self, seed: int) -> KroneckerFeaturizer:
        """The same featurizer with other factors (e.g. per checkpoint)."""
        return replace(self, seed=seed)

    def config(self) -> dict:
        """JSON-able description; stores are keyed by it."""
        return {
            "featurizer": type(self).__name__,
            "structure": self.structure,
            "dim": self.dim,
            "seed": self.seed,
            "task": task_config(self.task),
            "modules": list(self.modules) if self.modules is not None else None,
            "function": self.function,
        }

    def parameter_names(self, model: nn.Module) -> list[str]:
        """Names of the parameters differentiated for ``model``: each chosen layer's weight, and
        its bias where trainable (the bias's input column), in model order."""
        chosen = _chosen_layers(model, self.modules)
        return [
            f"{name}.{attribute}".lstrip(".")  # a bare Linear model is named ""
            for name, module in chosen
            for attribute in (("weight", "bias") if _trainable_bias(module) else ("weight",))
        ]

    def output_dim(self, model: nn.Module) -> int:
        """Realised feature dimension for ``model``: the sum of the layers' block widths."""
        return sum(layer.width for layer in self._plan(model))

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
            ValueError: empty or mismatched inputs, floating inputs of another dtype than the
                model, bad ``modules``, a parametrized layer, a
                layer whose weight is tied to another module's, used without calling the layer
                (``nn.MultiheadAttention``'s ``out_proj``) or used directly besides its calls (a
                tied decoder), a BatchNorm without running statistics, Linear inputs without a
                leading batch dimension, ``dim`` below the number of layers (``"khatri_rao"``),
                or a non-finite feature (``NonFiniteGradientError``).
        """
        if len(inputs) == 0:
            raise ValueError("cannot featurize an empty set of examples")
        if len(inputs) != len(targets):
            raise ValueError(f"{len(inputs)} inputs but {len(targets)} targets")
        check_input_dtype(model, inputs)
        plan = self._plan(model)
        features, weights = [], []
        with evaluation_mode(model):
            for start in range(0, len(inputs), self.chunk_size):
                stop = start + self.chunk_size
                x, y = to_device_of(model, inputs[start:stop], targets[start:stop])
                chunk, logits = self._chunk_features(model, plan, x, y)
                check_finite_examples(chunk, start, f"projected gradient of the {self.function}")
                features.append(chunk)
                with torch.no_grad():  # Q from the same forward pass (cf. gradient.out_to_loss)
                    weights.append(self.task.out_to_loss(logits.detach(), y))
        return FeatureBatch(features=torch.cat(features), out_to_loss=torch.cat(weights))

    def _plan(self, model: nn.Module) -> list[_Layer]:
        chosen = _chosen_layers(model, self.modules)
        shapes = [(module.weight.shape[0], _columns(module)) for _, module in chosen]
        if self.structure == "kronecker":
            sizes = [(o, i, o * i) for o, i in kronecker_sizes(self.dim, shapes)]
        else:
            shares = proportional_shares(self.dim, [out * columns for out, columns in shapes])
            sizes = [(k, k, k) for k in shares]
        return [_Layer(n, m, *size) for (n, m), size in zip(chosen, sizes, strict=True)]

    def _factor(self, layer: _Layer, side: str, device: torch.device, dtype: torch.dtype):
        """``A`` ``[c, k_in]`` (side "A") or ``B`` ``[out, k_out]`` (side "B"), cached."""
        out, columns = layer.module.weight.shape[0], _columns(layer.module)
        rows, cols = (columns, layer.k_in) if side == "A" else (out, layer.k_out)
        key = (layer.name, side, rows, cols, str(device), dtype)
        if key not in self._cache:
            signs = rademacher(rows, cols, hash_to_int63("kronecker", self.seed, layer.name, side))
            # Khatri-Rao puts the whole 1/sqrt(k) column scale of b_j kron a_j on A.
            scaled = side == "A" or self.structure == "kronecker"
            factor = signs / math.sqrt(cols) if scaled else signs
            self._cache[key] = factor.to(device=device, dtype=dtype)
        return self._cache[key]

    def _project_input(self, plan: list[_Layer]):
        """``prepare`` for the hooks: ``A^T a`` ``[b, T, k_in]`` from the input ``a [b, T, in]``."""
        layers = {layer.name: layer for layer in plan}

        def project(name: str, a: Tensor) -> Tensor:
            layer = layers[name]
            factor = self._factor(layer, "A", a.device, a.dtype)
            projected = a @ factor[: a.shape[-1]]
            if _columns(layer.module) > a.shape[-1]:
                projected += factor[-1]  # the bias's constant-1 input column
            return projected

        return project

    def _chunk_features(self, model, plan, x: Tensor, y: Tensor):
        """Features ``[b, k]`` and logits of one chunk from one forward and one backward pass."""
        modules = [(layer.name, layer.module) for layer in plan]
        task_function = getattr(self.task, self.function)
        calls, logits = capture_layer_calls(
            model, modules, x, lambda out: task_function(out, y), self._project_input(plan)
        )
        dtype = compute_dtype(logits.dtype)
        blocks = []
        for layer in plan:
            block = torch.zeros(len(x), layer.width, dtype=dtype, device=logits.device)
            for call in calls[layer.name]:
                block = block + self._block(layer, call.inputs, call.output_gradients)
            blocks.append(block)
        return torch.cat(blocks, dim=1), logits

    def _block(self, layer: _Layer, projected: Tensor, gradient: Tensor) -> Tensor:
        """Block ``[b, width]`` of one call: ``A^T a`` ``[b, T, k_in]``, ``g`` ``[b, T, out]``."""
        g = gradient @ self._factor(layer, "B", gradient.device, gradient.dtype)  # [b, T, k_out]
        combine = kronecker_block if self.structure == "kronecker" else khatri_rao_block
        return combine(g, projected)


def _columns(module: nn.Module) -> int:
    """Input columns of the gradient: ``in`` (times the kernel), plus one for a trainable bias."""
    return module.weight[0].numel() + int(_trainable_bias(module))


def _trainable_bias(module: nn.Module) -> bool:
    return module.bias is not None and module.bias.requires_grad


def _chosen_layers(model: nn.Module, names: tuple[str, ...] | None) -> list[tuple[str, nn.Module]]:
    """The selected Linear / convolution modules in model order, validated."""
    refuse_batch_statistics(
        model, "use GradientFeaturizer, which differentiates each example alone"
    )
    named = dict(model.named_modules())
    chosen = _all_layers(model, named) if names is None else _named_layers(named, names)
    _check_unshared(model, chosen)
    return chosen


def _named_layers(named: dict, names: tuple[str, ...]) -> list[tuple[str, nn.Module]]:
    for name in names:
        module = named.get(name)
        if module is None or not is_positional(module):
            found = "not a module of the model" if module is None else type(module).__name__
            raise ValueError(
                f"module '{name}' is {found}; KroneckerFeaturizer needs nn.Linear or a groups=1 "
                "nn.Conv1d / nn.Conv2d"
            )
        if not module.weight.requires_grad:
            raise ValueError(f"module '{name}' has a frozen weight; choose trainable layers")
        _check_plain(name, module)
    return [(name, module) for name, module in named.items() if name in set(names)]


def _all_layers(model: nn.Module, named: dict) -> list[tuple[str, nn.Module]]:
    chosen = [(n, m) for n, m in named.items() if is_positional(m) and m.weight.requires_grad]
    for name, module in chosen:
        _check_plain(name, module)
    covered = {id(p) for _, m in chosen for p in m.parameters(recurse=False)}
    uncovered = [n for n, p in model.named_parameters() if p.requires_grad and id(p) not in covered]
    if uncovered:
        raise ValueError(
            f"trainable parameters {uncovered} are not in any nn.Linear or groups=1 convolution; "
            "pass `modules` to attribute through chosen layers only, or use GradientFeaturizer"
        )
    if not chosen:
        raise ValueError("the model has no Linear or convolution module with a trainable weight")
    return chosen


def _check_plain(name: str, module: nn.Module) -> None:
    """Refuse a layer whose weight or bias is computed from other parameters (``weight_norm``,
    ``spectral_norm``, any parametrization): its hooks give the gradient of the computed tensor,
    not of the trainable parameters."""
    derived = [
        attribute
        for attribute in ("weight", "bias")
        if getattr(module, attribute) is not None
        and not isinstance(getattr(module, attribute), nn.Parameter)
    ]
    if derived or parametrize.is_parametrized(module):
        raise ValueError(
            f"module '{name}' has a parametrized {' and '.join(derived) or 'tensor'} (computed "
            "from other parameters, e.g. by weight_norm or spectral_norm), so hooks would give "
            "the gradient of the computed tensor, not of the trainable parameters; remove the "
            "parametrization, leave the layer out, or use GradientFeaturizer"
        )


def _check_unshared(model: nn.Module, chosen: list[tuple[str, nn.Module]]) -> None:
    """Refuse layers with a parameter another module also holds (tied weights): the gradient of
    a shared weight also flows through the other module, which the layer's hooks never see."""
    owners = Counter(id(p) for module in model.modules() for p in module.parameters(recurse=False))
    shared = [
        name
        for name, module in chosen
        if any(owners[id(p)] > 1 for p in module.parameters(recurse=False) if p.requires_grad)
    ]
    if shared:
        raise ValueError(
            f"modules {shared} share a trainable parameter with another module (tied weights), "
            "so their calls do not give its whole gradient; untie it or leave these layers out"
        )
