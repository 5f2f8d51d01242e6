r"""Empirical neural tangent kernels (NTKs) of a trained network, computed in chunks.

With :math:`J(x) \in \mathbb{R}^{C \times p}` the Jacobian of the logits (rows
:math:`\nabla_\theta f_c(x)`; :mod:`tda.ntk.jacobian`), the kernels of Engel et al. 2023
("Faithful and Efficient Explanations for Neural Networks via Neural Tangent Kernel Surrogate
Models", Sec. 3) are

.. math::
    K_{\text{trace}}(x, x') = \operatorname{tr}\big(J(x) J(x')^\top\big)
        = \sum_c \nabla_\theta f_c(x) \cdot \nabla_\theta f_c(x'), \qquad
    K_{\text{pseudo}}(x, x') = \frac1C \nabla_\theta \Big(\sum_c f_c(x)\Big) \cdot
        \nabla_\theta \Big(\sum_c f_c(x')\Big),

the pseudo-NTK with the :math:`1/C` of Mohamadi et al. 2023. Each is a linear kernel on
per-example features: :math:`\Phi(x) = [\nabla f_1(x), \dots, \nabla f_C(x)]` (``C * p`` wide) for
the trace NTK and :math:`\nabla \sum_c f_c(x) / \sqrt{C}` (``p`` wide) for the pseudo-NTK. The
projected variants apply one JL projector :math:`P \in \mathbb{R}^{p \times k}` to every gradient
(:math:`\mathbb{E}[PP^\top] = I`, so the expected kernel is unchanged), which makes the features
``C * k`` or ``k`` wide: memory and the cost of the kernel product scale with ``k``.

Neither the ``n x n x C x C`` kernel nor the ``[n, C, p]`` Jacobians of a whole set are ever
formed: gradients are made ``chunk_size`` examples at a time and projected at once; only the
features of the right-hand set (``[n2, width]``) and the kernel (``[n1, n2]``) are kept.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch
from torch import Tensor, nn

from tda.arguments import check_positive_int
from tda.data.examples import check_input_dtype
from tda.device import to_device_of
from tda.grads import evaluation_mode, iter_per_sample_gradients, parameter_count
from tda.ntk.jacobian import iter_output_jacobians
from tda.projection import Projector

NTKKind = Literal["trace", "pseudo"]
_GIB = 2**30


class _Memory(NamedTuple):
    """The terms of a kernel call's peak memory (bytes, or values where named so)."""

    num_outputs: int  # C, the logits per example
    element: int  # bytes per feature / gradient value
    width: int  # feature values per example
    rows: int  # kernel rows
    chunk: int  # examples per chunk
    kernel: int  # bytes of the float64 kernel (0: none kept)
    gradients: int  # gradient values held per example in a chunk
    n_right: int  # examples whose features are kept

    @property
    def total(self) -> int:
        transient = self.chunk * (self.gradients + self.width) * self.element
        return self.n_right * self.width * self.element + self.kernel + transient


class KernelTooLargeError(MemoryError):
    """A kernel (or the features it needs) would not fit in the memory allowed for it."""

    def __init__(self, message: str, required_bytes: int) -> None:
        super().__init__(message)
        self.required_bytes = required_bytes


class DegenerateKernelError(ValueError):
    """A kernel matrix holds NaN or infinite entries, or is constant, so no model can be fit."""


GRADIENT_COPIES = 3
"""Copies of a chunk's gradients alive at the peak: ``vmap(jacrev)``'s per-parameter blocks,
their concatenation and the projection's working copy (measured: a projected chunk peaks at
about 3x its Jacobian's bytes, an unprojected one at about 1.6x)."""


@dataclass(frozen=True)
class _SummedLogits:
    """Task whose output is :math:`\\sum_c f_c`: the pseudo-NTK's differentiated function."""

    def output(self, logits: Tensor, target: Tensor) -> Tensor:
        return logits.sum(-1)

    def loss(self, logits: Tensor, target: Tensor) -> Tensor:
        return logits.sum(-1)

    def out_to_loss(self, logits: Tensor, target: Tensor) -> Tensor:
        return torch.ones_like(logits[..., 0])


