"""TracIn-CP against a float64 loop over checkpoints with explicit per-example autograd."""

import os
import warnings
from dataclasses import replace
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from tda.data import Examples
from tda.methods.stages import TrainingStage
from tda.methods.tracin import TracIn
from tda.models import MLP, build_model
from tda.task import ClassificationTask
from tda.training import TrainConfig, train

TASK = ClassificationTask()


def factory():
    return build_model(lambda: MLP(4, (5,), 3), seed=0, dtype=torch.float64)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 4-5-3 float64 MLP, SGD with a decaying rate, 3 checkpoints; 17 train, 5 query examples."""
    generator = torch.Generator().manual_seed(1)
    data = Examples(
        torch.randn(22, 4, generator=generator, dtype=torch.float64),
        torch.randint(0, 3, (22,), generator=generator),
    )
    config = TrainConfig(
        epochs=6,
        batch_size=8,
        optimizer=partial(torch.optim.SGD, lr=0.5),
        scheduler=partial(torch.optim.lr_scheduler.StepLR, step_size=2, gamma=0.5),
        checkpoints=3,
    )
    train_set = data.subset(range(17))
    result = train(factory(), train_set, config, checkpoint_dir=tmp_path_factory.mktemp("ckpt"))
    return result.checkpoints, train_set, data.subset(range(17, 22))


def gradient(model, function, x, y):
    value = getattr(TASK, function)(model(x.unsqueeze(0)).squeeze(0), y)
    return torch.cat([g.reshape(-1) for g in torch.autograd.grad(value, list(model.parameters()))])


def loop_oracle(checkpoints, train_set, queries):
    """Σ_c η_c ∇f(x;θ_c)·(−∇ℓ(z;θ_c)), one autograd call per example."""
    total = np.zeros((len(queries), len(train_set)))
    for checkpoint in checkpoints:
        model = factory()
        model.load_state_dict(load_file(str(checkpoint.path)))  # not via the library
        for q, (x, y) in enumerate(zip(queries.inputs, queries.targets, strict=True)):
            query = gradient(model, "output", x, y)
            for i, (xi, yi) in enumerate(zip(train_set.inputs, train_set.targets, strict=True)):
                train_gradient = gradient(model, "loss", xi, yi)
                total[q, i] += checkpoint.segment_learning_rate * float(query @ -train_gradient)
    return total


def test_tracin_equals_per_example_autograd_loop(trained):
    checkpoints, train_set, queries = trained
    assert len({c.segment_learning_rate for c in checkpoints}) == 3  # the rates really differ
    scores = TracIn(chunk_size=5).fit(factory, checkpoints, train_set).score(queries)
    assert scores.shape == (5, 17) and scores.dtype == torch.float64
    np.testing.assert_allclose(
        scores.numpy(), loop_oracle(checkpoints, train_set, queries), rtol=1e-10, atol=1e-12
    )


def test_scores_do_not_depend_on_chunk_size_or_checkpoint_order(trained):
    checkpoints, train_set, queries = trained
    reference = TracIn(chunk_size=256).fit(factory, checkpoints, train_set).score(queries)
    other = TracIn(chunk_size=3).fit(factory, checkpoints[::-1], train_set).score(queries)
    np.testing.assert_allclose(other.numpy(), reference.numpy(), rtol=1e-12, atol=1e-14)


def test_a_training_example_pushes_its_own_margin_up(trained):
    checkpoints, train_set, _ = trained
    scores = TracIn().fit(factory, checkpoints, train_set).score(train_set)
    # self score = Σ_c η_c (1 − p_c) ‖∇f‖² > 0 for the margin
    assert bool((torch.diagonal(scores) > 0).all())


def test_misuse_is_reported(trained):
    checkpoints, train_set, queries = trained
    with pytest.raises(RuntimeError, match="call fit"):
        TracIn().score(queries)
    with pytest.raises(ValueError, match="at least one checkpoint"):
        TracIn().fit(factory, [], train_set)


def test_a_checkpoint_listed_twice_is_refused_not_counted_twice(trained):
    checkpoints, train_set, _ = trained
    with pytest.raises(ValueError, match=f"'{checkpoints[1].checkpoint_id}'.*more than once"):
        TracIn().fit(factory, [*checkpoints, checkpoints[1]], train_set)
    again = replace(checkpoints[0], path=Path(os.path.relpath(checkpoints[0].path)))  # same file
    with pytest.raises(ValueError, match="more than once"):
        TracIn().fit_stages(
            factory,
            [TrainingStage(checkpoints[:2], [0, 1]), TrainingStage([again], [2])],
            train_set,
        )


def test_one_checkpoint_warns_that_tracin_is_grad_dot_once_per_fit(trained, tmp_path):
    """Over one checkpoint TracIn is η·grad-dot: users asking for a trajectory are told so, with
    the count and the setting that saves more. The step-0 start (η = 0) is not a second one."""
    checkpoints, train_set, _ = trained
    with pytest.warns(UserWarning, match=r"TracIn got 1 checkpoint: .*\(grad-dot\)") as caught:
        TracIn().fit(factory, checkpoints[-1:], train_set)
    assert len(caught) == 1
    assert "TrainConfig(checkpoints=N)" in str(caught[0].message)
    assert "++train.checkpoints=N" in str(caught[0].message)
    config = TrainConfig(epochs=2, batch_size=8, checkpoints=1, save_initial=True)
    started = train(factory(), train_set, config, checkpoint_dir=tmp_path).checkpoints
    assert [c.segment_learning_rate == 0 for c in started] == [True, False]
    with pytest.warns(UserWarning, match=r"got 2 checkpoints, 1 with a nonzero segment") as caught:
        TracIn().fit_stages(factory, [TrainingStage(started)], train_set)
    assert len(caught) == 1


def test_several_checkpoints_fit_without_a_warning(trained):
    checkpoints, train_set, _ = trained
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fitted = TracIn().fit(factory, checkpoints[:2], train_set)
        stages = [TrainingStage(checkpoints[:1], [0, 1]), TrainingStage(checkpoints[1:2], [2])]
        TracIn().fit_stages(factory, stages, train_set)  # one per stage: still two terms
    assert [str(w.message) for w in caught if "TracIn got" in str(w.message)] == []
    assert len(fitted.checkpoints) == 2


def test_fit_and_score_read_raw_arrays_as_their_examples(trained):
    """(X, y) arrays were taken for 2 examples at fit, then failed at score with "'tuple' object
    has no attribute 'to'"."""
    checkpoints, train_set, queries = trained
    expected = TracIn().fit(factory, checkpoints, train_set).score(queries)
    raw = TracIn().fit(factory, checkpoints, (train_set.inputs.numpy(), train_set.targets.numpy()))
    scores = raw.score((queries.inputs.numpy(), queries.targets.numpy()))
    torch.testing.assert_close(scores, expected, rtol=0, atol=0)


def test_inputs_holding_nan_are_refused_at_fit_naming_the_example(trained):
    checkpoints, train_set, _ = trained
    inputs = train_set.inputs.clone()
    inputs[3, 1] = float("nan")
    with pytest.raises(ValueError, match="the input of example 3 holds nan"):
        TracIn().fit(factory, checkpoints, Examples(inputs, train_set.targets))
