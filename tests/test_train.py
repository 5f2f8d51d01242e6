from dataclasses import replace
from functools import partial

import pytest
import torch

from tda.checkpoints import list_checkpoints, load_checkpoint
from tda.data import load_mnist1d
from tda.ensemble import train_ensemble
from tda.fingerprint import model_fingerprint
from tda.models import MLP, CNN1d, build_model
from tda.training import TrainConfig, train

CONFIG = TrainConfig(epochs=4, batch_size=32, checkpoints=2)


@pytest.fixture(scope="module")
def data():
    return load_mnist1d(300, 100, seed=0)


def test_same_seed_gives_bitwise_identical_weights(data):
    first = train(build_model(MLP, 0), data.train, CONFIG, seed=5).model
    second = train(build_model(MLP, 0), data.train, CONFIG, seed=5).model
    third = train(build_model(MLP, 0), data.train, CONFIG, seed=6).model
    assert model_fingerprint(first) == model_fingerprint(second)
    assert model_fingerprint(first) != model_fingerprint(third)


def test_training_leaves_global_rng_alone(data):
    state = torch.random.get_rng_state()
    train(build_model(MLP, 0), data.train, CONFIG, seed=1)
    assert torch.equal(torch.random.get_rng_state(), state)


def test_checkpoints_record_segments_and_round_trip(data, tmp_path):
    config = TrainConfig(
        epochs=4,
        batch_size=50,
        checkpoints=2,
        optimizer=partial(torch.optim.SGD, lr=0.1),
        scheduler=partial(torch.optim.lr_scheduler.StepLR, step_size=2, gamma=0.5),
    )
    result = train(build_model(CNN1d, 0), data.train, config, seed=0, checkpoint_dir=tmp_path)
    saved = list_checkpoints(tmp_path)
    assert [c.checkpoint_id for c in saved] == ["epoch-0002", "epoch-0004"]
    assert [c.step for c in saved] == [12, 24] and [c.segment_steps for c in saved] == [12, 12]
    assert [c.segment_learning_rate for c in saved] == pytest.approx([0.1, 0.05])
    restored = load_checkpoint(saved[-1], build_model(CNN1d, 1))
    assert model_fingerprint(restored) == model_fingerprint(result.model)


def test_loading_into_the_wrong_architecture_or_tampered_file_fails(data, tmp_path):
    train(build_model(MLP, 0), data.train, CONFIG, seed=0, checkpoint_dir=tmp_path)
    checkpoint = list_checkpoints(tmp_path)[-1]
    with pytest.raises(ValueError, match="does not fit"):
        load_checkpoint(checkpoint, build_model(CNN1d, 0))
    from safetensors.torch import load_file, save_file

    state = load_file(str(checkpoint.path))
    state["0.bias"] = state["0.bias"] + 1
    save_file(state, str(checkpoint.path))
    with pytest.raises(ValueError, match="fingerprint"):
        load_checkpoint(checkpoint, build_model(MLP, 0))


def test_bad_config_and_empty_data_are_refused(data):
    with pytest.raises(ValueError, match="checkpoints"):
        TrainConfig(epochs=2, checkpoints=3)
    with pytest.raises(ValueError, match="empty"):
        train(build_model(MLP, 0), data.train.subset([]), CONFIG)


def test_save_initial_writes_the_starting_parameters_first(data, tmp_path):
    """``epoch-0000`` holds the weights before any step, closes no steps, is listed first, and
    saving it changes none of the other checkpoints."""
    config = TrainConfig(
        epochs=4, batch_size=50, checkpoints=2, optimizer=partial(torch.optim.SGD, lr=0.1)
    )
    start = model_fingerprint(build_model(MLP, 0))
    plain = train(build_model(MLP, 0), data.train, config, checkpoint_dir=tmp_path / "plain")
    with_start = replace(config, save_initial=True)
    result = train(build_model(MLP, 0), data.train, with_start, checkpoint_dir=tmp_path / "start")
    saved = list_checkpoints(tmp_path / "start")
    assert saved == result.checkpoints
    assert [c.checkpoint_id for c in saved] == ["epoch-0000", "epoch-0002", "epoch-0004"]
    first = saved[0]
    assert (first.step, first.epoch, first.segment_steps) == (0, 0, 0)
    assert (first.learning_rate, first.segment_learning_rate) == (0.1, 0.0)
    assert model_fingerprint(load_checkpoint(first, build_model(MLP, 1))) == start
    assert saved[1:] == [
        replace(c, path=tmp_path / "start" / c.path.name) for c in plain.checkpoints
    ]


def test_an_ensemble_member_with_its_start_is_finished_only_when_trained(data, tmp_path):
    config = TrainConfig(epochs=2, batch_size=100, save_initial=True)
    train(build_model(MLP, 0), data.train, config, checkpoint_dir=tmp_path / "seed-0")
    final = list_checkpoints(tmp_path / "seed-0")[-1]
    final.path.unlink()
    final.path.with_suffix(".json").unlink()  # interrupted after the start checkpoint
    assert [c.epoch for c in list_checkpoints(tmp_path / "seed-0")] == [0]
    members = train_ensemble(MLP, data.train, config, [0], tmp_path, progress=False)
    assert [c.checkpoint_id for c in members[0]] == ["epoch-0000", "epoch-0002"]
    stamps = [c.path.stat().st_mtime_ns for c in members[0]]
    again = train_ensemble(MLP, data.train, config, [0], tmp_path, progress=False)
    assert again[0] == members[0]  # finished: listed, not retrained
    assert [c.path.stat().st_mtime_ns for c in again[0]] == stamps
