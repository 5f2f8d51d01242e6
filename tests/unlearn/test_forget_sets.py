import numpy as np
import pytest
import torch

from tda.data import Examples
from tda.fingerprint import model_fingerprint
from unlearn import (
    ClassForgetSet,
    FineTune,
    IndexForgetSet,
    LoopConfig,
    RandomForgetSet,
    Unlearner,
    forget_request,
)


@pytest.fixture
def labelled() -> Examples:
    """100 examples, 10 of each of the classes 0..9 (in a shuffled order)."""
    order = torch.randperm(100, generator=torch.Generator().manual_seed(0))
    targets = torch.arange(10).repeat(10)[order]
    return Examples(torch.randn(100, 6, dtype=torch.float64), targets)


def test_random_forget_sets_have_the_right_size_are_seeded_and_the_proxy_is_disjoint(labelled):
    chosen = RandomForgetSet(0.1, seed=3).indices(labelled)
    assert len(chosen) == 10 and np.all(np.diff(chosen) > 0)
    assert np.array_equal(chosen, RandomForgetSet(0.1, seed=3).indices(labelled))
    assert not np.array_equal(chosen, RandomForgetSet(0.1, seed=4).indices(labelled))
    proxy = RandomForgetSet(0.1, seed=3).proxy(labelled).indices(labelled)
    assert len(proxy) == 10 and not set(proxy) & set(chosen)
    assert len(RandomForgetSet(0.001).indices(labelled)) == 1  # never empty
    assert RandomForgetSet(0.1).evaluation_test(labelled) is labelled
    for fraction in (0.0, 1.0):
        with pytest.raises(ValueError, match=r"fraction must be in \(0, 1\)"):
            RandomForgetSet(fraction)
    with pytest.raises(ValueError, match="too small for a proxy"):
        RandomForgetSet(0.6).proxy(labelled)


def test_class_wise_forget_sets_take_a_whole_class_and_the_proxy_is_the_next_class(labelled):
    targets = labelled.targets.numpy()
    chosen = ClassForgetSet(9).indices(labelled)
    assert np.array_equal(chosen, np.flatnonzero(targets == 9))
    assert ClassForgetSet(9).proxy(labelled) == ClassForgetSet(0)
    assert ClassForgetSet(4).proxy(labelled) == ClassForgetSet(5)
    test = ClassForgetSet(4).evaluation_test(labelled)
    assert len(test) == 90 and not (test.targets == 4).any()
    with pytest.raises(ValueError, match="no example of class 11"):
        ClassForgetSet(11).indices(labelled)
    two_classes = labelled.subset(targets < 2)
    with pytest.raises(ValueError, match="at least three classes"):
        ClassForgetSet(0).proxy(two_classes)


def test_index_forget_sets_are_validated_and_their_proxy_is_disjoint(labelled):
    given = IndexForgetSet((7, 3, 5))
    assert given.positions == (3, 5, 7)
    assert np.array_equal(given.indices(labelled), [3, 5, 7])
    proxy = given.proxy(labelled).indices(labelled)
    assert len(proxy) == 3 and not set(proxy) & {3, 5, 7}
    for bad in ((), (1, 1)):
        with pytest.raises(ValueError, match="distinct positions"):
            IndexForgetSet(bad)
    with pytest.raises(ValueError, match=r"must lie in \[0, 100\)"):
        IndexForgetSet((100,)).indices(labelled)


def test_index_forget_sets_refuse_positions_that_are_not_one_dimensional():
    with pytest.raises(ValueError, match=r"one-dimensional, got shape \(2, 2\)"):
        IndexForgetSet(np.array([[1, 2], [3, 4]]))  # was read as positions 1, 2, 3, 4


def test_class_wise_forget_sets_refuse_sequence_targets():
    # token 7 sits at flattened positions 1 and 6 of these [4, 3] targets; they read as the
    # examples 1 (which has no 7) and 6 (which does not exist) instead of an error
    targets = torch.tensor([[0, 7, 2], [3, 4, 5], [7, 1, 1], [2, 2, 2]])
    sequences = Examples(torch.zeros(4, 3, dtype=torch.long), targets)
    for call in (ClassForgetSet(7).indices, lambda data: ClassForgetSet(7).proxies(data, 1)):
        with pytest.raises(ValueError, match=r"one class target per example.*\(4, 3\)"):
            call(sequences)


@pytest.mark.parametrize("bad", [(1.7, 2.2), np.array([0.5, 3.9]), np.array([True, False])])
def test_index_forget_sets_refuse_positions_that_are_not_integers(bad):
    with pytest.raises(ValueError, match="forget positions must be integers"):
        IndexForgetSet(bad)


def test_several_proxies_are_distinct_disjoint_from_f_and_start_with_the_proxy(labelled):
    for forget_set in (RandomForgetSet(0.1, seed=3), IndexForgetSet((7, 3, 5)), ClassForgetSet(8)):
        chosen = set(forget_set.indices(labelled))
        proxies = forget_set.proxies(labelled, 3)
        assert proxies[0] == forget_set.proxy(labelled) and len(proxies) == 3
        drawn = [tuple(proxy.indices(labelled)) for proxy in proxies]
        assert len(set(drawn)) == 3 and not any(chosen & set(indices) for indices in drawn)
        with pytest.raises(ValueError, match="at least one proxy"):
            forget_set.proxies(labelled, 0)
    assert ClassForgetSet(8).proxies(labelled, 3) == [ClassForgetSet(c) for c in (9, 0, 1)]
    assert len(ClassForgetSet(8).proxies(labelled, 9)) == 9
    with pytest.raises(ValueError, match="10 proxy classes asked for; there are 9 others"):
        ClassForgetSet(8).proxies(labelled, 10)


