import copy

import pytest
import torch

from tda.task import ClassificationTask, LanguageModelingTask
from tests.unlearn.reference import MOMENTUM_AND_DECAY
from unlearn import (
    FineTune,
    ForgetSplit,
    GradientAscent,
    LoopConfig,
    MagnitudePruning,
    Phase,
    PruneThenUnlearn,
    RandomLabels,
    Unlearner,
    UnlearningRequest,
    WeightedLoss,
    apply_mask,
    magnitude_mask,
    mask_sparsity,
    prunable_parameters,
    unlearning_loop,
)
from unlearn.methods.retrain import ExactRetraining

PRUNABLE = 6 * 8 + 8 * 3  # the tiny MLP's two weight matrices; biases are never pruned


def _bits(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().clone().view(torch.int64)


def _magnitudes(model, mask):
    flat = torch.cat([model.get_parameter(n).detach().abs().flatten() for n in mask])
    return flat, torch.cat([m.flatten() for m in mask.values()])


@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.5, 0.9])
def test_one_shot_pruning_is_global_and_exactly_at_the_target(tiny_mlp, sparsity):
    mask = magnitude_mask(tiny_mlp, sparsity)
    assert sorted(mask) == prunable_parameters(tiny_mlp) == ["0.weight", "2.weight"]
    magnitude, kept = _magnitudes(tiny_mlp, mask)
    assert int((~kept).sum()) == round(sparsity * PRUNABLE)
    assert mask_sparsity(mask) == round(sparsity * PRUNABLE) / PRUNABLE
    if 0 < sparsity:
        assert magnitude[kept].min() >= magnitude[~kept].max()


def test_apply_mask_writes_positive_zeros_and_nothing_else(tiny_mlp):
    before = {n: p.detach().clone() for n, p in tiny_mlp.named_parameters()}
    mask = magnitude_mask(tiny_mlp, 0.5)
    apply_mask(tiny_mlp, mask)
    for name, parameter in tiny_mlp.named_parameters():
        kept = mask.get(name, torch.ones_like(parameter, dtype=torch.bool))
        assert (_bits(parameter)[~kept] == 0).all()  # +0.0 has the all-zero bit pattern
        assert torch.equal(parameter.detach()[kept], before[name][kept])


def test_iterative_pruning_without_retraining_equals_one_shot(tiny_mlp):
    one_shot = MagnitudePruning(0.75).prune(copy.deepcopy(tiny_mlp))
    iterative = MagnitudePruning(0.75, rounds=4).prune(copy.deepcopy(tiny_mlp))
    assert all(torch.equal(one_shot[n], iterative[n]) for n in one_shot)
    schedule = MagnitudePruning(0.75, rounds=2).schedule()
    assert schedule == pytest.approx([0.5, 0.75], abs=1e-15) and schedule[-1] == 0.75


def test_iterative_pruning_with_retraining_reaches_the_target_and_keeps_zeros(tiny_mlp, tiny_data):
    retrain = LoopConfig(epochs=2, batch_size=5, optimizer=MOMENTUM_AND_DECAY.optimizer)
    pruning = MagnitudePruning(0.8, rounds=3, retrain=retrain)
    before = {n: p.detach().clone() for n, p in tiny_mlp.named_parameters()}
    mask = pruning.prune(tiny_mlp, tiny_data, seed=0)
    assert int(sum((~m).sum() for m in mask.values())) == round(0.8 * PRUNABLE)
    for name, kept in mask.items():
        parameter = tiny_mlp.get_parameter(name).detach()
        assert (_bits(parameter)[~kept] == 0).all()
        assert (parameter[kept] != before[name][kept]).all()  # retraining moved the survivors
    with pytest.raises(ValueError, match="needs non-empty data"):
        pruning.prune(tiny_mlp)


