r"""The projector contract shared by every random projection, and the helpers they have in common.

A projector maps per-example features (usually flattened gradients) ``[batch, p]`` to
``[batch, k]``. Random projectors are Johnson-Lindenstrauss (JL) maps: a matrix
:math:`P \in \mathbb{R}^{p \times k}` with :math:`\mathbb{E}[P P^\top] = I`, so that
:math:`\mathbb{E}[\langle xP, yP \rangle] = \langle x, y \rangle` (TRAK, Park et al. 2023, Sec. 3).
Each is fully determined by its settings and ``seed``; two processes on two machines that build
the same projector get the same matrix.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any, Protocol, runtime_checkable

import torch

from tda.arguments import check_positive_int

_INT63_MASK = 2**63 - 1


@runtime_checkable
class Projector(Protocol):
    """A seeded map ``[batch, p] -> [batch, k]`` from features to projected features."""

    seed: int

    def output_dim(self, input_dim: int) -> int:
        """Number of output columns ``k`` for inputs with ``input_dim`` columns."""
        ...

    def project(self, features: torch.Tensor) -> torch.Tensor:
        """Project ``features`` ``[batch, p]`` to ``[batch, k]`` on the same device."""
        ...

    def with_seed(self, seed: int) -> Projector:
        """A new projector with the same configuration and another seed."""
        ...

    def config(self) -> dict:
        """JSON-serialisable description: the class name and every setting, seed included."""
        ...


def derive_seed(base_seed: int, checkpoint_id: str | int) -> int:
    """Seed for one checkpoint's projector, stable across processes, machines and Python versions.

    The seed is a SHA-256 hash of the pair, so it does not depend on ``PYTHONHASHSEED`` or on the
    order in which checkpoints are processed. ``checkpoint_id`` is hashed through ``str``, so the
    integer ``3`` and the string ``"3"`` (e.g. after a JSON round trip) give the same seed.

    Args:
        base_seed: The experiment's base seed.
        checkpoint_id: Identifier of the checkpoint (or model) the projector belongs to.

    Returns:
        An integer in ``[0, 2**63)``, accepted by ``torch.Generator.manual_seed``.
    """
    check_seed(base_seed)
    if isinstance(checkpoint_id, bool) or not isinstance(checkpoint_id, str | int):
        raise ValueError(
            f"checkpoint_id must be a str or an int, got {type(checkpoint_id).__name__}"
        )
    return hash_to_int63("checkpoint", base_seed, checkpoint_id)


def hash_to_int63(*parts: object) -> int:
    """SHA-256 of the parts' string forms (NUL-separated), truncated to a non-negative int63:
    a generator seed stable across processes, machines and Python versions."""
    text = "\x00".join(str(part) for part in parts)
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "little") & _INT63_MASK


def random_stream_digest() -> str:
    """SHA-256 of fixed draws of torch's CPU generator, made the ways projections draw (signs,
    bounded integers, normals): equal digests mean equal projection matrices for equal seeds.

    Projections are drawn from torch's random stream, which torch does not promise to keep
    across versions; a feature store records this digest so that features projected under
    another stream are not mixed with its own.
    """
    generator = torch.Generator(device="cpu")
    generator.manual_seed(hash_to_int63("random-stream"))
    draws = [
        torch.randint(0, 2, (64, 4), generator=generator, dtype=torch.int8),
        torch.randint(0, 1000, (64, 1), generator=generator),
        torch.randn(64, generator=generator, dtype=torch.float64),
    ]
    digest = hashlib.sha256()
    for draw in draws:
        digest.update(draw.numpy().tobytes())
    return digest.hexdigest()


def rademacher(rows: int, cols: int, seed: int) -> torch.Tensor:
    r"""Signs ``[rows, cols]`` of :math:`\pm 1` in float64 on CPU, drawn row-major from ``seed``."""
    generator = torch.Generator(device="cpu")
    generator.manual_seed(seed)
    bits = torch.randint(0, 2, (rows, cols), generator=generator, dtype=torch.int8)
    return bits.to(torch.float64) * 2.0 - 1.0


def check_seed(seed: object) -> None:
    """Refuse a seed that is not an int (a bool, a float or a string would hash as another)."""
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an int, got {seed!r} of type {type(seed).__name__}")


def _check_features(features: torch.Tensor, input_dim: int | None) -> None:
    """Reject inputs that are not a non-empty ``[batch, p]`` matrix of the declared width."""
    if not isinstance(features, torch.Tensor):
        raise ValueError(f"features must be a torch.Tensor, got {type(features).__name__}")
    if features.ndim != 2:
        raise ValueError(
            f"features must be a 2-D [batch, p] tensor, got shape {tuple(features.shape)}; "
            "flatten per-example features first"
        )
    if features.shape[1] == 0:
        raise ValueError("features have p = 0 columns; there is nothing to project")
    if input_dim is not None and features.shape[1] != input_dim:
        raise ValueError(
            f"features have p = {features.shape[1]} columns but this projector was built for "
            f"input_dim = {input_dim}; projecting features of another width would not be "
            "comparable with features projected before"
        )


def _check_input_dim(input_dim: int, expected: int | None) -> None:
    check_positive_int("input_dim", input_dim)
    if expected is not None and input_dim != expected:
        raise ValueError(f"input_dim = {input_dim} differs from the projector's {expected}")


def _dataclass_config(projector: Any) -> dict:
    """``{"class": name, **settings}`` for a dataclass projector.

    Fields marked ``metadata={"config": False}`` (speed/memory knobs that do not change the
    projection, such as a cache budget) are left out, so they do not change a store's key.
    """
    settings = {
        f.name: getattr(projector, f.name)
        for f in dataclasses.fields(projector)
        if f.init and f.metadata.get("config", True)
    }
    return {"class": type(projector).__name__, **settings}
