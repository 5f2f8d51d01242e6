"""Standard-library text as next-token examples."""

import numpy as np
import pytest
import torch

from tda.data.text import PAD, decode, encode, load_python_source, windows
from tda.task import IGNORE_INDEX


def test_ascii_round_trips_and_other_bytes_become_padding():
    assert decode(encode("def f(x):\n\treturn x")) == "def f(x):\n\treturn x"
    assert decode([IGNORE_INDEX, ord("a"), PAD]) == "a"  # targets hold -100 where not counted
    tokens = encode("é=1")
    assert tokens.tolist() == [PAD, PAD, ord("="), ord("1")]  # é is two UTF-8 bytes


def test_windows_shift_targets_by_one_token_and_do_not_overlap():
    examples = windows(np.arange(1, 12), context=3)  # 11 tokens: 3 windows of 3 (+1)
    assert examples.inputs.tolist() == [[1, 2, 3], [4, 5, 6], [7, 8, 9]]
    assert examples.targets.tolist() == [[2, 3, 4], [5, 6, 7], [8, 9, 10]]
    with pytest.raises(ValueError, match="no window"):
        windows(np.arange(3), context=3)


@pytest.mark.parametrize("context", [0, -2])
def test_windows_of_no_positions_are_refused(context):
    with pytest.raises(ValueError, match=f"context must be at least 1 position, got {context}"):
        windows(np.arange(10), context=context)


def test_the_corpus_is_deterministic_and_its_splits_are_disjoint():
    first = load_python_source(n_train=50, n_test=20, context=16, seed=1)
    again = load_python_source(n_train=50, n_test=20, context=16, seed=1)
    other = load_python_source(n_train=50, n_test=20, context=16, seed=2)
    assert first.train.fingerprint() == again.train.fingerprint()
    assert first.train.fingerprint() != other.train.fingerprint()
    assert first.train.inputs.shape == (50, 16) and first.num_classes == 128
    rows = {tuple(row.tolist()) for row in torch.cat([first.train.inputs, first.test.inputs])}
    assert len(rows) == 70  # no window repeats, so train and test share no text


def test_bad_sizes_are_refused():
    with pytest.raises(ValueError, match="positive"):
        load_python_source(n_train=0)
    with pytest.raises(ValueError, match="standard-library files hold"):
        load_python_source(n_train=10**9)


@pytest.mark.parametrize("context", [2.5, 3.0, True])
def test_windows_refuse_a_context_that_is_not_an_integer(context):
    # 2.5 and 3.0 failed in numpy indexing ("arrays used as indices must be of integer type")
    with pytest.raises(ValueError, match="context must be at least 1 position"):
        windows(np.arange(20), context=context)
    assert len(windows(np.arange(20), context=np.int64(3))) == 6


@pytest.mark.parametrize("sizes", [(10.5, 5, 8), (10, 5, 8.0), (True, 5, 8), (10, False, 8)])
def test_sizes_must_be_positive_integers(sizes):
    # 10.5 failed slicing the shuffled order; True gave one training window
    n_train, n_test, context = sizes
    with pytest.raises(ValueError, match="must be positive integers"):
        load_python_source(n_train=n_train, n_test=n_test, context=context)
