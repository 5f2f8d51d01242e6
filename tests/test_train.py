import json
import shutil
from dataclasses import replace
from functools import partial

import numpy as np
import pytest
import torch

from tda import ensemble
from tda.checkpoints import list_checkpoints, load_checkpoint, save_checkpoint
from tda.data import Examples, load_mnist1d
from tda.ensemble import check_member, load_member, train_ensemble
from tda.fingerprint import model_fingerprint
from tda.methods import TracIn, TrainingRun
from tda.models import MLP, CNN1d, build_model
from tda.task import IGNORE_INDEX, ClassificationTask, ClassLogit, LanguageModelingTask
from tda.training import CHECKPOINT_SETTINGS, TrainConfig, train, weight_settings
from tda.transformer import CausalTransformer
from tda.valuation import tracin_self_influence

CONFIG = TrainConfig(epochs=4, batch_size=32, checkpoints=2)
POSITION = {
    "step": 0,
    "epoch": 0,
    "learning_rate": 0.0,
    "segment_steps": 0,
    "segment_learning_rate": 0.0,
}


@pytest.fixture(scope="module")
def data():
    return load_mnist1d(300, 100, seed=0)


def test_same_seed_gives_bitwise_identical_weights(data):
    first = train(build_model(MLP, 0), data.train, CONFIG, seed=5).model
    second = train(build_model(MLP, 0), data.train, CONFIG, seed=5).model
    third = train(build_model(MLP, 0), data.train, CONFIG, seed=6).model
    assert model_fingerprint(first) == model_fingerprint(second)
    assert model_fingerprint(first) != model_fingerprint(third)


@pytest.mark.parametrize("bad", [{"epochs": 0}, {"epochs": 2.5}, {"batch_size": True}])
def test_training_settings_must_be_positive_integers(bad):
    with pytest.raises(ValueError, match="must be an integer >= 1"):
        TrainConfig(**bad)


def test_numpy_integer_seeds_train_as_their_int(data, tmp_path):
    # torch.Generator.manual_seed refused np.int64 ("an integer is required"), so
    # train_ensemble(seeds=np.arange(2)) failed
    expected = train(build_model(MLP, 0), data.train, CONFIG, seed=1).model
    given = train(build_model(MLP, 0), data.train, CONFIG, seed=np.int64(1)).model
    assert model_fingerprint(given) == model_fingerprint(expected)
    config = replace(CONFIG, epochs=1, checkpoints=1)
    members = train_ensemble(MLP, data.train, config, np.arange(2), tmp_path, progress=False)
    assert sorted(members) == [0, 1] and (tmp_path / "seed-1" / "epoch-0001.json").is_file()


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


@pytest.mark.parametrize("checkpoint_id", ["../outside", "a/b", ".hidden", ""])
def test_a_checkpoint_id_that_is_not_a_plain_name_is_refused(tmp_path, checkpoint_id):
    with pytest.raises(ValueError, match="checkpoint id .* is not valid"):
        save_checkpoint(tmp_path / "run", checkpoint_id, build_model(MLP, 0), **POSITION)
    assert not tmp_path.joinpath("outside.safetensors").exists()


def test_a_refused_checkpoint_leaves_the_model_unchanged(data, tmp_path):
    train(build_model(MLP, 0), data.train, CONFIG, seed=0, checkpoint_dir=tmp_path)
    checkpoint = list_checkpoints(tmp_path)[-1]
    # the first layers of the other head fit, so a partial load would already change them
    other_head = build_model(partial(MLP, num_classes=9), 1)
    other_dtype = build_model(MLP, 1, dtype=torch.float64)
    for model, difference in [
        (other_head, r"4.bias: file has \(\(10,\), torch.float32\), model \(\(9,\)"),
        (
            other_dtype,
            r"0.bias: file has \(\(128,\), torch.float32\), model \(\(128,\), torch.float64",
        ),
    ]:
        before = model_fingerprint(model)
        with pytest.raises(ValueError, match=f"does not fit this model: {difference}"):
            load_checkpoint(checkpoint, model)
        assert model_fingerprint(model) == before
    from safetensors.torch import load_file, save_file

    state = load_file(str(checkpoint.path))
    state["0.bias"] = state["0.bias"] + 1
    save_file(state, str(checkpoint.path))
    model = build_model(MLP, 1)
    before = model_fingerprint(model)
    with pytest.raises(ValueError, match="does not match its recorded fingerprint"):
        load_checkpoint(checkpoint, model)
    assert model_fingerprint(model) == before


class _TiedHead(torch.nn.Module):
    """Token ids ``[batch, 3]`` -> logits over 5 tokens; the head reuses the embedding."""

    def __init__(self) -> None:
        super().__init__()
        self.embedding = torch.nn.Embedding(5, 4)
        self.head = torch.nn.Linear(4, 5, bias=False)
        self.head.weight = self.embedding.weight

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.embedding(tokens).mean(1))


