"""The queries of an experiment: the first ``queries`` examples of its test split."""

from __future__ import annotations

from tda.data.examples import Examples


def first_queries(test: Examples, count: int) -> Examples:
    """The first ``count`` examples of ``test``, the queries an experiment's ``queries``
    setting names (featurized, scored and checked against the same ones).

    Raises:
        ValueError: ``count`` is not between 1 and ``len(test)``; the message names the setting.
    """
    if not 1 <= count <= len(test):
        raise ValueError(
            f"queries={count} is out of range: the test split has {len(test)} examples; "
            f"choose queries between 1 and {len(test)}"
        )
    return test.subset(range(count))