def test_each_pruning_round_retrains_with_its_own_seed(tiny_mlp, tiny_data):
    """Round k prunes to its scheduled sparsity and retrains inside the mask with seed + k:
    two rounds from seed 3 are two hand-run rounds with seeds 3 and 4."""
    retrain = LoopConfig(epochs=2, batch_size=5, optimizer=MOMENTUM_AND_DECAY.optimizer)
    pruning = MagnitudePruning(0.75, rounds=2, retrain=retrain)
    by_hand = copy.deepcopy(tiny_mlp)
    mask = pruning.prune(tiny_mlp, tiny_data, seed=3)
    phase = Phase("retrain", {"retain": tiny_data}, WeightedLoss({"retain": 1.0}))
    kept = None
    for target, seed in ((0.5, 3), (0.75, 4)):
        kept = magnitude_mask(by_hand, target, keep=kept)
        apply_mask(by_hand, kept)
        unlearning_loop(by_hand, [phase], retrain, mask=kept, seed=seed)
    assert all(torch.equal(mask[name], kept[name]) for name in kept)
    for ours, theirs in zip(tiny_mlp.parameters(), by_hand.parameters(), strict=True):
        assert torch.equal(_bits(ours), _bits(theirs))


def test_round_seeds_wrap_around_past_the_largest_seed(tiny_mlp, tiny_data):
    """A valid seed 2**64 - 1 retrains round 0 with it and round 1 with 0; it failed in round 1
    (``Overflow when unpacking long long``) after round 0 had pruned and retrained."""
    request = UnlearningRequest([0, 1, 2], train_size=20, seed=2**64 - 1)  # a valid request
    split = ForgetSplit.of(tiny_data, request)
    retrain = LoopConfig(epochs=2, batch_size=5, optimizer=MOMENTUM_AND_DECAY.optimizer)
    pruning = MagnitudePruning(0.75, rounds=2, retrain=retrain)
    by_hand = copy.deepcopy(tiny_mlp)
    mask = pruning.prune(copy.deepcopy(tiny_mlp), split.retain, seed=request.seed)
    phase = Phase("retrain", {"retain": split.retain}, WeightedLoss({"retain": 1.0}))
    kept = None
    for target, seed in ((0.5, 2**64 - 1), (0.75, 0)):
        kept = magnitude_mask(by_hand, target, keep=kept)
        apply_mask(by_hand, kept)
        unlearning_loop(by_hand, [phase], retrain, mask=kept, seed=seed)
    assert all(torch.equal(mask[name], kept[name]) for name in kept)
    method = PruneThenUnlearn(pruning, FineTune(LoopConfig(epochs=1)))
    result = Unlearner(method, compute_metrics=False).unlearn(tiny_mlp, tiny_data, request)
    expected = FineTune(LoopConfig(epochs=1)).unlearn(by_hand, split, seed=request.seed, mask=kept)
    for ours, theirs in zip(result.model.parameters(), expected.parameters(), strict=True):
        assert torch.equal(_bits(ours), _bits(theirs))


@pytest.mark.parametrize("seed", [2**64, -1])
def test_a_seed_outside_the_seed_range_is_refused_before_anything_is_pruned(
    tiny_mlp, tiny_data, seed
):
    before = [_bits(p) for p in tiny_mlp.parameters()]
    pruning = MagnitudePruning(0.5, rounds=2, retrain=LoopConfig(epochs=1))
    with pytest.raises(ValueError, match=r"seed must be in \[0, 2\*\*64\)"):
        pruning.prune(tiny_mlp, tiny_data, seed=seed)
    assert all(torch.equal(a, _bits(b)) for a, b in zip(before, tiny_mlp.parameters(), strict=True))


def test_prune_then_unlearn_refuses_a_retraining_task_other_than_the_methods():
    """Retraining on R with cross-entropy and unlearning a language model's token loss (the
    pruning's task left at its default) is refused up front, not as a diverged loss."""
    retrain = LoopConfig(epochs=1)
    language = FineTune(task=LanguageModelingTask())
    with pytest.raises(ValueError, match="give both the same task"):
        PruneThenUnlearn(MagnitudePruning(retrain=retrain), language)
    same = MagnitudePruning(retrain=retrain, task=LanguageModelingTask())
    assert PruneThenUnlearn(same, language).pruning.task == language.task
    PruneThenUnlearn(MagnitudePruning(), language)  # no retraining: the pruning's task is unused
    PruneThenUnlearn(MagnitudePruning(retrain=retrain), RandomLabels())  # a method with no task
    assert MagnitudePruning().task == ClassificationTask() == FineTune().task


