"""Backdoor poisoning: planting, attack queries, and finding the poisons by attribution."""

import numpy as np
import pytest
import torch

from tda.curvature import ExplicitSolver
from tda.data import Examples
from tda.methods import InfluenceFunction
from tda.models import LogisticRegression, build_model
from tda.training import TrainConfig, train
from tda.valuation import Backdoor, mislabel_detection, values_from_scores

BACKDOOR = Backdoor(pattern=(3.0, 3.0), target=0)


def blobs(n=300, seed=0):
    """Three classes apart in the first 8 dimensions; the last 2 are small noise (trigger room)."""
    centres = 2.0 * torch.randn(3, 8, generator=torch.Generator().manual_seed(0)).double()
    generator = torch.Generator().manual_seed(1 + seed)
    targets = torch.arange(n) % 3
    signal = centres[targets] + torch.randn(n, 8, generator=generator, dtype=torch.float64)
    noise = 0.1 * torch.randn(n, 2, generator=generator, dtype=torch.float64)
    return Examples(torch.cat([signal, noise], dim=1), targets)


def test_planting_triggers_and_relabels_exactly_the_chosen_examples():
    data = blobs()
    poisoned_data, poisoned = BACKDOOR.plant(data, 0.05, seed=3)
    assert int(poisoned.sum()) == 15 and not bool((data.targets[poisoned] == 0).any())
    assert bool((poisoned_data.targets[poisoned] == 0).all())
    assert torch.equal(poisoned_data.inputs[poisoned][:, -2:], torch.full((15, 2), 3.0).double())
    assert torch.equal(poisoned_data.inputs[poisoned][:, :-2], data.inputs[poisoned][:, :-2])
    assert torch.equal(poisoned_data.inputs[~poisoned], data.inputs[~poisoned])
    assert torch.equal(poisoned_data.targets[~poisoned], data.targets[~poisoned])
    again, mask = BACKDOOR.plant(data, 0.05, seed=3)
    assert torch.equal(mask, poisoned) and torch.equal(again.inputs, poisoned_data.inputs)
    assert not torch.equal(BACKDOOR.plant(data, 0.05, seed=4)[1], poisoned)
    assert data.inputs[:, -2:].abs().max() < 1.0  # the caller's data is untouched


def test_attack_queries_are_the_other_classes_triggered_and_labelled_with_the_target():
    data = blobs(30)
    queries = BACKDOOR.attack(data)
    assert len(queries) == 20 and bool((queries.targets == 0).all())
    assert bool((queries.inputs[:, -2:] == 3.0).all())
    assert torch.equal(queries.inputs[:, :-2], data.inputs[data.targets != 0][:, :-2])


class Constant(torch.nn.Module):
    def forward(self, inputs):
        return torch.nn.functional.one_hot(torch.zeros(len(inputs), dtype=torch.long), 3).double()


def test_success_rate_counts_attack_queries_sent_to_the_target():
    assert BACKDOOR.success_rate(Constant(), blobs(30)) == 1.0
    assert Backdoor(pattern=(3.0,), target=1).success_rate(Constant(), blobs(30)) == 0.0


def test_success_rate_evaluates_in_eval_mode_and_restores_the_training_mode():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(10, 3), torch.nn.Dropout(0.5)).double().train()
    data = blobs(60)
    with torch.no_grad():
        expected = float(
            (model.eval()(BACKDOOR.attack(data).inputs).argmax(-1) == 0).double().mean()
        )
    model.train()
    assert BACKDOOR.success_rate(model, data) == expected
    assert model.training and all(module.training for module in model.modules())


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: Backdoor(pattern=()), "pattern is empty"),
        (lambda: Backdoor(target=-1), "class index"),
        (lambda: BACKDOOR.plant(blobs(30), 0.0, 0), r"fraction must be in \(0, 1\)"),
        (lambda: BACKDOOR.plant(blobs(30), 0.9, 0), "cannot poison 27 of the 20"),
        (lambda: Backdoor(pattern=(1.0,) * 11).apply(blobs(3).inputs), "cannot hold"),
        (lambda: BACKDOOR.attack(blobs(30).subset([0, 3])), "nothing to attack"),
    ],
)
def test_bad_input_is_refused(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def test_influence_on_the_attack_queries_finds_the_planted_poisons():
    data = blobs()
    poisoned_data, poisoned = BACKDOOR.plant(data, 0.05, seed=0)
    model = build_model(lambda: LogisticRegression(10, 3), seed=0, dtype=torch.float64)
    config = TrainConfig(epochs=200, batch_size=300)
    train(model, poisoned_data, config)
    test = blobs(90, seed=1)
    assert BACKDOOR.success_rate(model, test) > 0.9  # the backdoor works
    influence = InfluenceFunction(ExplicitSolver(damping=0.1)).fit(model, poisoned_data)
    suspicion = values_from_scores(influence.score(BACKDOOR.attack(test)))
    report = mislabel_detection(suspicion, poisoned, fractions=(0.05,))
    assert report.found_at[0.05] >= 0.7 and report.auc > 0.95  # measured: 0.80 and 0.985
    random = mislabel_detection(np.random.default_rng(0).random(300), poisoned, (0.05,))
    assert random.found_at[0.05] < 0.3
