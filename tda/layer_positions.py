r"""Layers as :math:`y_t = W a_t + b` at positions :math:`t`: Linear layers and convolutions.

A Linear layer applied to ``[b, ..., in]`` acts at every position of its middle dimensions. A
``Conv1d`` / ``Conv2d`` with ``groups=1`` is a Linear layer over patches: at output position
:math:`t`, :math:`y_t = W a_t + b` with :math:`W` the weight as ``[out, in * prod(kernel)]``
(row-major) and :math:`a_t` the input patch its kernel covers, flattened channel first, then
kernel offsets (the order of ``F.unfold``, which is the weight's). Either way the per-example
weight gradient is :math:`\sum_t g_t a_t^\top` with :math:`g_t = \partial h / \partial y_t`, the
form that K-FAC factors (for convolutions: Grosse & Martens 2016, "KFC"). Padding follows the
module: numbers, ``"same"`` (the extra pad of an odd total on the right, as PyTorch does) or
``"valid"``, with any ``padding_mode``.
"""

from __future__ import annotations

from torch import Tensor, nn

CONVOLUTIONS = (nn.Conv1d, nn.Conv2d)
"""Convolutions read as Linear layers over patches (``groups=1``)."""


def is_positional(module: nn.Module) -> bool:
    """Whether ``module`` is :math:`y_t = W a_t + b`: nn.Linear or a groups=1 convolution."""
    if isinstance(module, CONVOLUTIONS):
        return module.groups == 1
    return isinstance(module, nn.Linear)


def input_positions(module: nn.Module, a: Tensor) -> Tensor:
    """The layer input as ``[b, T, c]``: Linear inputs as they are, convolution patches unfolded.

    Raises:
        ValueError: an input without its batch dimension (a Linear input of one dimension).
    """
    if isinstance(module, CONVOLUTIONS):
        return _patches(module, a)
    if a.ndim < 2:
        raise ValueError(
            f"{type(module).__name__} got an input of shape {list(a.shape)}; recording its "
            "gradients needs batched inputs [batch, ..., in]"
        )
    return a.reshape(len(a), -1, a.shape[-1])


def output_positions(module: nn.Module, g: Tensor) -> Tensor:
    """An output-shaped tensor (e.g. its gradient) as ``[b, T, out]``, positions ordered as the
    patches of :func:`input_positions`."""
    if isinstance(module, CONVOLUTIONS):
        return g.flatten(2).transpose(1, 2)
    return g.reshape(len(g), -1, g.shape[-1])


def _patches(module: nn.Conv1d | nn.Conv2d, x: Tensor) -> Tensor:
    dims = len(module.kernel_size)
    if x.ndim != dims + 2:
        raise ValueError(
            f"{type(module).__name__} got an input of shape {list(x.shape)}; recording its "
            f"gradients needs batched inputs [batch, channels, {dims} spatial dims]"
        )
    mode = "constant" if module.padding_mode == "zeros" else module.padding_mode
    x = nn.functional.pad(x, _pads(module), mode=mode)
    if dims == 1:
        x = x.unsqueeze(2)
    kernel, dilation, stride = (_two(module, key) for key in ("kernel_size", "dilation", "stride"))
    patches = nn.functional.unfold(x, kernel, dilation=dilation, stride=stride)  # [b, c, T]
    return patches.transpose(1, 2)


def _two(module: nn.Conv1d | nn.Conv2d, key: str) -> tuple[int, int]:
    """A 1-d convolution's setting as the 2-d one over a height of 1."""
    value = tuple(getattr(module, key))
    return (1, *value) if len(value) == 1 else value


def _pads(module: nn.Conv1d | nn.Conv2d) -> list[int]:
    """``F.pad``'s list (last dimension first) of the module's padding."""
    pads: list[int] = []
    for index in reversed(range(len(module.kernel_size))):
        if module.padding == "same":
            total = module.dilation[index] * (module.kernel_size[index] - 1)
            pads += [total // 2, total - total // 2]
        elif module.padding == "valid":
            pads += [0, 0]
        else:
            pads += [module.padding[index]] * 2
    return pads
