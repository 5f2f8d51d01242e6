"""A small decoder-only (causal) transformer language model, written from Linear layers.

Attention is spelled out (no fused kernel), so ``torch.func.vmap`` traces it for per-sample
gradients and its every projection is an ``nn.Linear`` applied at each position, which the
Kronecker-factored solvers and featurizers read (:mod:`tda.layer_capture`).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention where position ``t`` attends to positions ``<= t``."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        self.heads = heads
        self.query, self.key, self.value = (nn.Linear(dim, dim) for _ in range(3))
        self.out = nn.Linear(dim, dim)

    def extra_repr(self) -> str:
        return f"heads={self.heads}"  # the repr names the architecture (ensemble recipes)

    def _split(self, x: Tensor) -> Tensor:  # [B, T, dim] -> [B, heads, T, dim / heads]
        batch, length, dim = x.shape
        return x.reshape(batch, length, self.heads, dim // self.heads).transpose(1, 2)

    def forward(self, x: Tensor) -> Tensor:
        query, key, value = (
            self._split(self.query(x)),
            self._split(self.key(x)),
            self._split(self.value(x)),
        )
        scores = query @ key.transpose(-2, -1) / math.sqrt(query.shape[-1])
        length = x.shape[1]
        future = torch.ones(length, length, dtype=torch.bool, device=x.device).triu(1)
        weights = functional.softmax(scores.masked_fill(future, float("-inf")), dim=-1)
        mixed = (weights @ value).transpose(1, 2).reshape(x.shape)
        return self.out(mixed)


class TransformerBlock(nn.Module):
    """Pre-norm block: ``x + attention(norm(x))``, then ``x + mlp(norm(x))``."""

    def __init__(self, dim: int, heads: int, hidden: int) -> None:
        super().__init__()
        self.attention_norm = nn.LayerNorm(dim)
        self.attention = CausalSelfAttention(dim, heads)
        self.mlp_norm = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attention(self.attention_norm(x))
        return x + self.mlp(self.mlp_norm(x))


class CausalTransformer(nn.Module):
    """Token ids ``[batch, T]`` (``T <= context``) to next-token logits ``[batch, T, vocab]``.

    Learned token and position embeddings, ``layers`` pre-norm blocks, a final LayerNorm and a
    Linear head (its own weights, not tied to the embedding). ``hidden`` is the MLP width
    (default ``4 * dim``).

    Raises:
        ValueError: a size below 1, ``dim`` not divisible by ``heads``; in ``forward``, tokens
            that are not ``[batch, T]`` or longer than ``context``.
    """

    def __init__(
        self,
        vocab_size: int = 128,
        context: int = 64,
        dim: int = 64,
        heads: int = 4,
        layers: int = 2,
        hidden: int | None = None,
    ) -> None:
        super().__init__()
        if min(vocab_size, context, dim, heads, layers) < 1:
            raise ValueError("vocab_size, context, dim, heads and layers must all be at least 1")
        if hidden is not None and hidden < 1:  # 0 read as "not given" and became 4 * dim
            raise ValueError(f"hidden must be at least 1 (or None for 4 * dim), got {hidden}")
        self.context = context
        self.token_embedding = nn.Embedding(vocab_size, dim)
        self.position_embedding = nn.Embedding(context, dim)
        self.blocks = nn.Sequential(
            *(TransformerBlock(dim, heads, hidden or 4 * dim) for _ in range(layers))
        )
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab_size)

    def forward(self, tokens: Tensor) -> Tensor:
        if tokens.dim() != 2:
            raise ValueError(
                f"CausalTransformer takes token ids [batch, T], got shape {list(tokens.shape)}"
            )
        length = tokens.shape[-1]
        if length > self.context:
            raise ValueError(
                f"sequence of {length} tokens is longer than the context {self.context}"
            )
        positions = torch.arange(length, device=tokens.device)
        x = self.token_embedding(tokens) + self.position_embedding(positions)
        return self.head(self.norm(self.blocks(x)))
