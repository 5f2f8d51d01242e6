import copy
from functools import partial

import pytest
import torch
from torch.nn import functional

import unlearn.loop
from tda.data import Examples
from tda.fingerprint import model_fingerprint
from unlearn import LoopConfig, Phase, WeightedLoss, unlearning_loop

FIT = WeightedLoss({"retain": 1.0})


def _bits(tensor: torch.Tensor) -> torch.Tensor:
    """The raw bit pattern of a float64 tensor (so -0.0 != 0.0 and NaN == NaN)."""
    return tensor.detach().clone().view(torch.int64)


def _checkerboard_mask(model) -> dict[str, torch.Tensor]:
    first = model.get_parameter("0.weight")
    rows, cols = torch.meshgrid(
        torch.arange(first.shape[0]), torch.arange(first.shape[1]), indexing="ij"
    )
    return {
        "0.weight": (rows + cols) % 2 == 0,  # half of the first layer may move
        "2.bias": torch.zeros_like(model.get_parameter("2.bias"), dtype=torch.bool),
    }  # "0.bias" and "2.weight" are not named: fully trainable


@pytest.mark.parametrize(
    "optimizer",
    [
        partial(torch.optim.SGD, lr=0.1, momentum=0.9, weight_decay=0.1),
        partial(torch.optim.AdamW, lr=0.05, weight_decay=0.5),
    ],
    ids=["sgd-momentum-wd", "adamw"],
)
def test_masked_out_weights_stay_bitwise_unchanged(tiny_mlp, tiny_data, optimizer):
    mask = _checkerboard_mask(tiny_mlp)
    before = {name: _bits(p) for name, p in tiny_mlp.named_parameters()}
    config = LoopConfig(epochs=4, batch_size=6, optimizer=optimizer)
    phase = Phase("retain", {"retain": tiny_data}, FIT)
    unlearning_loop(tiny_mlp, [phase], config, mask=mask, seed=0)
    after = {name: _bits(p) for name, p in tiny_mlp.named_parameters()}
    for name, trainable in mask.items():
        assert torch.equal(after[name][~trainable], before[name][~trainable]), name
    assert (after["0.weight"][mask["0.weight"]] != before["0.weight"][mask["0.weight"]]).all()
    assert (after["2.weight"] != before["2.weight"]).all()


def test_a_scheduler_steps_once_per_epoch(tiny_mlp, tiny_data):
    """StepLR halving every epoch: two steps an epoch see rates 0.1, 0.1, 0.05, 0.05, 0.025,
    0.025, and the weights are those of hand-made gradient steps with those rates."""
    optimizers, rates = [], []

    def sgd(parameters):
        optimizers.append(torch.optim.SGD(parameters, lr=0.1))
        return optimizers[-1]

    def loss(model, batches, progress):
        rates.append(optimizers[0].param_groups[0]["lr"])
        return FIT(model, batches, progress)

    halving = partial(torch.optim.lr_scheduler.StepLR, step_size=1, gamma=0.5)
    config = LoopConfig(epochs=3, batch_size=10, optimizer=sgd, scheduler=halving)
    by_hand = copy.deepcopy(tiny_mlp)
    unlearning_loop(tiny_mlp, [Phase("retain", {"retain": tiny_data}, loss)], config, seed=1)
    assert rates == [0.1, 0.1, 0.05, 0.05, 0.025, 0.025]
    generator = torch.Generator().manual_seed(1)  # the loop's shuffling, one pass per epoch
    for rate in (0.1, 0.05, 0.025):
        for batch in torch.randperm(len(tiny_data), generator=generator).split(10):
            mean = functional.cross_entropy(
                by_hand(tiny_data.inputs[batch]), tiny_data.targets[batch]
            )
            grads = torch.autograd.grad(mean, list(by_hand.parameters()))
            with torch.no_grad():
                for parameter, grad in zip(by_hand.parameters(), grads, strict=True):
                    parameter -= rate * grad
    for ours, theirs in zip(tiny_mlp.parameters(), by_hand.parameters(), strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-14)


