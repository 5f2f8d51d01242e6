import numpy as np
import pytest
import torch
from torch.nn import functional

import unlearn.metrics
from tda.data import Examples
from tda.task import IGNORE_INDEX
from unlearn import accuracy_percent, average_gap, mia_efficacy, unlearning_metrics
from unlearn.metrics import true_label_probability


def _predicting(classes: torch.Tensor, targets: torch.Tensor) -> Examples:
    """Inputs that the identity "model" turns into confident logits for ``classes``."""
    return Examples(10.0 * functional.one_hot(classes, 4).double(), targets)


def _hand_made():
    """An identity model that is right on R, wrong on F and right on half of the test set."""
    targets = torch.arange(4).repeat(10)
    retain = _predicting(targets, targets)
    forget = _predicting((targets[:12] + 1) % 4, targets[:12])
    test_predictions = torch.where(torch.arange(40) % 2 == 0, targets, (targets + 2) % 4)
    return forget, retain, _predicting(test_predictions, targets)


def test_metrics_on_a_model_that_is_perfect_on_retain_and_wrong_on_forget():
    forget, retain, test = _hand_made()
    metrics = unlearning_metrics(torch.nn.Identity(), forget, retain, test)
    assert metrics == {"UA": 100.0, "RA": 100.0, "TA": 50.0, "MIA": 100.0}


def test_a_model_that_still_fits_the_forget_set_looks_like_it_remembers():
    forget, retain, test = _hand_made()
    remembered = Examples(retain.inputs[:12], retain.targets[:12])
    assert mia_efficacy(torch.nn.Identity(), remembered, retain, test) == 0.0
    assert unlearning_metrics(torch.nn.Identity(), remembered, retain)["UA"] == 0.0


def test_the_attack_balances_members_and_non_members_with_a_seed():
    forget, retain, test = _hand_made()
    big_retain = Examples(retain.inputs.repeat(5, 1), retain.targets.repeat(5))
    first = mia_efficacy(torch.nn.Identity(), forget, big_retain, test, seed=1)
    assert first == mia_efficacy(torch.nn.Identity(), forget, big_retain, test, seed=1) == 100.0


def test_the_attack_is_fit_on_a_seeded_balanced_subsample_of_members_and_non_members(
    tiny_mlp, tiny_data, monkeypatch
):
    """12 members against 4 non-members: the SVC sees 4 of each, the members drawn without
    replacement by the generator seeded with the request seed, which then seeds the SVC."""
    forget, retain, test = (tiny_data.subset(range(*ends)) for ends in ((0, 4), (4, 16), (16, 20)))
    fits = []

    class RecordingSVC(unlearn.metrics.SVC):
        def fit(self, features, labels):
            fits.append((features.copy(), labels.copy(), self.random_state))
            return super().fit(features, labels)

    monkeypatch.setattr(unlearn.metrics, "SVC", RecordingSVC)
    mia_efficacy(tiny_mlp, forget, retain, test, seed=5)
    (features, labels, svc_seed), *more = fits
    assert more == [] and labels.tolist() == [1.0] * 4 + [0.0] * 4
    generator = np.random.default_rng(5)
    chosen = np.sort(generator.choice(12, size=4, replace=False))
    members = true_label_probability(tiny_mlp, retain)[chosen]
    non_members = true_label_probability(tiny_mlp, test)
    np.testing.assert_array_equal(features[:, 0], np.concatenate([members, non_members]))
    assert svc_seed == int(generator.integers(2**32))


def test_the_attack_leaves_numpys_global_random_state_alone(tiny_mlp, tiny_data):
    forget, retain, test = (tiny_data.subset(range(*ends)) for ends in ((0, 4), (4, 14), (14, 20)))
    np.random.seed(7)
    expected = np.random.random_sample(3)
    np.random.seed(7)
    efficacy = mia_efficacy(tiny_mlp, forget, retain, test, seed=3)
    assert np.array_equal(np.random.random_sample(3), expected)
    assert efficacy == mia_efficacy(tiny_mlp, forget, retain, test, seed=3)


@pytest.mark.parametrize("seed", [0, 2**32, 2**64 - 1])
def test_the_attack_takes_every_seed_a_request_takes(seed):
    forget, retain, test = _hand_made()
    assert mia_efficacy(torch.nn.Identity(), forget, retain, test, seed=seed) == 100.0


def test_average_gap_is_the_mean_absolute_difference():
    ours = {"UA": 10.0, "RA": 90.0, "TA": 80.0, "MIA": 20.0}
    oracle = {"UA": 12.0, "RA": 95.0, "TA": 79.0, "MIA": 30.0}
    assert average_gap(ours, oracle) == pytest.approx((2 + 5 + 1 + 10) / 4)
    assert average_gap(ours, oracle, keys=("UA",)) == pytest.approx(2.0)
    with pytest.raises(ValueError, match=r"oracle metrics lack \['MIA'\]"):
        average_gap(ours, {"UA": 1.0, "RA": 1.0, "TA": 1.0})


def test_empty_sets_give_clear_errors():
    forget, retain, test = _hand_made()
    empty = Examples(forget.inputs[:0], forget.targets[:0])
    with pytest.raises(ValueError, match="empty"):
        accuracy_percent(torch.nn.Identity(), empty)
    with pytest.raises(ValueError, match="non-empty test set"):
        mia_efficacy(torch.nn.Identity(), forget, retain, empty)
    assert set(unlearning_metrics(torch.nn.Identity(), empty, retain, test)) == {"RA", "TA"}


def test_sequence_accuracy_needs_every_counted_token_and_skips_the_rest():
    # identity "model" on logits [n, T, V]: rows 0 and 1 predict tokens (1, 2, 3)
    logits = 10.0 * functional.one_hot(torch.tensor([[1, 2, 3], [1, 2, 3]]), 4).double()
    targets = torch.tensor([[IGNORE_INDEX, 2, 3], [1, 0, 3]])  # right where counted / one miss
    assert accuracy_percent(torch.nn.Identity(), Examples(logits, targets)) == 50.0


def test_sequence_probability_is_the_geometric_mean_over_counted_tokens():
    logits = torch.randn(2, 3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    targets = torch.tensor([[IGNORE_INDEX, 2, 3], [1, 0, 3]])
    probabilities = torch.softmax(logits, dim=-1)
    expected = [
        (probabilities[0, 1, 2] * probabilities[0, 2, 3]) ** 0.5,
        (probabilities[1, 0, 1] * probabilities[1, 1, 0] * probabilities[1, 2, 3]) ** (1 / 3),
    ]
    found = true_label_probability(torch.nn.Identity(), Examples(logits, targets))
    torch.testing.assert_close(torch.as_tensor(found), torch.stack(expected), rtol=1e-12, atol=0)