def test_a_model_with_tied_weights_is_checkpointed_and_restored(tmp_path):
    # safetensors refused the two names of one shared tensor, so such a model could not be
    # trained with a checkpoint directory (nor as an ensemble member)
    tokens = torch.tensor([[0, 1, 2], [3, 4, 0], [1, 1, 2], [4, 3, 2]])
    examples = Examples(tokens, torch.tensor([2, 0, 1, 3]))
    config = TrainConfig(epochs=2, batch_size=2, checkpoints=2)
    result = train(build_model(_TiedHead, 0), examples, config, checkpoint_dir=tmp_path)
    saved = list_checkpoints(tmp_path)
    assert [c.checkpoint_id for c in saved] == ["epoch-0001", "epoch-0002"]
    restored = load_checkpoint(saved[-1], build_model(_TiedHead, 1))
    assert restored.head.weight is restored.embedding.weight
    assert torch.equal(restored.embedding.weight, result.model.embedding.weight)
    assert model_fingerprint(restored) == saved[-1].fingerprint


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


def test_checkpoint_settings_leave_the_weights_bitwise_the_same(data, tmp_path):
    """What weight_settings drops (stores of retrained outputs ignore it) changes no weight."""
    config = TrainConfig(epochs=4, batch_size=32, optimizer=partial(torch.optim.SGD, lr=0.1))
    plain = train(build_model(MLP, 0), data.train, config, seed=3).model
    for changed in ({"checkpoints": 4}, {"checkpoints": 4, "save_initial": True}):
        saving = replace(config, **changed)
        folder = tmp_path / "-".join(changed)
        model = train(build_model(MLP, 0), data.train, saving, seed=3, checkpoint_dir=folder).model
        assert model_fingerprint(model) == model_fingerprint(plain)
        assert len(list_checkpoints(folder)) == 4 + ("save_initial" in changed)
    assert set(CHECKPOINT_SETTINGS) == {"checkpoints", "save_initial"}
    settings = {"epochs": 4, "batch_size": 32, "checkpoints": 4, "save_initial": True}
    assert weight_settings(settings) == {"epochs": 4, "batch_size": 32}


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


def test_an_ensemble_on_float64_data_trains_and_loads_float64_members(data, tmp_path):
    """Members were built float32 whatever the data: float64 inputs failed at the first step."""
    double = Examples(data.train.inputs[:200].double(), data.train.targets[:200])
    config = TrainConfig(epochs=1, batch_size=50)
    members = train_ensemble(MLP, double, config, [0], tmp_path, progress=False)
    member = load_member(MLP, members[0][-1])
    assert all(p.dtype == torch.float64 for p in member.parameters())
    expected = train(build_model(MLP, 0, dtype=torch.float64), double, config, seed=0).model
    assert model_fingerprint(member) == model_fingerprint(expected)
    single = train_ensemble(MLP, data.train, config, [0], tmp_path / "single", progress=False)
    assert next(load_member(MLP, single[0][-1]).parameters()).dtype == torch.float32


def test_checkpoint_readers_load_float64_members_in_float64(data, tmp_path):
    """TracIn, TrainingRun (influence over runs) and TracIn self-influence rebuilt float32
    models for float64 checkpoints and refused them."""
    double = Examples(data.train.inputs[:100].double(), data.train.targets[:100])
    config = TrainConfig(epochs=2, batch_size=50, checkpoints=2)
    checkpoints = train_ensemble(MLP, double, config, [0], tmp_path, progress=False)[0]
    queries = Examples(data.test.inputs[:5].double(), data.test.targets[:5])
    assert TracIn().fit(MLP, checkpoints, double).score(queries).shape == (5, 100)
    model = TrainingRun(MLP, tuple(checkpoints), double).final_model()
    assert next(model.parameters()).dtype == torch.float64 and not model.training
    assert tracin_self_influence(MLP, checkpoints, double).shape == (100,)


def test_an_ensemble_member_trained_on_other_data_or_settings_is_refused(data, tmp_path):
    config = TrainConfig(epochs=1, batch_size=100)
    members = train_ensemble(MLP, data.train, config, [0], tmp_path, progress=False)
    assert train_ensemble(MLP, data.train, config, [0], tmp_path, progress=False) == members
    with pytest.raises(
        ValueError, match=r"trained with other data \('data': recorded '\w+', asked '\w+'\); use"
    ):
        train_ensemble(MLP, data.train.subset(range(200)), config, [0], tmp_path, progress=False)
    lower = replace(config, optimizer=partial(torch.optim.Adam, lr=1e-3))
    asked = r"\('settings\.optimizer\.kwargs\.lr': recorded 0\.003, asked 0\.001\)"
    with pytest.raises(ValueError, match=r"other settings " + asked):
        train_ensemble(MLP, data.train, lower, [0], tmp_path, progress=False)
    # a factory's memory address is not part of the recipe: a lambda reads the same every run
    other_lambda = replace(config, optimizer=lambda p: torch.optim.Adam(p))
    train_ensemble(MLP, data.train, other_lambda, [1], tmp_path, progress=False)
    again = replace(config, optimizer=lambda p: torch.optim.Adam(p))
    assert train_ensemble(MLP, data.train, again, [1], tmp_path, progress=False)[1]
    # but its content is: a lambda with another learning rate is another recipe
    slower = replace(config, optimizer=lambda p: torch.optim.Adam(p, lr=1e-4))
    with pytest.raises(ValueError, match="trained with other settings"):
        train_ensemble(MLP, data.train, slower, [1], tmp_path, progress=False)