@dataclass(frozen=True)
class EmpiricalNTK:
    r"""The trace or pseudo empirical NTK of a model, exact or JL-projected.

    Args:
        kind: ``"trace"`` (sum over the class gradients' inner products) or ``"pseudo"``
            (gradient of the summed logits, divided by :math:`\sqrt C`).
        projector: JL projector applied to every gradient (e.g. ``DenseProjector(dim=512)``);
            ``None`` gives the exact kernel.
        parameters: names of the parameters to differentiate (default: all trainable ones).
        chunk_size: examples per vectorised Jacobian call: bounds the transient memory at
            about ``3 * chunk_size * C * p`` floats (:data:`GRADIENT_COPIES`).
        memory_limit_bytes: largest footprint (kept features + kernel + one chunk) a call may
            take; larger requests raise :class:`KernelTooLargeError` with what they would need.
    """

    kind: NTKKind = "trace"
    projector: Projector | None = None
    parameters: tuple[str, ...] | None = None
    chunk_size: int = 64
    memory_limit_bytes: int = 2 * _GIB

    def __post_init__(self) -> None:
        if self.kind not in ("trace", "pseudo"):
            raise ValueError(f"kind must be 'trace' or 'pseudo', got {self.kind!r}")
        for name in ("chunk_size", "memory_limit_bytes"):
            check_positive_int(name, getattr(self, name))
        if self.parameters is not None:
            object.__setattr__(self, "parameters", tuple(self.parameters))

    def feature_width(self, model: nn.Module, num_outputs: int) -> int:
        """Width of :meth:`features`: ``C * k`` (trace) or ``k`` (pseudo); ``k = p`` unprojected."""
        p = parameter_count(model, self.parameters)
        k = p if self.projector is None else self.projector.output_dim(p)
        return num_outputs * k if self.kind == "trace" else k

    def features(self, model: nn.Module, inputs: Tensor) -> Tensor:
        r"""Features ``[n, width]`` whose inner products are the kernel: :math:`K = \Phi\Phi^\top`.

        Raises:
            KernelTooLargeError: the features would exceed ``memory_limit_bytes``.
            ValueError: floating inputs of another dtype than the model.
        """
        self.check_memory(model, inputs, n_left=0, n_right=len(inputs))
        features = None
        start = 0
        for chunk in self._feature_chunks(model, inputs):
            if features is None:  # filled in place: a list + cat would hold the features twice
                features = chunk.new_empty(len(inputs), chunk.shape[1])
            features[start : start + len(chunk)] = chunk
            start += len(chunk)
        return features

    def matrix(self, model: nn.Module, left: Tensor, right: Tensor | None = None) -> Tensor:
        """Kernel ``[n1, n2]`` (float64) between two sets of inputs; ``right=None``: ``left``.

        The right set's features are kept; the left set is streamed chunk by chunk. Computed on
        the model's device; returned on the device of ``left``.

        Raises:
            KernelTooLargeError: features + kernel + one chunk would exceed the memory limit.
            DegenerateKernelError: the kernel has NaN or infinite entries.
        """
        if right is None:
            self.check_memory(model, left, n_left=0, n_right=len(left), square=True)
            features = self.features(model, left)
            gram = kernel_from_features(features, features)
            # exactly symmetric: a BLAS product need not round (i, j) and (j, i) alike
            return finite_kernel((gram + gram.T) / 2).to(left.device)
        self.check_memory(model, left, n_left=len(left), n_right=len(right))
        return self.cross_matrix(model, left, self.features(model, right)).to(left.device)

    def cross_matrix(self, model: nn.Module, left: Tensor, right_features: Tensor) -> Tensor:
        """Kernel ``[n1, n2]`` between ``left`` inputs and already computed right features."""
        kernel = torch.empty(
            len(left), len(right_features), dtype=torch.float64, device=right_features.device
        )
        start = 0
        for chunk in self._feature_chunks(model, left):
            kernel[start : start + len(chunk)] = kernel_from_features(chunk, right_features)
            start += len(chunk)
        return finite_kernel(kernel)

    def required_bytes(
        self, model: nn.Module, inputs: Tensor, n_left: int, n_right: int, square: bool = False
    ) -> int:
        """Peak bytes of a call: kept right features, the float64 kernel and one chunk's work."""
        return self._memory(model, inputs, n_left, n_right, square).total

    def _memory(
        self, model: nn.Module, inputs: Tensor, n_left: int, n_right: int, square: bool
    ) -> _Memory:
        num_outputs, element = _output_shape(model, inputs)
        p = parameter_count(model, self.parameters)
        rows = n_right if square else n_left
        return _Memory(
            num_outputs=num_outputs,
            element=element,
            width=self.feature_width(model, num_outputs),
            rows=rows,
            chunk=min(self.chunk_size, max(n_left, n_right)),
            kernel=rows * n_right * 8 if (square or n_left) else 0,
            gradients=self._gradient_width(num_outputs, p),
            n_right=n_right,
        )

    def _gradient_width(self, num_outputs: int, p: int) -> int:
        """Gradient values held per example while a chunk is worked: the ``[C, p]`` Jacobian for
        the trace NTK, one ``p``-gradient of the summed logits for the pseudo NTK, times
        :data:`GRADIENT_COPIES`."""
        return GRADIENT_COPIES * (num_outputs * p if self.kind == "trace" else p)

    def check_memory(
        self, model: nn.Module, inputs: Tensor, n_left: int, n_right: int, square: bool = False
    ) -> None:
        """Raise :class:`KernelTooLargeError` naming the size and a way out if over the limit."""
        memory = self._memory(model, inputs, n_left, n_right, square)
        if memory.total <= self.memory_limit_bytes:
            return
        raise KernelTooLargeError(self._refusal(memory), memory.total)

    def _refusal(self, memory: _Memory) -> str:
        m = memory
        fixed = m.kernel + m.chunk * m.gradients * m.element
        room = self.memory_limit_bytes - fixed
        per_column = (m.n_right + m.chunk) * (m.num_outputs if self.kind == "trace" else 1)
        largest_k = room // (per_column * m.element) if room > 0 else 0
        shape = f"{m.rows} x {m.n_right}" if m.kernel else f"{m.n_right} examples"
        advice = (
            f"a projector with dim <= {largest_k} (e.g. projector=DenseProjector(dim="
            f"{_round_down(largest_k)})) fits"
            if largest_k >= 1
            else "even a projection does not fit: the kernel and one chunk's gradients alone take "
            f"{_size(fixed)}"
        )
        return (
            f"the {self.kind} NTK of {shape} would need {_size(m.total)} "
            f"({m.n_right} x {m.width} features of {m.element} bytes, a {_size(m.kernel)} kernel, "
            f"chunks of {m.chunk} x {m.gradients // GRADIENT_COPIES} gradient values, held "
            f"{GRADIENT_COPIES}x at the peak), above memory_limit_bytes = "
            f"{_size(self.memory_limit_bytes)}. Options: {advice}; a smaller chunk_size; or "
            "fewer examples (split the query set and call once per part)."
        )

    def _feature_chunks(self, model: nn.Module, inputs: Tensor):
        if self.kind == "pseudo":
            num_outputs, _ = _output_shape(model, inputs)
            gradients = iter_per_sample_gradients(
                model,
                _SummedLogits(),
                inputs,
                torch.zeros(len(inputs), dtype=torch.long, device=inputs.device),
                parameters=self.parameters,
                chunk_size=self.chunk_size,
            )
            for chunk in gradients:
                yield self._project(chunk) / math.sqrt(num_outputs)
            return
        for jacobian in iter_output_jacobians(
            model, inputs, parameters=self.parameters, chunk_size=self.chunk_size
        ):
            batch, classes, p = jacobian.shape
            projected = self._project(jacobian.reshape(batch * classes, p))
            yield projected.reshape(batch, -1)  # [b, C * k], class-major within a row

    def _project(self, gradients: Tensor) -> Tensor:
        return gradients if self.projector is None else self.projector.project(gradients)


