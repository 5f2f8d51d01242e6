"""Output predictors: TRAK shapes and signs, datamodels against a linear truth, scope checks."""

from functools import partial

import numpy as np
import pytest
import torch

from tda.data import Examples
from tda.datamodels import GroundTruthStore, sample_subsets
from tda.describe import describe
from tda.features import GradientFeaturizer
from tda.fingerprint import array_fingerprint
from tda.methods.trak import TRAK
from tda.models import MLP, LogisticRegression, build_model
from tda.projection import DenseProjector
from tda.store import FeatureStore
from tda.training import TrainConfig, train
from tests.unlearn.reference import FACTORY
from unlearn import (
    DatamodelMatching,
    ForgetSplit,
    SearchJournal,
    UnlearningRequest,
    load_or_train_oracles,
)
from unlearn.predictors import (
    DatamodelPredictor,
    OraclePredictor,
    PredictorScope,
    ScoresPredictor,
    TrainingLogits,
    TRAKPredictor,
    architecture,
    datamodel_predictor,
    select_ridge,
    subset_logits,
    trak_predictor,
)


def _split(train: Examples, forget) -> ForgetSplit:
    return ForgetSplit.of(train, UnlearningRequest(forget, train_size=len(train)))


@pytest.fixture(scope="module")
def trak_logits(tmp_path_factory, mnist):
    """TRAK predictor over 2 members trained on the 300-example MNIST-1D set, per-class logits."""
    root = tmp_path_factory.mktemp("trak")
    config = TrainConfig(epochs=10, batch_size=32)
    featurizer = GradientFeaturizer(DenseProjector(64, seed=0))
    build = partial(
        trak_predictor, FACTORY, mnist, config, 2, root / "models", featurizer, root / "store"
    )
    return build, build(output="logits"), build(output="margin")


def test_trak_predictions_have_one_value_per_training_point_and_class(trak_logits, mnist):
    _, logits, margins = trak_logits
    forget = np.arange(0, 300, 10)
    assert logits.forget_effect(forget).shape == (300, 10)
    assert margins.forget_effect(forget).shape == (300,)


def test_removing_a_point_is_predicted_to_lower_its_own_true_class_logit_and_margin(
    trak_logits, mnist
):
    _, logits, margins = trak_logits
    forget = np.arange(0, 300, 10)
    own = logits.forget_effect(forget)[forget, mnist.train.targets[forget]]
    others = logits.forget_effect(forget)[forget].sum(dim=1) - own
    assert float((own > 0).float().mean()) > 0.9
    assert float(own.mean()) > float(others.mean()) / 9
    assert float((margins.forget_effect(forget)[forget] > 0).float().mean()) > 0.9


def test_a_retain_kernel_predictor_scores_the_forget_set_together(trak_logits):
    build, _, margins = trak_logits
    together = build(output="margin", retain_kernel=True)
    forget = np.arange(0, 300, 10)
    expected = margins.trak.score_group("train", forget, retain_kernel=True)
    torch.testing.assert_close(together.forget_effect(forget), expected)
    own, alone = together.forget_effect(forget)[forget], margins.forget_effect(forget)[forget]
    assert float(own.mean()) > float(alone.mean()) > 0  # removing the curvature raises effects
    assert together.audit_description()["retain_kernel"] is True


def test_the_trak_predictor_weighs_its_kernel_by_the_curvature_by_default(trak_logits):
    """Effect sizes matter here, so TRAK's Gauss-Newton kernel is the default: the effect is
    that of a TRAK fit with gauss_newton=True on the same store, not the plain kernel's."""
    _, _, margins = trak_logits
    forget = np.arange(0, 300, 10)
    store, checkpoints = margins.trak.store, margins.trak.checkpoints
    fits = {
        weighted: TRAK(damping=0.1, gauss_newton=weighted).fit(store, checkpoints=checkpoints)
        for weighted in (True, False)
    }
    expected = fits[True].score_group("train", forget)
    torch.testing.assert_close(margins.forget_effect(forget), expected, rtol=0, atol=0)
    assert not torch.allclose(expected, fits[False].score_group("train", forget))
    assert margins.audit_description()["gauss_newton"] is True