def _tanh_mlp() -> torch.nn.Module:
    """:class:`MLP` with ``hidden=(16,)`` but Tanh: the same parameters and initial weights."""
    layers = [torch.nn.Linear(40, 16), torch.nn.Tanh(), torch.nn.Linear(16, 10)]
    return torch.nn.Sequential(*layers)


def test_an_ensemble_member_of_another_model_is_refused(data, tmp_path):
    """The recipe used to leave out the model: a Tanh network got the ReLU network's member."""
    config, relu = TrainConfig(epochs=1, batch_size=100), partial(MLP, hidden=(16,))
    assert model_fingerprint(build_model(relu, 0)) == model_fingerprint(build_model(_tanh_mlp, 0))
    members = train_ensemble(relu, data.train, config, [0], tmp_path, progress=False)
    with pytest.raises(
        ValueError,
        match=r"other model \('model\.architecture': recorded 'MLP.*ReLU.*asked 'Sequential.*Tanh",
    ):
        train_ensemble(_tanh_mlp, data.train, config, [0], tmp_path, progress=False)
    with pytest.raises(ValueError, match="trained with other model"):  # other initial weights
        train_ensemble(
            partial(MLP, hidden=(17,)), data.train, config, [0], tmp_path, progress=False
        )
    assert train_ensemble(relu, data.train, config, [0], tmp_path, progress=False) == members


def test_a_transformer_member_with_other_heads_is_refused(tmp_path):
    """Heads change no weight shape nor the initial weights: the recipe named neither."""
    tokens = torch.randint(0, 11, (8, 6))
    data = Examples(tokens, torch.roll(tokens, -1, dims=1))
    config = TrainConfig(epochs=1, batch_size=4)
    task = LanguageModelingTask()

    def transformer(heads):
        return partial(CausalTransformer, vocab_size=11, context=6, dim=8, layers=1, heads=heads)

    train_ensemble(transformer(2), data, config, [0], tmp_path, task=task, progress=False)
    with pytest.raises(ValueError, match="other model"):
        train_ensemble(transformer(4), data, config, [0], tmp_path, task=task, progress=False)


def test_a_recipe_recorded_before_the_model_was_still_opens(data, tmp_path):
    config = TrainConfig(epochs=1, batch_size=100)
    members = train_ensemble(MLP, data.train, config, [0], tmp_path, progress=False)
    path = tmp_path / "seed-0.recipe.json"
    recipe = json.loads(path.read_text())
    assert set(recipe["model"]) == {"architecture", "initial"}
    del recipe["model"]
    path.write_text(json.dumps(recipe))
    assert train_ensemble(MLP, data.train, config, [0], tmp_path, progress=False) == members
    assert "model" not in json.loads(path.read_text())  # not vouched for after the fact
    with pytest.raises(ValueError, match="trained with other settings"):  # the rest still checked
        other = replace(config, batch_size=50)
        train_ensemble(MLP, data.train, other, [0], tmp_path, progress=False)


def test_a_member_trained_before_recipes_were_recorded_is_reused(data, tmp_path):
    config = TrainConfig(epochs=1, batch_size=100)
    members = train_ensemble(MLP, data.train, config, [0], tmp_path, progress=False)
    (tmp_path / "seed-0.recipe.json").unlink()
    assert train_ensemble(MLP, data.train, config, [0], tmp_path, progress=False) == members
    assert not (tmp_path / "seed-0.recipe.json").exists()  # not vouched for after the fact


_FIRST_TRIES = {  # (model factory, data, optimizer) of a first try that fails, and its error
    "labels -1/+1": (MLP, {5: -1}, None, ValueError),
    "a model of 30 inputs": (partial(MLP, in_features=30), {}, None, ValueError),
    "a diverging learning rate": (MLP, {}, partial(torch.optim.SGD, lr=1e30), FloatingPointError),
}