def kernel_from_features(left: Tensor, right: Tensor) -> Tensor:
    r""":math:`\Phi_1 \Phi_2^\top` as float64 ``[n1, n2]``, in the features' dtype."""
    return (left @ right.T).to(torch.float64)


def finite_kernel(kernel: Tensor) -> Tensor:
    """``kernel`` itself if every entry is finite, else :class:`DegenerateKernelError`."""
    bad = ~torch.isfinite(kernel)
    if bool(bad.any()):
        row, column = (int(i) for i in bad.nonzero()[0])
        raise DegenerateKernelError(
            f"the kernel has {int(bad.sum())} non-finite entries (first at [{row}, {column}]); "
            "gradients overflowed: check the model's weights and inputs, or use float64"
        )
    return kernel


def check_kernel(kernel: Tensor, name: str = "kernel") -> Tensor:
    """Validate a kernel before fitting: finite and not constant (a constant carries no signal).

    Raises:
        DegenerateKernelError: NaN/infinite entries, or every entry equal (to 1e-12 relative).
    """
    finite_kernel(kernel)
    spread = float(kernel.max() - kernel.min())
    scale = float(kernel.abs().max())
    if spread <= 1e-12 * max(scale, 1e-300):
        raise DegenerateKernelError(
            f"the {name} is constant (every entry {float(kernel.flatten()[0]):.6g}): it cannot "
            "tell examples apart; the network's gradients do not depend on the input (untrained "
            "or dead network, identical inputs?)"
        )
    return kernel


@torch.no_grad()
def _output_shape(model: nn.Module, inputs: Tensor) -> tuple[int, int]:
    """``(C, bytes per feature element)`` from one forward pass on the first input: the first
    forward pass of every kernel computation, so floating inputs of another dtype than the model
    are refused here."""
    check_input_dtype(model, inputs)
    with evaluation_mode(model):
        logits = model(*to_device_of(model, inputs[:1]))
    element = 8 if logits.dtype == torch.float64 else 4
    return logits.shape[-1], element


def _round_down(value: int) -> int:
    return 2 ** int(math.log2(value)) if value >= 1 else 0


def _size(count: int) -> str:
    for unit, scale in (("GiB", _GIB), ("MiB", 2**20), ("KiB", 2**10)):
        if count >= scale:
            return f"{count / scale:.1f} {unit}"
    return f"{count} B"