def test_trak_predictor_resumes_from_its_store_without_retraining(trak_logits):
    build, logits, _ = trak_logits
    again = build(output="logits")
    forget = np.arange(5)
    assert torch.equal(again.forget_effect(forget), logits.forget_effect(forget))
    # described by its store's content, not only its path: a store rebuilt there differs
    assert again.audit_description() == logits.audit_description()
    assert logits.settings()["store_fingerprint"] == logits.trak.store.fingerprint()


def test_the_prediction_is_the_original_output_minus_the_forget_effect(trak_logits, mnist, trained):
    _, logits, _ = trak_logits
    split = _split(mnist.train, np.arange(0, 300, 10))
    positions = np.array([0, 5, 10])
    targets = logits.targets(trained, mnist.train.subset(positions), positions, split, seed=0)
    with torch.no_grad():
        expected = (
            trained(mnist.train.inputs[positions])
            - logits.forget_effect(split.forget_indices)[positions].float()
        )
    torch.testing.assert_close(targets, expected)


def test_datamodels_recover_a_linear_truth():
    """Outputs exactly linear in the mask: the summed weights of F are recovered for every query."""
    generator = np.random.default_rng(0)
    masks = generator.random((200, 12)) < 0.7
    weights = generator.normal(size=(12, 12, 3))  # [query, train example, class]
    outputs = np.einsum("si,qic->sqc", masks, weights) + generator.normal(size=(12, 3))
    scope = PredictorScope(12)
    predictor = DatamodelPredictor(scope, "logits", masks=masks, outputs=outputs, ridge=1e-9)
    forget = np.array([1, 4, 5])
    expected = torch.from_numpy(weights[:, forget].sum(axis=1))
    torch.testing.assert_close(predictor.forget_effect(forget), expected, rtol=1e-5, atol=1e-5)
    margin = DatamodelPredictor(scope, "margin", masks=masks, outputs=outputs[..., 0], ridge=1e-9)
    torch.testing.assert_close(
        margin.margin_scores(), torch.from_numpy(weights[..., 0]), rtol=1e-5, atol=1e-5
    )


def test_a_ridge_set_in_place_takes_effect_as_the_audit_says():
    """The ridge's inverse was computed once at construction: a ridge set afterwards was
    recorded in the audit but the effect kept the old one."""
    generator = np.random.default_rng(1)
    masks = generator.random((40, 6)) < 0.5
    outputs = masks @ generator.normal(size=(6, 6)) + 0.1 * generator.normal(size=(40, 6))
    scope = PredictorScope(6)
    predictor = DatamodelPredictor(scope, "margin", masks=masks, outputs=outputs, ridge=1.0)
    forget = np.array([0, 3])
    predictor.forget_effect(forget)
    predictor.ridge = 100.0
    fresh = DatamodelPredictor(scope, "margin", masks=masks, outputs=outputs, ridge=100.0)
    torch.testing.assert_close(predictor.forget_effect(forget), fresh.forget_effect(forget))
    assert predictor.audit_description()["ridge"] == 100.0
    predictor.ridge = 0.0
    with pytest.raises(ValueError, match="ridge must be positive"):
        predictor.forget_effect(forget)


def test_datamodel_predictors_fit_on_other_subsets_or_outputs_are_described_apart(tmp_path):
    """settings() held the subset count and the ridge alone: two predictors whose effects
    differ gave the same audit method_config, and a resumed search's journal served one
    predictor's outcomes to the other."""
    generator = np.random.default_rng(0)
    masks = generator.random((12, 10)) < 0.5
    outputs, other_outputs = generator.normal(size=(2, 12, 10))
    other_masks = generator.random((12, 10)) < 0.5

    def build(masks, outputs):
        return DatamodelPredictor(PredictorScope(10), "margin", masks=masks, outputs=outputs)

    first = build(masks, outputs)
    same = build(masks.copy(), outputs.copy())
    others = [build(masks, other_outputs), build(other_masks, outputs)]
    journal = SearchJournal(tmp_path / "journal", context="run")

    def key(predictor):
        return journal.key(method=DatamodelMatching(predictor))

    assert first.settings()["fit_fingerprint"] == array_fingerprint(masks, outputs)
    assert first.audit_description() == same.audit_description()
    assert describe(DatamodelMatching(first)) == describe(DatamodelMatching(same))
    assert key(first) == key(same)
    for other in others:
        assert not torch.allclose(first.forget_effect([1, 2]), other.forget_effect([1, 2]))
        assert first.settings() != other.settings()
        assert first.audit_description() != other.audit_description()
        assert describe(DatamodelMatching(first)) != describe(DatamodelMatching(other))
        assert key(first) != key(other)
    # the fit read the arrays at construction: later edits change neither effect nor record
    effect, described = first.forget_effect([1, 2]).clone(), first.audit_description()
    first.outputs[:] = 0.0
    assert torch.equal(first.forget_effect([1, 2]), effect)
    assert first.audit_description() == described