def test_every_submodule_gets_its_own_mode_back(tiny_mlp, tiny_data):
    tiny_mlp.train()
    tiny_mlp[1].eval()  # e.g. a normalisation layer its owner froze
    phase = Phase("retain", {"retain": tiny_data}, FIT)
    unlearning_loop(tiny_mlp, [phase], LoopConfig(epochs=1, batch_size=6), seed=0)
    assert [m.training for m in tiny_mlp.modules()] == [True, True, False, True]


def test_without_the_mask_the_same_weights_would_move(tiny_mlp, tiny_data):
    before = tiny_mlp.get_parameter("2.bias").detach().clone()
    config = LoopConfig(epochs=1, optimizer=partial(torch.optim.SGD, lr=0.1, weight_decay=0.1))
    unlearning_loop(tiny_mlp, [Phase("retain", {"retain": tiny_data}, FIT)], config)
    assert (tiny_mlp.get_parameter("2.bias") != before).all()


def test_same_seed_same_weights_and_the_global_rng_is_left_alone(tiny_data):
    from tda.models import MLP, build_model

    def run(seed):
        model = build_model(lambda: torch.nn.Sequential(MLP(6, (8,), 3), torch.nn.Dropout(0.3)), 0)
        data = tiny_data.to(dtype=torch.float32)
        phases = [Phase("retain", {"retain": data}, FIT)]
        return model_fingerprint(unlearning_loop(model, phases, LoopConfig(epochs=2), seed=seed))

    state = torch.random.get_rng_state()
    assert run(3) == run(3) != run(4)
    assert torch.equal(torch.random.get_rng_state(), state)


def test_a_nan_loss_stops_the_loop_with_a_clear_error(tiny_mlp, tiny_data):
    def loss(model, batches, progress):
        value = FIT(model, batches, progress)
        return value * float("nan") if progress.step == 2 else value

    with pytest.raises(
        FloatingPointError, match="loss became nan in phase 'boom' at epoch 1, step 2"
    ):
        unlearning_loop(tiny_mlp, [Phase("boom", {"retain": tiny_data}, loss)], LoopConfig(2, 5))


def _batch_norm_mlp() -> torch.nn.Module:
    layers = [
        torch.nn.Linear(6, 8),
        torch.nn.BatchNorm1d(8),
        torch.nn.ReLU(),
        torch.nn.Linear(8, 3),
    ]
    return torch.nn.Sequential(*layers).double()


@pytest.mark.parametrize(
    ("size", "batch_size", "advice"),
    [
        (9, 8, "choose a batch_size that leaves no batch of one example, e.g. 9"),
        (5, 1, "choose a batch_size that leaves no batch of one example, e.g. 3"),
        (1, 4, "give the source at least 2 examples"),
    ],
)
def test_a_batch_of_one_for_batch_norm_is_refused_naming_phase_sizes_and_fix(
    tiny_data, size, batch_size, advice
):
    """|F| % batch_size == 1 left torch's bare 'Expected more than 1 value per channel'."""
    phase = Phase(
        "forget and retain",
        {"retain": tiny_data.subset(range(10, 20)), "forget": tiny_data.subset(range(size))},
        WeightedLoss({"forget": -1.0, "retain": 1.0}),
        lead="forget",
    )
    expected = (
        rf"phase 'forget and retain' drew a batch of one example from source 'forget' \({size} "
        rf"examples, batch_size {batch_size}\), .*BatchNorm in training mode.*; {advice}$"
    )
    with pytest.raises(ValueError, match=expected) as caught:
        unlearning_loop(_batch_norm_mlp(), [phase], LoopConfig(epochs=1, batch_size=batch_size))
    assert "more than 1 value per channel" in str(caught.value.__cause__)
    if size > 1:  # the advised batch size runs
        other = int(advice.rsplit(" ", 1)[-1])
        unlearning_loop(_batch_norm_mlp(), [phase], LoopConfig(epochs=1, batch_size=other))


def test_finite_weights_with_infinite_outputs_are_refused():
    """Huge ascent steps keep the weights finite (~1e30) but overflow the outputs, here only on
    the last example, in the last of the check's batches."""
    model = torch.nn.Linear(4, 2)
    inputs = torch.zeros(8, 4)
    inputs[-1] = 1e10
    data = Examples(inputs, torch.zeros(8, dtype=torch.long))

    def ascent(model, batches, progress):
        return -model.weight.sum()

    config = LoopConfig(epochs=1, batch_size=3, optimizer=partial(torch.optim.SGD, lr=1e30))
    with pytest.raises(FloatingPointError, match="outputs on phase 'up', source 'forget'"):
        unlearning_loop(model, [Phase("up", {"forget": data}, ascent)], config)
    assert bool(torch.isfinite(model.weight).all())