def test_pruned_weights_stay_bitwise_zero_through_unlearning(tiny_mlp, tiny_data):
    split = ForgetSplit.of(tiny_data, UnlearningRequest([0, 3, 5, 8], train_size=20, seed=2))
    retrain = LoopConfig(epochs=1, batch_size=5, optimizer=MOMENTUM_AND_DECAY.optimizer)
    pruning = MagnitudePruning(0.6, retrain=retrain)
    method = PruneThenUnlearn(pruning, RandomLabels(MOMENTUM_AND_DECAY))
    expected = magnitude_mask(tiny_mlp, 0.6)
    unlearned = method.unlearn(copy.deepcopy(tiny_mlp), split, seed=2)
    for name, kept in expected.items():
        parameter = unlearned.get_parameter(name)
        assert (_bits(parameter)[~kept] == 0).all()
        assert (parameter.detach()[kept] != 0).all()
    # By hand: prune, retrain on R inside the mask, unlearn inside the mask.
    by_hand = copy.deepcopy(tiny_mlp)
    kept = pruning.prune(by_hand, split.retain, seed=2)
    by_hand = RandomLabels(MOMENTUM_AND_DECAY).unlearn(by_hand, split, seed=2, mask=kept)
    assert all(
        torch.equal(a, b) for a, b in zip(by_hand.parameters(), unlearned.parameters(), strict=True)
    )


def test_prune_then_unlearn_respects_the_callers_mask(tiny_mlp, tiny_data):
    split = ForgetSplit.of(tiny_data, UnlearningRequest([1, 2], train_size=20))
    frozen = {"2.weight": torch.zeros(3, 8, dtype=torch.bool)}  # the caller freezes a layer
    before = _bits(tiny_mlp.get_parameter("2.weight"))
    method = PruneThenUnlearn(MagnitudePruning(0.5), FineTune(MOMENTUM_AND_DECAY))
    unlearned = method.unlearn(tiny_mlp, split, seed=0, mask=frozen)
    assert torch.equal(_bits(unlearned.get_parameter("2.weight")), before)  # not even pruned
    first = unlearned.get_parameter("0.weight").detach()
    assert int((first == 0).sum()) == round(0.5 * PRUNABLE)  # all pruning fell on layer 0


def test_prune_then_unlearn_follows_its_inner_method(tiny_mlp, tiny_data):
    empty = UnlearningRequest([], train_size=20)
    ga = PruneThenUnlearn(MagnitudePruning(0.5), GradientAscent())
    assert ga.requires_forget_set
    assert not PruneThenUnlearn(MagnitudePruning(), FineTune()).requires_forget_set
    with pytest.raises(ValueError, match="needs forget examples"):
        Unlearner(ga, compute_metrics=False).unlearn(tiny_mlp, tiny_data, empty)
    split = ForgetSplit.of(tiny_data, UnlearningRequest([1], train_size=20))
    retrain = PruneThenUnlearn(MagnitudePruning(), ExactRetraining(lambda: tiny_mlp))
    with pytest.raises(ValueError, match="takes no mask"):
        retrain.unlearn(copy.deepcopy(tiny_mlp), split, seed=0)


def test_bad_pruning_settings_are_refused(tiny_mlp):
    for sparsity in (-0.1, 1.0):
        with pytest.raises(ValueError, match=r"sparsity must be in \[0, 1\)"):
            MagnitudePruning(sparsity)
    with pytest.raises(ValueError, match="rounds must be at least 1"):
        MagnitudePruning(0.5, rounds=0)
    with pytest.raises(ValueError, match="not parameters of the model"):
        magnitude_mask(tiny_mlp, 0.5, names=["0.wieght"])
    half = magnitude_mask(tiny_mlp, 0.5)
    with pytest.raises(ValueError, match="already pruned"):
        magnitude_mask(tiny_mlp, 0.25, keep=half)
    everything = {n: torch.zeros_like(m) for n, m in half.items()}
    with pytest.raises(ValueError, match="protected"):
        magnitude_mask(tiny_mlp, 0.5, protected={n: ~m for n, m in everything.items()})


@pytest.mark.parametrize("rounds", [2.5, True])
def test_rounds_must_be_an_integer(rounds):
    """2.5 failed inside schedule() with a bare TypeError; True ran one round."""
    with pytest.raises(ValueError, match="rounds must be at least 1 and an integer"):
        MagnitudePruning(0.5, rounds=rounds)
