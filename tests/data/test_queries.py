import pytest
import torch

from tda.data import Examples
from tda.data.queries import first_queries


def test_the_first_queries_are_the_leading_test_examples_and_others_are_refused_by_name():
    """featurize.py and score.py each checked the range, in two copies of the same code."""
    test = Examples(torch.arange(12.0).reshape(6, 2), torch.arange(6))
    assert first_queries(test, 6).fingerprint() == test.fingerprint()
    assert torch.equal(first_queries(test, 2).targets, torch.tensor([0, 1]))
    for count in (0, 7):
        with pytest.raises(
            ValueError,
            match=rf"queries={count} is out of range: the test split has 6 examples; "
            r"choose queries between 1 and 6",
        ):
            first_queries(test, count)
