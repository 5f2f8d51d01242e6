r"""Per-example output Jacobians, chunked: the gradients every empirical NTK is built from.

For a network with logits :math:`f(x;\theta) \in \mathbb{R}^C`, the Jacobian of one example is
:math:`J(x) = \partial f(x;\theta) / \partial\theta \in \mathbb{R}^{C \times p}`, row ``c`` being
:math:`\nabla_\theta f_c(x)`, flattened in the parameter order of :mod:`tda.grads`. It is computed
with ``vmap(jacrev(functional_call(...)))`` over chunks of examples, so memory is bounded by
``chunk_size * C * p`` floats.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call, jacrev, vmap

from tda.arguments import check_positive_int
from tda.data.examples import check_input_dtype
from tda.device import to_device_of
from tda.grads import NonFiniteGradientError, evaluation_mode, frozen_state, select_parameters


def iter_output_jacobians(
    model: nn.Module,
    inputs: Tensor,
    *,
    parameters: Sequence[str] | None = None,
    chunk_size: int = 64,
) -> Iterator[Tensor]:
    """Yield Jacobians ``[chunk, C, p]`` of the logits for consecutive chunks of ``inputs``.

    Args:
        model: the network, evaluated in eval mode with its current parameters and buffers.
        inputs: ``[n, ...]`` examples on the model's device.
        parameters: names of the parameters to differentiate (default: all trainable ones).
        chunk_size: examples per vectorised call.

    Raises:
        ValueError: no examples, floating inputs of another dtype than the model, or a bad
            ``chunk_size``.
        NonFiniteGradientError: a Jacobian entry is NaN or infinite (the example is named).
    """
    if len(inputs) == 0:
        raise ValueError("cannot compute output Jacobians of an empty set of examples")
    check_positive_int("chunk_size", chunk_size)
    check_input_dtype(model, inputs)
    params = select_parameters(model, parameters)
    frozen = frozen_state(model, params)

    def logits_of_one(params: dict[str, Tensor], x: Tensor) -> Tensor:
        return functional_call(model, {**frozen, **params}, (x.unsqueeze(0),)).squeeze(0)

    batched = vmap(jacrev(logits_of_one), in_dims=(None, 0))
    with evaluation_mode(model):
        for start in range(0, len(inputs), chunk_size):
            (chunk,) = to_device_of(model, inputs[start : start + chunk_size])
            blocks = batched(params, chunk)  # name -> [b, C, *shape]
            flat = [block.reshape(len(chunk), block.shape[1], -1) for block in blocks.values()]
            jacobian = torch.cat(flat, dim=2)
            _check_finite(jacobian, start)
            yield jacobian


def _check_finite(jacobian: Tensor, offset: int) -> None:
    if bool(torch.isfinite(jacobian.sum())):
        return
    finite = torch.isfinite(jacobian.flatten(1)).all(dim=1)
    if not bool(finite.all()):
        first = int((~finite).nonzero()[0, 0]) + offset
        raise NonFiniteGradientError(
            f"the output Jacobian of example {first} is not finite; check the model's outputs "
            "and the input for that example"
        )