def test_training_logits_of_float64_data_come_from_a_float64_model():
    """The subset model was built float32 whatever the data: float64 inputs failed."""
    generator = torch.Generator().manual_seed(0)
    data = Examples(
        torch.randn(12, 3, generator=generator, dtype=torch.float64), torch.arange(12) % 2
    )
    config = TrainConfig(epochs=2, batch_size=4)
    mask = np.arange(12) < 8
    logits = TrainingLogits(partial(LogisticRegression, 3, 2), data, config)(mask, seed=1)
    model = build_model(partial(LogisticRegression, 3, 2), 1, dtype=torch.float64)
    model = train(model, data.subset(np.flatnonzero(mask)), config, seed=1).model
    np.testing.assert_array_equal(logits, model(data.inputs).detach().reshape(-1).numpy())


def test_a_datamodel_store_is_reused_only_for_the_models_and_training_it_was_made_with(tmp_path):
    """The store of subset logits was keyed by the subsets alone: another epoch count or another
    architecture silently read the first recipe's logits."""
    generator = torch.Generator().manual_seed(0)
    data = Examples(torch.randn(12, 3, generator=generator), torch.arange(12) % 2)
    factory, config = partial(LogisticRegression, 3, 2), TrainConfig(epochs=1, batch_size=4)
    build = partial(datamodel_predictor, data=data, root=tmp_path, count=6, alpha=0.5)
    first = build(factory, config=config, ridge_grid=(1.0,))
    again = build(factory, config=config, ridge_grid=(1.0,))  # resumes: nothing retrained
    assert torch.equal(first.forget_effect([0, 5]), again.forget_effect([0, 5]))
    with pytest.raises(ValueError, match="different settings.*config_fingerprint"):
        build(factory, config=TrainConfig(epochs=2, batch_size=4), ridge_grid=(1.0,))
    with pytest.raises(ValueError, match="different settings.*config_fingerprint"):
        build(partial(MLP, 3, (4,), 2), config=config, ridge_grid=(1.0,))


def test_datamodel_subsets_are_drawn_from_the_subset_seed_zero_by_default(tmp_path):
    """The subsets were always drawn with seed 0: a caller could not draw another set."""
    generator = torch.Generator().manual_seed(0)
    data = Examples(torch.randn(12, 3, generator=generator), torch.arange(12) % 2)
    factory, config = partial(LogisticRegression, 3, 2), TrainConfig(epochs=1, batch_size=4)
    build = partial(datamodel_predictor, factory, data, config, count=6, alpha=0.5)
    default = build(tmp_path / "default", ridge_grid=(1.0,))
    np.testing.assert_array_equal(default.masks, sample_subsets(12, 0.5, 6, seed=0))
    explicit = build(tmp_path / "default", subset_seed=0, ridge_grid=(1.0,))  # the same store
    assert explicit.settings() == default.settings()
    seeded = build(tmp_path / "seed-3", subset_seed=3, ridge_grid=(1.0,))
    np.testing.assert_array_equal(seeded.masks, sample_subsets(12, 0.5, 6, seed=3))
    assert not np.array_equal(seeded.masks, default.masks)
    assert seeded.settings()["fit_fingerprint"] != default.settings()["fit_fingerprint"]
    with pytest.raises(ValueError, match="different settings"):
        build(tmp_path / "default", subset_seed=3, ridge_grid=(1.0,))


def test_subset_logits_of_another_training_set_are_refused_by_name(tmp_path):
    """experiments/dmm_table.py read a tiny workspace's store against the default experiment's
    training set and failed in a reshape ("cannot reshape array of size 14400 ...")."""
    generator = torch.Generator().manual_seed(0)
    data = Examples(torch.randn(12, 3, generator=generator), torch.arange(12) % 2)
    factory, config = partial(LogisticRegression, 3, 2), TrainConfig(epochs=1, batch_size=4)
    datamodel_predictor(factory, data, config, tmp_path, count=6, alpha=0.5, ridge_grid=(1.0,))
    store = GroundTruthStore.open(tmp_path)
    assert subset_logits(store, data, "logits").shape == (6, 12, 2)
    flipped = Examples(data.inputs, 1 - data.targets)  # same size, other training set
    for other in (data.subset(range(10)), flipped):
        with pytest.raises(ValueError, match=r"subsets of another training set \(12 examples\)"):
            subset_logits(store, other, "margin")