@pytest.mark.parametrize("first_try", sorted(_FIRST_TRIES))
def test_a_member_that_failed_before_any_checkpoint_is_retried_with_other_settings(
    data, tmp_path, first_try
):
    """The recipe is written before training: a failed first try left it behind, and the
    corrected retry was refused as "a member trained with other data" though none was."""
    factory, changes, optimizer, error = _FIRST_TRIES[first_try]
    config = TrainConfig(epochs=1, batch_size=100)
    first = replace(config, optimizer=optimizer) if optimizer else config
    with pytest.raises(error):
        train_ensemble(
            factory, _with_targets(data.train, changes), first, [0], tmp_path, progress=False
        )
    assert not (tmp_path / "seed-0.recipe.json").exists()  # withdrawn: nothing was trained
    members = train_ensemble(MLP, data.train, config, [0], tmp_path, progress=False)
    fresh = train_ensemble(MLP, data.train, config, [0], tmp_path / "fresh", progress=False)
    assert [c.fingerprint for c in members[0]] == [c.fingerprint for c in fresh[0]]
    recipe = json.loads((tmp_path / "seed-0.recipe.json").read_text())
    assert recipe == json.loads((tmp_path / "fresh" / "seed-0.recipe.json").read_text())


def test_a_member_that_failed_after_a_checkpoint_keeps_its_recipe(data, tmp_path):
    """Its start checkpoint is on disk: the recipe still says what it is, and the refusal says
    how far it got and how to train it anew."""
    config = TrainConfig(epochs=2, batch_size=100, save_initial=True)
    diverging = replace(config, optimizer=partial(torch.optim.SGD, lr=1e30))
    with pytest.raises(FloatingPointError):
        train_ensemble(MLP, data.train, diverging, [0], tmp_path, progress=False)
    assert [c.epoch for c in list_checkpoints(tmp_path / "seed-0")] == [0]
    message = (
        r"seed-0 holds a member trained with other settings \(.*\); use another directory, or, "
        r"unless a process is training it now \(its last checkpoint is of epoch 0\), delete "
        r"\S+seed-0 and \S+seed-0\.recipe\.json to train it anew with these settings"
    )
    with pytest.raises(ValueError, match=message):
        train_ensemble(MLP, data.train, config, [0], tmp_path, progress=False)


def test_a_claim_without_checkpoints_is_refused_as_a_claim_and_left_alone(
    data, tmp_path, monkeypatch
):
    """A recipe alone may be another process's member in training (or a killed run's): other
    settings are refused without calling it trained, and a failure here leaves it in place."""
    config = TrainConfig(epochs=1, batch_size=100)
    train_ensemble(MLP, data.train, config, [0], tmp_path / "other", progress=False)
    claim = tmp_path / "seed-0.recipe.json"
    shutil.copy(tmp_path / "other" / "seed-0.recipe.json", claim)  # another process's claim
    message = (
        r"seed-0\.recipe\.json claims \S+seed-0 for a member to train with other data \(.*\), "
        r"but no checkpoint of it was saved: another process may be training it now, or a run "
        r"was killed before its first checkpoint; if none is training it, delete \S+seed-0\."
        r"recipe\.json to train it with these settings, or use another directory"
    )
    with pytest.raises(ValueError, match=message) as refused:
        train_ensemble(MLP, data.train.subset(range(200)), config, [0], tmp_path, progress=False)
    assert "trained with" not in str(refused.value)

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(ensemble, "train", killed)
    with pytest.raises(KeyboardInterrupt):  # the same recipe: trained here too, and stopped
        train_ensemble(MLP, data.train, config, [0], tmp_path, progress=False)
    assert claim.is_file()  # not this call's to withdraw


def test_a_member_whose_claim_was_withdrawn_while_it_trained_is_recorded(
    data, tmp_path, monkeypatch
):
    """Two processes training one member with one recipe: when the one that recorded it fails
    and withdraws it, the other's finished member is still recorded (not reused unchecked)."""
    config, claim = TrainConfig(epochs=1, batch_size=100), tmp_path / "seed-0.recipe.json"
    train_for_real = ensemble.train

    def withdrawn_meanwhile(*args, **kwargs):
        claim.unlink()
        return train_for_real(*args, **kwargs)

    monkeypatch.setattr(ensemble, "train", withdrawn_meanwhile)
    train_ensemble(MLP, data.train, config, [0], tmp_path, progress=False)
    monkeypatch.undo()
    assert claim.is_file()
    with pytest.raises(ValueError, match="holds a member trained with other data"):
        train_ensemble(MLP, data.train.subset(range(200)), config, [0], tmp_path, progress=False)


def test_check_member_gives_the_checkpoints_of_a_member_trained_as_asked(data, tmp_path):
    config = TrainConfig(epochs=1, batch_size=100)
    members = train_ensemble(MLP, data.train, config, [0], tmp_path, progress=False)
    assert check_member(MLP, data.train, config, 0, tmp_path) == members[0]


def test_check_member_is_public_beside_train_ensemble_and_load_member():
    """Readers of members outside the experiments (a notebook) check them as featurize.py and
    score.py do, from the top level like the ensemble's other two calls."""
    import tda

    assert tda.check_member is check_member
    assert {"check_member", "load_member", "train_ensemble"} <= set(tda.__all__)


