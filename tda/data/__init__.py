"""Reference data sets and adapters from user data."""

from tda.data.digits import load_digits
from tda.data.examples import Examples, as_examples
from tda.data.mnist1d import load_mnist1d
from tda.data.splits import DataSplits

__all__ = ["DataSplits", "Examples", "as_examples", "load_digits", "load_mnist1d"]