def test_ridge_selection_prefers_little_shrinkage_on_noiseless_data():
    generator = np.random.default_rng(1)
    masks = generator.random((100, 10)) < 0.5
    outputs = masks @ generator.normal(size=(10, 4))
    assert select_ridge(masks, outputs, [1e-6, 1.0, 100.0]) == 1e-6


def test_a_predictor_refuses_another_architecture_training_set_or_size(trak_logits, mnist):
    _, logits, _ = trak_logits
    split = _split(mnist.train, [0, 1])
    logits.check(FACTORY(), split)  # the architecture and data it was built for
    with pytest.raises(ValueError, match="architecture"):
        logits.check(MLP(40, (32,), 10), split)
    other = Examples(mnist.train.inputs + 1.0, mnist.train.targets)
    with pytest.raises(ValueError, match="built on training set"):
        logits.check(FACTORY(), _split(other, [0, 1]))
    smaller = mnist.train.subset(np.arange(200))
    with pytest.raises(ValueError, match="scores 300 training examples .* has 200"):
        logits.check(FACTORY(), _split(smaller, [0, 1]))


def test_forget_points_without_scores_are_refused():
    scores = torch.zeros(4, 4, dtype=torch.float64)
    scores[:, 2] = float("nan")
    predictor = ScoresPredictor(PredictorScope(4), "margin", scores=scores)
    assert torch.equal(predictor.forget_effect([0, 1]), torch.zeros(4, dtype=torch.float64))
    with pytest.raises(ValueError, match="no scores"):
        predictor.forget_effect([2])
    with pytest.raises(ValueError, match=r"shape \[4, 4\]"):
        ScoresPredictor(PredictorScope(4), "margin", scores=torch.zeros(3, 4))
    with pytest.raises(ValueError, match="forget point 5 has no scores"):
        PredictorScope(4).check(FACTORY(), _split_indices(6, [5]))


def test_scores_changed_after_use_are_never_served_the_old_effect():
    """The cached effect was keyed by the scores' shape alone."""
    predictor = ScoresPredictor(PredictorScope(3), "margin", scores=torch.ones(3, 3))
    assert torch.equal(predictor.forget_effect([0]), torch.ones(3))
    predictor.scores = torch.full((3, 3), 2.0)  # replaced
    assert torch.equal(predictor.forget_effect([0]), torch.full((3,), 2.0))
    predictor.scores.mul_(2.0)  # edited in place
    assert torch.equal(predictor.forget_effect([0]), torch.full((3,), 4.0))
    described = predictor.audit_description()["scores_fingerprint"]
    assert described == array_fingerprint(torch.full((3, 3), 4.0))


def test_a_scores_predictor_without_scores_is_refused_by_name():
    """It failed inside torch ("Could not infer dtype of NoneType")."""
    with pytest.raises(ValueError, match="ScoresPredictor needs a score matrix"):
        ScoresPredictor(PredictorScope(4), "margin")


def _split_indices(size: int, forget) -> ForgetSplit:
    data = Examples(torch.zeros(size, 40), torch.zeros(size, dtype=torch.long))
    split = ForgetSplit.of(data, UnlearningRequest(forget, train_size=size))
    return ForgetSplit(split.forget, split.retain, split.forget_indices, split.retain_indices)


def test_oracle_predictor_reads_the_oracle_of_the_request_seed(tmp_path, mnist, trained):
    config = TrainConfig(epochs=2, batch_size=32)
    predictor = OraclePredictor(FACTORY, mnist, config, first_seed=7, count=2, root=tmp_path)
    split = _split(mnist.train, np.arange(30))
    positions = np.arange(3)
    examples = mnist.train.subset(positions)
    first = predictor.targets(trained, examples, positions, split, seed=0)
    third = predictor.targets(trained, examples, positions, split, seed=2)
    second = predictor.targets(trained, examples, positions, split, seed=1)
    assert torch.equal(first, third) and not torch.equal(first, second)
    assert architecture(FACTORY()) == predictor.scope.architecture


