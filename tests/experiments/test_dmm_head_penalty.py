"""The head-refit penalty rules: the pooled ratio closest to 1 in log, or the smallest KLOM."""

from experiments.dmm_head_penalty import chosen_penalty


def test_the_penalty_whose_pooled_ratio_is_closest_to_one_is_chosen():
    rows = [
        {"penalty": 1e-6, "ratio": 0.5},
        {"penalty": 1e-6, "ratio": 0.7},  # mean 0.6: |log| 0.51
        {"penalty": 1e-7, "ratio": 1.1},
        {"penalty": 1e-7, "ratio": 1.7},  # mean 1.4: |log| 0.34
        {"penalty": 1e-8, "ratio": 2.0},
        {"penalty": 1e-8, "ratio": 2.0},
    ]
    assert chosen_penalty(rows) == 1e-7


def test_by_klom_the_penalty_with_the_smallest_mean_klom_is_chosen():
    rows = [
        {"penalty": 1e-10, "ratio": 1.0, "klom_p95": 5.0},
        {"penalty": 1e-10, "ratio": 1.0, "klom_p95": 9.0},  # mean 7.0 (ratio exactly 1)
        {"penalty": 1e-11, "ratio": 1.5, "klom_p95": 6.5},
        {"penalty": 1e-11, "ratio": 1.5, "klom_p95": 6.9},  # mean 6.7
    ]
    assert chosen_penalty(rows, "klom") == 1e-11
    assert chosen_penalty(rows) == 1e-10
