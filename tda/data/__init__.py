"""Reference data sets and adapters from user data."""

from tda.data.digits import load_digits
from tda.data.examples import Examples, as_examples
from tda.data.facts import FactSet, make_facts
from tda.data.mnist1d import load_mnist1d
from tda.data.splits import DataSplits
from tda.data.text import load_python_source

__all__ = [
    "DataSplits",
    "Examples",
    "FactSet",
    "as_examples",
    "load_digits",
    "load_mnist1d",
    "load_python_source",
    "make_facts",
]