def test_oracle_predictor_of_a_follow_up_request_is_retrained_without_earlier_removals(
    tmp_path, mnist, trained
):
    """The oracle of a follow-up request is trained on its R: without F and without what earlier
    requests removed (it was trained without F only, putting those examples back)."""
    config = TrainConfig(epochs=1, batch_size=32)
    predictor = OraclePredictor(FACTORY, mnist, config, first_seed=7, count=1, root=tmp_path)
    request = UnlearningRequest(
        range(20, 30), train_size=len(mnist.train), previously_forgotten=range(20)
    )
    split = ForgetSplit.of(mnist.train, request)
    positions = np.arange(30, 35)
    examples = mnist.train.subset(positions)
    targets = predictor.targets(trained, examples, positions, split, seed=0)
    retrained = load_or_train_oracles(
        FACTORY, mnist.train, np.arange(30), config, [7], tmp_path / "reference"
    ).models[0]
    torch.testing.assert_close(targets, retrained(examples.inputs).detach())


def test_oracle_predictor_leaves_its_cached_oracles_and_the_global_rng_as_they_were(
    tmp_path, mnist, trained
):
    """A float64 model to unlearn moved the cached oracle to float64 in place, and building the
    predictor drew an untrained model from the global random state."""
    config = TrainConfig(epochs=1, batch_size=32)
    torch.manual_seed(0)
    predictor = OraclePredictor(FACTORY, mnist, config, first_seed=7, count=1, root=tmp_path)
    drawn = torch.rand(3)
    torch.manual_seed(0)
    assert torch.equal(drawn, torch.rand(3))
    split = _split(mnist.train, np.arange(30))
    positions = np.arange(5)
    examples = mnist.train.subset(positions)
    single = predictor.targets(trained, examples, positions, split, seed=0)
    oracle = predictor._models(split.forget_indices)[0]
    state = {name: value.clone() for name, value in oracle.state_dict().items()}
    double = predictor.targets(
        trained.double(), examples.to(dtype=torch.float64), positions, split, seed=0
    )
    assert double.dtype == torch.float64
    assert all(p.dtype == torch.float32 for p in oracle.parameters())
    assert all(torch.equal(state[name], value) for name, value in oracle.state_dict().items())
    torch.testing.assert_close(double.float(), single, rtol=1e-5, atol=1e-5)


def test_the_scale_multiplies_the_predicted_effect(mnist, trained):
    n = len(mnist.train)
    scores = torch.rand(n, n, generator=torch.Generator().manual_seed(0))
    split = _split(mnist.train, [4, 9])
    positions = np.array([0, 4, 9])
    examples = mnist.train.subset(positions)
    outputs = {
        scale: ScoresPredictor(PredictorScope(n), "margin", scale, scores=scores).targets(
            trained, examples, positions, split, seed=0
        )
        for scale in (1.0, 3.0)
    }
    with torch.no_grad():
        logits = trained(examples.inputs)
    own = logits.gather(1, examples.targets[:, None])[:, 0]
    margin = own - logits.scatter(1, examples.targets[:, None], float("-inf")).logsumexp(1)
    torch.testing.assert_close(outputs[3.0] - margin, 3 * (outputs[1.0] - margin))
    with pytest.raises(ValueError, match="scale must be non-negative"):
        ScoresPredictor(PredictorScope(n), "margin", -1.0, scores=scores)


def test_the_forget_effect_refuses_indices_outside_the_training_set_or_repeated():
    """-1 was read as the last training point and a repeated index counted twice."""
    scores = torch.arange(16, dtype=torch.float64).reshape(4, 4)
    predictor = ScoresPredictor(PredictorScope(4), "margin", scores=scores)
    torch.testing.assert_close(predictor.forget_effect(np.array([3, 0])), scores[:, [0, 3]].sum(1))
    with pytest.raises(ValueError, match="forget index -1 is out of range .* 4 training examples"):
        predictor.forget_effect([-1])
    with pytest.raises(ValueError, match="forget point 4 has no scores"):
        predictor.forget_effect([1, 4])
    with pytest.raises(ValueError, match="forget index 1 is repeated"):
        predictor.forget_effect([1, 1])
    with pytest.raises(ValueError, match="integers"):
        predictor.forget_effect(np.array([True, False, False, True]))
    with pytest.raises(ValueError, match="integers"):
        predictor.forget_effect(np.array([1.0]))