def test_the_final_output_check_runs_in_bounded_batches(tiny_mlp, tiny_data, monkeypatch):
    monkeypatch.setattr(unlearn.loop, "FINITE_CHECK_ROWS", 1)  # then the training batch bounds it
    sizes = []
    tiny_mlp.register_forward_hook(lambda module, inputs, output: sizes.append(len(inputs[0])))
    phase = Phase("retain", {"retain": tiny_data}, WeightedLoss({"retain": 1.0}))
    unlearning_loop(tiny_mlp, [phase], LoopConfig(epochs=1, batch_size=4))
    assert len(tiny_data) > 4 and max(sizes) == 4


def test_secondary_sources_give_one_batch_per_lead_batch(tiny_mlp, tiny_data):
    forget, retain = tiny_data.subset(range(5)), tiny_data.subset(range(5, 20))
    seen = []

    def loss(model, batches, progress):
        seen.append((progress.epoch, len(batches["forget"]), len(batches["retain"])))
        return WeightedLoss({"forget": -1.0, "retain": 1.0})(model, batches, progress)

    phase = Phase("both", {"retain": retain, "forget": forget}, loss, lead="forget")
    config = LoopConfig(epochs=2, batch_size=2, optimizer=partial(torch.optim.SGD, lr=0.0))
    unlearning_loop(tiny_mlp, [phase], config)
    assert seen == [(0, 2, 2), (0, 2, 2), (0, 1, 1), (1, 2, 2), (1, 2, 2), (1, 1, 1)]


def test_bad_masks_phases_and_configs_are_refused(tiny_mlp, tiny_data):
    phase = Phase("retain", {"retain": tiny_data}, FIT)
    weight = tiny_mlp.get_parameter("0.weight")
    bad_masks = {
        "not a model parameter": {"0.wieght": torch.ones_like(weight, dtype=torch.bool)},
        "must be a bool tensor": {"0.weight": torch.ones_like(weight)},
        "has shape": {"0.weight": torch.ones(3, dtype=torch.bool)},
        "freezes every weight": {
            name: torch.zeros_like(p, dtype=torch.bool) for name, p in tiny_mlp.named_parameters()
        },
    }
    for message, mask in bad_masks.items():
        with pytest.raises(ValueError, match=message):
            unlearning_loop(tiny_mlp, [phase], mask=mask)
    frozen = copy.deepcopy(tiny_mlp).requires_grad_(False)  # no mask: the model's own doing
    with pytest.raises(ValueError, match="every parameter of the model has requires_grad=False"):
        unlearning_loop(frozen, [phase])
    with pytest.raises(ValueError, match="at least one phase"):
        unlearning_loop(tiny_mlp, [])
    with pytest.raises(ValueError, match="source 'forget' has no examples"):
        Phase("forget", {"forget": tiny_data.subset([])}, FIT)
    with pytest.raises(ValueError, match="lead 'x' is not one of its sources"):
        Phase("p", {"retain": tiny_data}, FIT, lead="x")
    for bad in ({"epochs": 0}, {"epochs": 2.5}, {"epochs": True}, {"batch_size": 0}):
        with pytest.raises(ValueError, match="must be an integer >= 1"):
            LoopConfig(**bad)  # 2.5 failed mid-run; True ran one epoch
    with pytest.raises(ValueError, match="does not feed"):
        unlearning_loop(tiny_mlp, [Phase("p", {"retain": tiny_data}, WeightedLoss({"forget": 1}))])


def test_progress_reports_the_epoch_fraction(tiny_mlp, tiny_data):
    fractions = []

    def loss(model, batches, progress):
        fractions.append(progress.fraction)
        return FIT(model, batches, progress)

    unlearning_loop(tiny_mlp, [Phase("p", {"retain": tiny_data}, loss)], LoopConfig(4, 20))
    assert fractions == [0.0, 0.25, 0.5, 0.75]