def test_proxies_from_a_small_retain_set_never_repeat_and_too_many_are_refused():
    """Each proxy was drawn with its own seed and nothing stopped two draws from being the same
    set (here 4 proxies of 1 among 5 retained examples repeated one)."""
    six = Examples(torch.zeros(6, 2), torch.zeros(6, dtype=torch.long))
    for forget_set in (IndexForgetSet((0,)), RandomForgetSet(0.1, seed=0)):
        drawn = [proxy.positions for proxy in forget_set.proxies(six, 5)]
        assert len(set(drawn)) == 5
        assert drawn[0] == forget_set.proxy(six).positions
        with pytest.raises(ValueError, match="6 different proxy forget sets of 1 do not exist"):
            forget_set.proxies(six, 6)


def unlabelled(n: int) -> Examples:
    return Examples(torch.zeros(n, 2), torch.zeros(n, dtype=torch.long))


def test_random_forget_sets_refuse_exactly_the_sizes_that_retain_nothing():
    ten = unlabelled(10)
    assert len(RandomForgetSet(0.9).indices(ten)) == 9  # the largest accepted: one retained
    with pytest.raises(ValueError, match="forgetting 10 of 10 examples leaves none to retain"):
        RandomForgetSet(0.95).indices(ten)  # round(9.5) = 10: the smallest refused
    with pytest.raises(ValueError, match="forgetting 1 of 1 examples leaves none to retain"):
        RandomForgetSet(0.5).indices(unlabelled(1))  # at least one is forgotten


@pytest.mark.parametrize("n", [7, 8])
def test_a_proxy_is_refused_exactly_when_it_would_leave_no_retained_example(n):
    """A proxy of ``size`` drawn from the ``n - size`` retained examples must leave one of them:
    ``size <= n - size - 1``. An odd ``n`` tells ``<`` from ``<=`` at the edge."""
    largest = (n - 1) // 2
    data = unlabelled(n)
    for size, fraction in ((largest, (largest + 0.1) / n), (largest + 1, (largest + 0.9) / n)):
        assert len(RandomForgetSet(fraction).indices(data)) == size
    accepted = (IndexForgetSet(range(largest)), RandomForgetSet((largest + 0.1) / n))
    for forget_set in accepted:
        proxy = forget_set.proxy(data).indices(data)
        retained = set(range(n)) - set(forget_set.indices(data)) - set(proxy)
        assert len(proxy) == largest and len(retained) == n - 2 * largest >= 1
    refused = (IndexForgetSet(range(largest + 1)), RandomForgetSet((largest + 0.9) / n))
    for forget_set in refused:
        with pytest.raises(ValueError, match=f"retain set of {n - largest - 1} is too small"):
            forget_set.proxy(data)


def test_forget_request_binds_the_model_and_data(labelled, tiny_mlp):
    chosen = ClassForgetSet(2).indices(labelled)
    request = forget_request(chosen, labelled, seed=5, model=tiny_mlp)
    assert request.forget_indices == tuple(chosen.tolist()) and request.seed == 5
    assert request.model_fingerprint == model_fingerprint(tiny_mlp)
    assert request.data_fingerprint == labelled.fingerprint()
    labelled3 = Examples(labelled.inputs, labelled.targets % 3)  # the tiny MLP has 3 classes
    method = FineTune(LoopConfig(epochs=1))
    Unlearner(method, compute_metrics=False).unlearn(
        tiny_mlp, labelled3, forget_request(chosen, labelled3, model=tiny_mlp)
    )
    with pytest.raises(ValueError, match="different training data"):
        Unlearner(method).unlearn(tiny_mlp, labelled3, request)


def test_raw_arrays_are_read_as_their_examples(labelled, tiny_mlp):
    """forget_request on (X, y) failed ("'tuple' object has no attribute 'fingerprint'") and
    a random forget set drew from 2 examples, the length of the pair."""
    pair = (labelled.inputs.numpy(), (labelled.targets % 3).numpy())
    chosen = RandomForgetSet(0.1, seed=3).indices(pair)
    assert np.array_equal(chosen, RandomForgetSet(0.1, seed=3).indices(labelled))
    assert np.array_equal(ClassForgetSet(2).indices(pair), np.flatnonzero(pair[1] == 2))
    assert len(ClassForgetSet(2).evaluation_test(pair)) == np.sum(pair[1] != 2)
    assert IndexForgetSet((3, 99)).proxy(pair) == IndexForgetSet((3, 99)).proxy(labelled)
    request = forget_request(chosen, pair, model=tiny_mlp)
    assert request.train_size == 100
    method = FineTune(LoopConfig(epochs=1))
    Unlearner(method, compute_metrics=False).unlearn(tiny_mlp, pair, request)  # the same data
