"""Training runs: ``fit_run`` is ``fit`` on the run's parts, and runs ensemble by their mean."""

from functools import partial

import numpy as np
import pytest
import torch

from tda.checkpoints import load_checkpoint
from tda.curvature import ExplicitSolver
from tda.data import Examples
from tda.methods import (
    TRAK,
    GradientSimilarity,
    InfluenceFunction,
    Source,
    TracIn,
    mean_over_checkpoints,
)
from tda.methods.runs import CheckpointAverage, RunAttributor, TrainingRun, attribute_runs
from tda.models import MLP, build_model
from tda.training import TrainConfig, train


def factory():
    return build_model(lambda: MLP(4, (5,), 3), seed=0, dtype=torch.float64)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two SGD runs (seeds 0 and 1) of a 4-5-3 float64 MLP, each with its start and 2 checkpoints;
    15 training and 4 query examples."""
    generator = torch.Generator().manual_seed(3)
    data = Examples(
        torch.randn(19, 4, generator=generator, dtype=torch.float64),
        torch.randint(0, 3, (19,), generator=generator),
    )
    config = TrainConfig(
        epochs=4,
        batch_size=5,
        optimizer=partial(torch.optim.SGD, lr=0.2),
        checkpoints=2,
        save_initial=True,
    )
    train_set, made = data.subset(range(15)), []
    for seed in (0, 1):
        directory = tmp_path_factory.mktemp(f"seed-{seed}")
        result = train(factory(), train_set, config, seed=seed, checkpoint_dir=directory)
        made.append(TrainingRun(factory, tuple(result.checkpoints), train_set))
    return made, data.subset(range(15, 19))


def influence():
    return InfluenceFunction(ExplicitSolver(damping=0.1))


def test_fit_run_is_fit_on_the_final_model_or_on_the_checkpoints(runs):
    (run, _), queries = runs
    final = run.final_model()
    assert not final.training
    expected = influence().fit(final, run.train).score(queries)
    assert torch.equal(influence().fit_run(run).score(queries), expected)
    for method in (TracIn(), Source(segments=2, gradients="start")):
        direct = method.fit(factory, run.checkpoints, run.train).score(queries)
        assert torch.equal(method.fit_run(run).score(queries), direct)


def test_runs_ensemble_by_their_mean(runs):
    made, queries = runs
    each = [TracIn().fit_run(run).score(queries) for run in made]
    assert not torch.equal(each[0], each[1])
    mean = attribute_runs(TracIn(), made, queries)
    np.testing.assert_allclose(mean.numpy(), ((each[0] + each[1]) / 2).numpy(), rtol=1e-15)
    assert torch.equal(
        attribute_runs(influence(), made[:1], queries), influence().fit_run(made[0]).score(queries)
    )


def test_ensembling_leaves_the_members_scores_unchanged(runs):
    """The mean used to be accumulated in the first member's own tensor."""
    made, queries = runs
    kept = {
        id(run): torch.full((4, 15), float(i + 1), dtype=torch.float64)
        for i, run in enumerate(made)
    }

    class Kept:
        def fit_run(self, run):
            self.run = run
            return self

        def score(self, queries):
            return kept[id(self.run)]

    mean = attribute_runs(Kept(), made, queries)
    assert torch.equal(mean, torch.full((4, 15), 1.5, dtype=torch.float64))
    assert torch.equal(kept[id(made[0])], torch.full((4, 15), 1.0, dtype=torch.float64))
    members = {"a": torch.tensor([1.0, 2.0]), "b": torch.tensor([3.0, 6.0])}
    assert torch.equal(mean_over_checkpoints(members.get, ["a", "b"]), torch.tensor([2.0, 4.0]))
    assert torch.equal(members["a"], torch.tensor([1.0, 2.0]))


def test_model_based_methods_are_run_attributors_and_store_based_ones_are_not():
    for method in (influence(), TracIn(), Source()):
        assert isinstance(method, RunAttributor)
    for method in (TRAK(), GradientSimilarity()):
        assert not isinstance(method, RunAttributor)


