"""Text for language models, offline: the Python standard library's own source, as ASCII tokens.

Tokens are bytes of the UTF-8 text with every non-ASCII byte mapped to 0, so the vocabulary is
the 128 ASCII codes and id 0 doubles as padding. An example is a window of ``context + 1``
tokens: inputs its first ``context``, targets its last ``context`` (the next token at each
position).
"""

from __future__ import annotations

import sysconfig
from pathlib import Path

import numpy as np
import torch

from tda.data.examples import Examples
from tda.data.splits import DataSplits

VOCAB_SIZE = 128
PAD = 0


def encode(text: str) -> np.ndarray:
    """Token ids ``[len]`` (int64) of ``text``: ASCII codes, anything else 0."""
    codes = np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int64)
    return np.where(codes < VOCAB_SIZE, codes, PAD)


def decode(tokens) -> str:
    """The text of token ids (padding and ignored target positions, -100, dropped)."""
    return "".join(chr(int(t)) for t in np.asarray(tokens).reshape(-1) if int(t) > PAD)


def standard_library_files() -> list[Path]:
    """This Python's top-level standard-library modules (``*.py``), sorted by name."""
    root = Path(sysconfig.get_paths()["stdlib"])
    return sorted(path for path in root.glob("*.py") if path.is_file())


def windows(tokens: np.ndarray, context: int) -> Examples:
    """Non-overlapping next-token examples of ``context`` positions cut from ``tokens``.

    Raises:
        ValueError: ``context`` not an integer of at least 1, or too few tokens for one window.
    """
    if _not_an_integer(context) or context < 1:
        raise ValueError(f"context must be at least 1 position, got {context!r}")
    count = (len(tokens) - 1) // context
    if count < 1:
        raise ValueError(f"{len(tokens)} tokens make no window of {context} positions")
    rows = np.arange(count)[:, None] * context + np.arange(context + 1)[None, :]
    cut = torch.as_tensor(tokens[rows])
    return Examples(cut[:, :-1].contiguous(), cut[:, 1:].contiguous())


def _not_an_integer(value) -> bool:
    """True for floats, booleans (True would read as 1) and anything else not an integer."""
    return isinstance(value, bool) or not isinstance(value, int | np.integer)


def load_python_source(
    n_train: int = 2000, n_test: int = 500, context: int = 64, seed: int = 0
) -> DataSplits:
    """Windows of standard-library source text, shuffled by ``seed`` into train and test.

    The files are read in name order and joined; the windows (disjoint, ``context`` positions
    each) are drawn without replacement, so no text is in both splits. The corpus is this
    Python's library, so its fingerprint differs between Python versions.

    Raises:
        ValueError: sizes that are not positive integers, or more windows asked for than the
            library holds.
    """
    sizes = (n_train, n_test, context)
    if any(_not_an_integer(size) for size in sizes) or min(sizes) < 1:
        raise ValueError(
            "n_train, n_test and context must be positive integers, got "
            f"{n_train!r}, {n_test!r}, {context!r}"
        )
    files = standard_library_files()
    text = "\n".join(path.read_text(encoding="utf-8", errors="replace") for path in files)
    examples = windows(encode(text), context)
    if n_train + n_test > len(examples):
        raise ValueError(
            f"asked for {n_train + n_test} windows of {context} tokens; "
            f"the {len(files)} standard-library files hold {len(examples)}"
        )
    order = np.random.default_rng(seed).permutation(len(examples))
    train = examples.subset(order[:n_train])
    test = examples.subset(order[n_train : n_train + n_test])
    return DataSplits(train=train, test=test, num_classes=VOCAB_SIZE)