def test_a_forget_point_without_scores_is_named():
    """A forget point whose score column is missing (NaN) was reported as training point 0,
    the first query its NaN reached, not as the forget point that has no scores."""
    scores = torch.zeros(6, 6, dtype=torch.float64)
    scores[:, 4] = float("nan")
    predictor = ScoresPredictor(PredictorScope(6), "margin", scores=scores)
    with pytest.raises(ValueError, match="forget point 4 has no scores"):
        predictor.forget_effect([1, 4])
    per_class = torch.zeros(3, 6, 6, dtype=torch.float64)
    per_class[2, :, 4] = float("inf")  # one class logit's column
    logits = ScoresPredictor(PredictorScope(6), "logits", scores=per_class)
    with pytest.raises(ValueError, match="forget point 4 has no scores"):
        logits.forget_effect([4])
    rows = torch.zeros(6, 6, dtype=torch.float64)
    rows[3] = float("nan")  # training point 3 unscored as a query
    with pytest.raises(ValueError, match="training point 3: those points have no scores"):
        ScoresPredictor(PredictorScope(6), "margin", scores=rows).forget_effect([1, 4])


@pytest.mark.parametrize("value", [float("inf"), float("nan")])
def test_an_infinite_or_nan_scale_is_refused_by_value(mnist, trained, value):
    """scale=inf was accepted (``inf >= 0``) and turned every predicted output into inf or NaN."""
    scores = torch.zeros(4, 4, dtype=torch.float64)
    for name in ("scale", "forget_scale"):
        with pytest.raises(
            ValueError, match=f"{name} must be non-negative and finite, got {value}"
        ):
            ScoresPredictor(PredictorScope(4), "margin", scores=scores, **{name: value})
    predictor = ScoresPredictor(PredictorScope(4), "margin", scores=scores)
    predictor.scale = value  # set by hand after construction: refused when used
    split = _split(mnist.train.subset(np.arange(4)), [1])
    positions = np.arange(4)
    with pytest.raises(ValueError, match=f"scale must be non-negative and finite, got {value}"):
        predictor.targets(trained, mnist.train.subset(positions), positions, split, seed=0)


def test_a_datamodel_example_without_finite_memberships_is_named():
    """A NaN membership of example 4 made every effect NaN, reported as 'training point 0'
    whichever forget set was asked for."""
    generator = np.random.default_rng(0)
    masks = (generator.random((40, 6)) < 0.5).astype(np.float64)
    masks[3, 4] = np.nan
    outputs = generator.normal(size=(40, 6))
    with pytest.raises(ValueError, match="training example 4 has no scores.* subset 3"):
        DatamodelPredictor(PredictorScope(6), "margin", masks=masks, outputs=outputs)


def _tiny_trak(root) -> TRAK:
    """TRAK fit on a hand-made store of 8 training rows with margin features only."""
    store = FeatureStore.open(root, {"features": "hand-made"})
    store.declare_split("train", 8, "d" * 64)
    store.register_checkpoint("c0", "a" * 64)
    generator = np.random.default_rng(0)
    arrays = {"features": generator.normal(size=(8, 3)), "out_to_loss": generator.random(8)}
    store.write_shard("c0", "train", 0, 0, arrays)
    return TRAK().fit(store)


def test_a_logit_trak_predictor_on_a_store_without_logit_features_is_refused_when_built(tmp_path):
    """It was built, then failed at first use with "split 'train.logits' is not declared"."""
    trak = _tiny_trak(tmp_path)
    TRAKPredictor(PredictorScope(8), "margin", trak=trak)  # margins read the train split
    with pytest.raises(
        ValueError, match=r"output='logits' reads .*'train\.logits'.* does not hold"
    ):
        TRAKPredictor(PredictorScope(8), "logits", trak=trak)


def test_a_setting_changed_in_place_is_not_served_the_cached_effect(tmp_path):
    """The cache was keyed by the forget set only: switching retain_kernel on after a first call
    returned the plain sum again. Scales are applied per call and need no new effect."""
    predictor = TRAKPredictor(PredictorScope(8), "margin", trak=_tiny_trak(tmp_path))
    forget = np.array([1, 5])
    plain = predictor.forget_effect(forget).clone()
    predictor.retain_kernel = True
    together = predictor.trak.score_group("train", forget, retain_kernel=True)
    assert not torch.allclose(plain, together)
    torch.testing.assert_close(predictor.forget_effect(forget), together, rtol=0, atol=0)