def test_bad_runs_are_refused(runs):
    (run, _), queries = runs
    with pytest.raises(ValueError, match="at least one checkpoint"):
        TrainingRun(factory, (), run.train)
    with pytest.raises(ValueError, match="training order"):
        TrainingRun(factory, run.checkpoints[::-1], run.train)
    with pytest.raises(ValueError, match="at least one training run"):
        attribute_runs(TracIn(), [], queries)
    shorter = TrainingRun(factory, run.checkpoints, run.train.subset(range(10)))
    with pytest.raises(ValueError, match=r"different sizes \[10, 15\]"):
        attribute_runs(TracIn(), [run, shorter], queries)
    reordered = TrainingRun(factory, run.checkpoints, run.train.subset(range(14, -1, -1)))
    with pytest.raises(ValueError, match="different training sets of the same size"):
        attribute_runs(TracIn(), [run, reordered], queries)  # columns would name other examples


def test_a_run_listing_a_checkpoint_twice_is_refused(runs):
    """A repeated step would count its checkpoint twice (TracIn's sum, CheckpointAverage's mean)."""
    (run, _), _ = runs
    with pytest.raises(ValueError, match="increasing steps"):
        TrainingRun(factory, (*run.checkpoints, run.checkpoints[-1]), run.train)


def test_a_run_listed_twice_is_refused_not_counted_twice(runs):
    (first, second), queries = runs
    again = TrainingRun(factory, first.checkpoints, first.train)  # an equal run, not the object
    with pytest.raises(ValueError, match=r"run 2 repeats run 0 \(the same checkpoints, ending at"):
        attribute_runs(TracIn(), [first, second, again], queries)


def fitted_at(checkpoint, run, queries):
    """The influence function fitted on ``checkpoint``'s model alone."""
    model = load_checkpoint(checkpoint, factory()).eval()
    return influence().fit(model, run.train).score(queries)


def test_checkpoint_average_is_the_mean_over_the_trained_checkpoints(runs):
    (run, _), queries = runs
    assert run.checkpoints[0].segment_steps == 0  # the start closes no steps: never averaged
    trained = run.checkpoints[1:]
    each = [fitted_at(checkpoint, run, queries) for checkpoint in trained]
    assert not torch.allclose(each[0], each[1], rtol=1e-3)
    average = CheckpointAverage(influence())
    assert average.checkpoints(run) == trained
    scores = average.fit_run(run).score(queries)
    np.testing.assert_allclose(scores.numpy(), ((each[0] + each[1]) / 2).numpy(), rtol=1e-14)
    assert average.attributor.fitted_solver is None  # copies are fitted, not the wrapped one


def test_checkpoint_average_of_the_last_checkpoint_is_the_wrapped_attributor(runs):
    (run, _), queries = runs
    last = CheckpointAverage(influence(), last=1)
    assert last.checkpoints(run) == run.checkpoints[-1:]
    assert torch.equal(last.fit_run(run).score(queries), influence().fit_run(run).score(queries))
    assert CheckpointAverage(influence(), last=2).checkpoints(run) == run.checkpoints[1:]


def test_checkpoint_average_ensembles_runs(runs):
    made, queries = runs
    average = CheckpointAverage(influence())
    assert isinstance(average, RunAttributor)
    each = [CheckpointAverage(influence()).fit_run(run).score(queries) for run in made]
    mean = attribute_runs(average, made, queries)
    np.testing.assert_allclose(mean.numpy(), ((each[0] + each[1]) / 2).numpy(), rtol=1e-14)


def test_checkpoint_average_refuses_bad_counts(runs):
    (run, _), queries = runs
    with pytest.raises(ValueError, match="last must be at least 1 checkpoint, got 0"):
        CheckpointAverage(influence(), last=0)
    with pytest.raises(ValueError, match="last 3 checkpoints of a run with 2 trained"):
        CheckpointAverage(influence(), last=3).fit_run(run)
    with pytest.raises(RuntimeError, match="before scoring"):
        CheckpointAverage(influence()).score(queries)
    start_only = TrainingRun(factory, run.checkpoints[:1], run.train)
    with pytest.raises(ValueError, match="with 0 trained checkpoints"):
        CheckpointAverage(influence()).fit_run(start_only)