def test_check_member_refuses_other_data_settings_or_model_by_what_differs(data, tmp_path):
    """Readers of the members (featurize.py, score.py) checked only the epoch count: members of
    240 examples were scored as those of 400; other epochs read as "not finished training"."""
    config = TrainConfig(epochs=1, batch_size=100)
    train_ensemble(MLP, data.train, config, [0], tmp_path, progress=False)
    with pytest.raises(ValueError, match=r"member 0 trained with other data \('data': recorded"):
        check_member(MLP, data.train.subset(range(200)), config, 0, tmp_path)
    longer = replace(config, epochs=3)  # the recipe, not the last epoch, names the difference
    with pytest.raises(
        ValueError, match=r"other settings \('settings\.epochs': recorded 1, asked 3\); pass the"
    ):
        check_member(MLP, data.train, longer, 0, tmp_path)
    with pytest.raises(ValueError, match="trained with other model"):
        check_member(partial(MLP, hidden=(17,)), data.train, config, 0, tmp_path)
    with pytest.raises(ValueError, match="trained with other task"):
        check_member(MLP, data.train, config, 0, tmp_path, task=LanguageModelingTask())


def test_check_member_refuses_an_absent_or_unfinished_member_naming_train_py(data, tmp_path):
    config = TrainConfig(epochs=2, batch_size=100, checkpoints=2)
    with pytest.raises(FileNotFoundError, match=r"seed-0 does not exist.*run experiments/train"):
        check_member(MLP, data.train, config, 0, tmp_path)
    saved = train_ensemble(MLP, data.train, config, [0], tmp_path, progress=False)[0]
    saved[-1].path.unlink()
    saved[-1].path.with_suffix(".json").unlink()  # interrupted after epoch 1
    with pytest.raises(
        ValueError, match=r"not finished training \(its last checkpoint is of epoch 1 of 2\); run"
    ):
        check_member(MLP, data.train, config, 0, tmp_path)


def test_check_member_names_the_epochs_of_a_member_without_a_recipe(data, tmp_path):
    config = TrainConfig(epochs=1, batch_size=100)
    members = train_ensemble(MLP, data.train, config, [0], tmp_path, progress=False)
    (tmp_path / "seed-0.recipe.json").unlink()  # trained before recipes were recorded
    assert check_member(MLP, data.train, config, 0, tmp_path) == members[0]
    with pytest.raises(
        ValueError,
        match=r"recorded\): its last checkpoint is of epoch 1, but the settings ask 3 epochs "
        r"\(train\.epochs\); pass the experiment=",
    ):
        check_member(MLP, data.train, replace(config, epochs=3), 0, tmp_path)


def _parameters(model) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def test_keep_all_trains_exactly_as_without_a_mask(data):
    everything = torch.ones(len(data.train), dtype=torch.bool)
    masked = train(build_model(MLP, 0), data.train, CONFIG, seed=5, keep=everything).model
    plain = train(build_model(MLP, 0), data.train, CONFIG, seed=5).model
    assert model_fingerprint(masked) == model_fingerprint(plain)


def test_keep_drops_removed_examples_from_the_full_run_batches(data):
    """Replayed by hand: SGD on each full-data batch without its removed examples."""
    keep = torch.ones(len(data.train), dtype=torch.bool)
    keep[::7] = False
    config = TrainConfig(epochs=2, batch_size=16, optimizer=partial(torch.optim.SGD, lr=0.1))
    trained = train(build_model(MLP, 0), data.train, config, seed=3, keep=keep).model
    model = build_model(MLP, 0)
    optimizer, generator = torch.optim.SGD(model.parameters(), lr=0.1), torch.Generator()
    generator.manual_seed(3)
    with torch.random.fork_rng(devices=[]):
        for _ in range(2):
            order = torch.randperm(len(data.train), generator=generator)
            for start in range(0, len(order), 16):
                batch = order[start : start + 16]
                batch = batch[keep[batch]]
                logits = model(data.train.inputs[batch])
                loss = torch.nn.functional.cross_entropy(logits, data.train.targets[batch])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
    torch.testing.assert_close(_parameters(trained), _parameters(model), rtol=0, atol=1e-7)


