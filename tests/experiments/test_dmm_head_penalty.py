"""The head-refit penalty rule: the pooled ratio closest to 1 in log."""

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
