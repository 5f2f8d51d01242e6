"""The dtype the kernel computes in: float64 stays float64, everything else computes in float32."""

from __future__ import annotations

import torch


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64; every other dtype (float16, bfloat16, float32, integer) computes
    in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32
