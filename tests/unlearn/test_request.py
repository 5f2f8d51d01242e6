import json

import numpy as np
import pytest
import torch

from unlearn import UnlearningRequest


def test_indices_are_sorted_and_the_id_is_derived_from_the_content():
    first = UnlearningRequest([5, 1, 3], train_size=10, seed=2)
    same = UnlearningRequest(np.array([3, 5, 1]), train_size=10, seed=2)
    other_seed = UnlearningRequest(torch.tensor([1, 3, 5]), train_size=10, seed=3)
    assert first.forget_indices == (1, 3, 5)
    assert first.request_id == same.request_id != other_seed.request_id
    assert first.request_id.startswith("req-")
    assert first.retain_indices().tolist() == [0, 2, 4, 6, 7, 8, 9]
    assert UnlearningRequest([1], 10, request_id="ticket-42").request_id == "ticket-42"


@pytest.mark.parametrize(
    ("indices", "message"),
    [
        ([5012], "forget index 5012 is out of range for a training set of 5000 examples"),
        ([4, -1], "forget index -1 is out of range for a training set of 5000 examples"),
        ([3, 7, 3, 9, 9], "forget index 3 appears 2 times; 2 indices are duplicated"),
        (range(5000), "covers all 5000 training examples"),
        ([1.5], "must be integers"),
        ([True], "must be integers"),
        ([[1, 2]], "one-dimensional"),
    ],
)
def test_bad_forget_indices_are_refused_with_a_clear_message(indices, message):
    with pytest.raises(ValueError, match=message):
        UnlearningRequest(indices, train_size=5000)


def test_bad_train_size_and_seed_are_refused():
    with pytest.raises(ValueError, match="train_size must be positive"):
        UnlearningRequest([], train_size=0)
    with pytest.raises(ValueError, match="seed must be an integer"):
        UnlearningRequest([1], train_size=5, seed=1.0)
    for seed in (-1, 2**64):
        with pytest.raises(ValueError, match=r"seed must be in \[0, 2\*\*64\)"):
            UnlearningRequest([1], train_size=5, seed=seed)


def test_an_empty_forget_set_is_a_valid_request_that_retains_everything():
    request = UnlearningRequest([], train_size=4)
    assert request.is_empty and request.retain_indices().tolist() == [0, 1, 2, 3]


def test_earlier_forgotten_examples_are_excluded_and_cannot_be_requested_again():
    request = UnlearningRequest([4], train_size=6, previously_forgotten=[1, 2])
    assert request.retain_indices().tolist() == [0, 3, 5]
    assert request.forgotten_after() == (1, 2, 4)
    with pytest.raises(ValueError, match="forget index 2 was already forgotten"):
        UnlearningRequest([2, 3], train_size=6, previously_forgotten=[1, 2])
    with pytest.raises(ValueError, match="covers all 3 training examples"):
        UnlearningRequest([0], train_size=3, previously_forgotten=[1, 2])


def test_the_request_round_trips_through_json():
    request = UnlearningRequest(
        [9, 2], train_size=10, seed=7, model_fingerprint="ab" * 32, previously_forgotten=[5]
    )
    restored = UnlearningRequest.from_dict(json.loads(json.dumps(request.to_dict())))
    assert restored == request
    with pytest.raises(ValueError, match="unknown request fields"):
        UnlearningRequest.from_dict({**request.to_dict(), "colour": "red"})


@pytest.mark.parametrize("field", ["model_fingerprint", "data_fingerprint"])
def test_a_fingerprint_that_could_never_match_is_refused_at_construction(field):
    with pytest.raises(ValueError, match=f"{field} must be None or a SHA-256 hex digest"):
        UnlearningRequest([1], train_size=4, **{field: "abc"})
    UnlearningRequest([1], train_size=4, **{field: "0" * 64})