def test_a_batch_with_every_example_removed_takes_no_step(data, tmp_path):
    generator = torch.Generator().manual_seed(0)
    first_batch = torch.randperm(len(data.train), generator=generator)[:32]
    keep = torch.ones(len(data.train), dtype=torch.bool)
    keep[first_batch] = False
    config = TrainConfig(epochs=1, batch_size=32)
    saved = train(
        build_model(MLP, 0), data.train, config, seed=0, keep=keep, checkpoint_dir=tmp_path
    )
    assert saved.checkpoints[-1].step == -(-len(data.train) // 32) - 1


def test_aligned_removal_stays_closer_to_the_full_run_than_a_reshuffle(data):
    keep = torch.ones(len(data.train), dtype=torch.bool)
    keep[[3, 50, 200]] = False
    full = _parameters(train(build_model(MLP, 0), data.train, CONFIG, seed=1).model)
    aligned = _parameters(train(build_model(MLP, 0), data.train, CONFIG, seed=1, keep=keep).model)
    reshuffled = _parameters(
        train(build_model(MLP, 0), data.train.subset(keep), CONFIG, seed=1).model
    )
    assert (aligned - full).norm() < 0.5 * (reshuffled - full).norm()


def test_bad_keep_masks_are_refused(data):
    n = len(data.train)
    with pytest.raises(ValueError, match=r"boolean mask of shape \(300,\)"):
        train(build_model(MLP, 0), data.train, CONFIG, keep=torch.ones(n - 1, dtype=torch.bool))
    with pytest.raises(ValueError, match="boolean mask"):
        train(build_model(MLP, 0), data.train, CONFIG, keep=torch.ones(n, dtype=torch.long))
    with pytest.raises(ValueError, match="keep removes every example"):
        train(build_model(MLP, 0), data.train, CONFIG, keep=torch.zeros(n, dtype=torch.bool))


class _OwnTask:
    """A task of the caller's own (cross-entropy): train knows nothing of its targets."""

    def output(self, logits, target):
        return ClassificationTask().output(logits, target)

    def loss(self, logits, target):
        return ClassificationTask().loss(logits, target)

    def out_to_loss(self, logits, target):
        return ClassificationTask().out_to_loss(logits, target)


def test_a_non_finite_loss_names_its_step(data):
    """Targets that train cannot check (a task of the caller's own) stop training at the step
    where the loss turns NaN."""
    targets = data.train.targets.clone()
    targets[5] = -1
    mislabelled = type(data.train)(data.train.inputs, targets)
    order = torch.randperm(len(targets), generator=torch.Generator().manual_seed(2))
    step = int((order == 5).nonzero()[0, 0]) // CONFIG.batch_size + 1
    message = f"training loss became nan at step {step} \\(epoch 1\\): .* a target lies outside"
    with pytest.raises(FloatingPointError, match=message):
        train(build_model(MLP, 0), mislabelled, CONFIG, seed=2, task=_OwnTask())


def test_a_non_finite_loss_in_a_later_epoch_names_its_step_from_the_start(data):
    """The step restarted at 0 every epoch, unlike the checkpoints' step count."""

    class FailsOnStep(ClassificationTask):
        calls = 0

        def loss(self, logits, target):
            FailsOnStep.calls += 1
            loss = super().loss(logits, target)
            return loss * float("nan") if FailsOnStep.calls == 15 else loss

    per_epoch = -(-len(data.train) // CONFIG.batch_size)  # 10 steps of 32 for 300 examples
    assert per_epoch == 10
    with pytest.raises(FloatingPointError, match=r"nan at step 15 \(epoch 2\)"):
        train(build_model(MLP, 0), data.train, CONFIG, seed=2, task=FailsOnStep())


def _with_targets(examples, changes):
    targets = examples.targets.clone()
    for index, value in changes.items():
        targets[index] = value
    return Examples(examples.inputs, targets)


@pytest.mark.parametrize("task", [ClassificationTask(), ClassLogit(3)])
@pytest.mark.parametrize(
    ("changes", "first"), [({5: -1, 9: 10}, "-1 of example 5"), ({9: 10}, "10 of example 9")]
)
def test_a_target_outside_the_classes_is_refused_before_any_step(
    data, tmp_path, task, changes, first
):
    """-1/+1 labels (or 10 for a 10-class model) failed at a step with a NaN loss, after the
    start checkpoint and an ensemble's recipe were written."""
    model = build_model(MLP, 0)
    before = model_fingerprint(model)
    config = replace(CONFIG, save_initial=True)
    message = rf"target {first} lies outside the model's classes 0\.\.9 \(its 10 outputs\); map"
    with pytest.raises(ValueError, match=message):
        train(
            model,
            _with_targets(data.train, changes),
            config,
            task=task,
            checkpoint_dir=tmp_path / "run",
        )
    assert model_fingerprint(model) == before and not (tmp_path / "run").exists()


def test_a_fractional_target_is_refused_and_a_removed_one_is_not_read(data):
    """A float target must be a whole class; an example that keep removes is not checked."""
    floats = Examples(data.train.inputs, data.train.targets.double())
    halves = _with_targets(floats, {7: 0.5})
    with pytest.raises(ValueError, match=r"target 0\.5 of example 7 lies outside"):
        train(build_model(MLP, 0), halves, CONFIG)
    keep = torch.ones(len(data.train), dtype=torch.bool)
    keep[7] = False
    bad_but_removed = _with_targets(data.train, {7: -1})
    expected = train(build_model(MLP, 0), data.train, CONFIG, keep=keep).model
    trained = train(build_model(MLP, 0), bad_but_removed, CONFIG, keep=keep).model
    assert model_fingerprint(trained) == model_fingerprint(expected)


def test_non_finite_inputs_are_refused_before_any_step(data, tmp_path):
    """A NaN feature failed at the step of its batch with "loss became nan"."""
    inputs = data.train.inputs.clone()
    inputs[5, 3], inputs[9, 0] = float("nan"), float("-inf")
    poisoned = Examples(inputs, data.train.targets)
    model = build_model(MLP, 0)
    before = model_fingerprint(model)
    with pytest.raises(ValueError, match=r"the input of example 5 holds nan: .* impute or drop"):
        train(model, poisoned, CONFIG, checkpoint_dir=tmp_path / "run")
    assert model_fingerprint(model) == before and not (tmp_path / "run").exists()
    keep = torch.ones(len(inputs), dtype=torch.bool)
    keep[5] = False
    with pytest.raises(ValueError, match="the input of example 9 holds -inf"):
        train(model, poisoned, CONFIG, keep=keep)
    keep[9] = False
    assert train(model, poisoned, CONFIG, keep=keep).model is model  # removed: not read


def test_a_model_that_cannot_read_the_inputs_is_refused_naming_their_shape(data, tmp_path):
    """A 30-feature data set on a 40-input MLP failed with torch's "mat1 and mat2 shapes cannot
    be multiplied (64x30 and 40x128)"."""
    narrow = Examples(data.train.inputs[:, :30].contiguous(), data.train.targets)
    model = build_model(MLP, 0)
    model.train()
    model[2].eval()  # modes of their own are given back as they were
    modes = [module.training for module in model.modules()]
    before = model_fingerprint(model)
    message = (
        r"the model cannot read the data's inputs \(each of shape \(30,\), torch.float32\): on "
        r"its first examples it failed with RuntimeError: mat1 and mat2 shapes cannot be multiplied"
    )
    with pytest.raises(ValueError, match=message):
        train(model, narrow, replace(CONFIG, save_initial=True), checkpoint_dir=tmp_path / "run")
    assert [module.training for module in model.modules()] == modes
    assert model_fingerprint(model) == before and not (tmp_path / "run").exists()


class _Noisy(torch.nn.Module):
    """Batch norm (whose running statistics a forward in train mode moves, and which refuses a
    single example there) and dropout (which draws from the global RNG in train mode)."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = torch.nn.Sequential(
            torch.nn.Linear(40, 16),
            torch.nn.BatchNorm1d(16),
            torch.nn.ReLU(),
            torch.nn.Dropout(0.5),
            torch.nn.Linear(16, 10),
        )

    def forward(self, inputs):
        return self.layers(inputs)


def test_reading_the_first_example_changes_no_trained_weight_nor_the_callers_rng(data):
    """The look at the first example (for its checks) runs in eval mode under a forked RNG:
    training gives bitwise the weights and statistics of the same steps replayed by hand."""
    config = TrainConfig(epochs=2, batch_size=50, optimizer=partial(torch.optim.SGD, lr=0.1))
    state = torch.random.get_rng_state()
    trained = train(build_model(_Noisy, 0), data.train, config, seed=4).model
    assert torch.equal(torch.random.get_rng_state(), state)
    model = build_model(_Noisy, 0)
    optimizer, generator = torch.optim.SGD(model.parameters(), lr=0.1), torch.Generator()
    generator.manual_seed(4)
    model.train()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(4)
        for _ in range(2):
            order = torch.randperm(len(data.train), generator=generator)
            for start in range(0, len(order), 50):
                batch = order[start : start + 50]
                logits = model(data.train.inputs[batch])
                loss = ClassificationTask().loss(logits, data.train.targets[batch]).mean()
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
    for name, value in model.state_dict().items():
        assert torch.equal(trained.state_dict()[name], value), name


def test_language_model_targets_may_be_ignored_but_not_outside_the_vocabulary():
    tokens = torch.randint(0, 11, (8, 6), generator=torch.Generator().manual_seed(0))
    targets = torch.roll(tokens, -1, dims=1)
    targets[:, :2] = IGNORE_INDEX  # a prompt's positions
    factory = partial(CausalTransformer, vocab_size=11, context=6, dim=8, layers=1, heads=2)
    config, task = TrainConfig(epochs=1, batch_size=4), LanguageModelingTask()
    train(build_model(factory, 0), Examples(tokens, targets), config, task=task)
    targets[3, 4], targets[6, 1] = 11, -1
    message = (
        r"target 11 at position 4 of example 3 lies outside the model's classes 0\.\.10 \(its "
        r"11 outputs, nor -100 \(an ignored position\)\)"
    )
    with pytest.raises(ValueError, match=message):
        train(build_model(factory, 0), Examples(tokens, targets), config, task=task)


@pytest.mark.parametrize("model_dtype", [torch.float32, torch.float64])
def test_inputs_of_another_float_dtype_are_refused_before_any_step(data, model_dtype):
    """A float64 model on float32 data (or the reverse) failed at the first step with torch's
    "mat1 and mat2 must have the same dtype"."""
    model = build_model(MLP, 0, dtype=model_dtype)
    before = model_fingerprint(model)
    other = torch.float32 if model_dtype == torch.float64 else torch.float64
    mismatched = data.train.subset(range(64)).to(dtype=other)
    with pytest.raises(
        ValueError, match=f"parameters are {model_dtype} but the inputs are {other}"
    ):
        train(model, mismatched, TrainConfig(epochs=1))
    assert model_fingerprint(model) == before


def test_raw_arrays_train_as_their_examples(data, tmp_path):
    """(X, y) and Examples of numpy arrays failed: "'tuple' object has no attribute 'inputs'",
    "'numpy.ndarray' object has no attribute 'to'"; train_ensemble: "... 'fingerprint'"."""
    inputs, targets = data.train.inputs[:96].numpy(), data.train.targets[:96].numpy()
    config = TrainConfig(epochs=1, batch_size=32)
    expected = train(build_model(MLP, 0), data.train.subset(range(96)), config).model
    for given in ((inputs, targets), Examples(inputs, targets)):
        trained = train(build_model(MLP, 0), given, config).model
        assert model_fingerprint(trained) == model_fingerprint(expected)
    members = train_ensemble(MLP, (inputs, targets), config, [0], tmp_path, progress=False)
    assert model_fingerprint(load_member(MLP, members[0][-1])) == model_fingerprint(expected)
    again = train_ensemble(MLP, data.train.subset(range(96)), config, [0], tmp_path, progress=False)
    assert again == members  # the same training set: the member is reused, not refused


def test_a_member_claimed_by_another_process_during_the_claim_is_refused(
    data, tmp_path, monkeypatch
):
    """The claim was check-then-write: a process recording its recipe between the check and
    the write had its claim silently taken over, and both trained into one directory."""
    config = TrainConfig(epochs=1, batch_size=100)
    train_ensemble(MLP, data.train, config, [0], tmp_path / "other", progress=False)
    theirs = (tmp_path / "other" / "seed-0.recipe.json").read_bytes()
    looked = ensemble.finished_checkpoints

    def claimed_meanwhile(directory, settings):
        (tmp_path / "seed-0.recipe.json").write_bytes(theirs)  # between the check and the write
        return looked(directory, settings)

    monkeypatch.setattr(ensemble, "finished_checkpoints", claimed_meanwhile)
    with pytest.raises(ValueError, match=r"claims \S+seed-0 for a member to train with other"):
        train_ensemble(MLP, data.train.subset(range(200)), config, [0], tmp_path, progress=False)
    assert (tmp_path / "seed-0.recipe.json").read_bytes() == theirs  # theirs, left in place


def test_a_checkpoint_directory_with_another_runs_checkpoints_is_refused(data, tmp_path):
    """A shorter run into a used directory left the longer run's last checkpoints in place, and
    list_checkpoints took the stale run's last one for the final model."""
    train(
        build_model(MLP, 0),
        data.train,
        TrainConfig(epochs=4, checkpoints=4),
        checkpoint_dir=tmp_path,
    )
    shorter = TrainConfig(epochs=2, checkpoints=1)
    with pytest.raises(
        ValueError,
        match=r"holds checkpoints \['epoch-0001', 'epoch-0003', 'epoch-0004'\] that this run will "
        r"not overwrite",
    ):
        train(build_model(MLP, 1), data.train, shorter, checkpoint_dir=tmp_path)
    again = train(
        build_model(MLP, 1),
        data.train,
        TrainConfig(epochs=4, checkpoints=4),
        checkpoint_dir=tmp_path,
    )
    assert list_checkpoints(tmp_path) == again.checkpoints  # the same ids: all overwritten


def test_a_model_with_batch_statistics_in_eval_mode_trains():
    """BatchNorm without running statistics normalises by the batch in eval mode too: the
    look at the model's output width on one example failed before any step."""
    generator = torch.Generator().manual_seed(0)
    data = Examples(
        torch.randn(32, 6, generator=generator), torch.randint(0, 3, (32,), generator=generator)
    )
    model = torch.nn.Sequential(
        torch.nn.Linear(6, 8),
        torch.nn.BatchNorm1d(8, track_running_stats=False),
        torch.nn.Linear(8, 3),
    )
    before = [p.detach().clone() for p in model.parameters()]
    train(model, data, TrainConfig(epochs=1, batch_size=8))
    assert all(not torch.equal(b, p) for b, p in zip(before, model.parameters(), strict=True))
