"""TRAK and the gradient-similarity baselines against closed forms computed in float64 numpy."""

import numpy as np
import pytest
import torch

from tda.data import Examples
from tda.features import GradientFeaturizer, featurize, open_feature_store
from tda.grads import per_sample_gradients
from tda.methods import TRAK, DampedKernel, GradientSimilarity
from tda.models import MLP, build_model
from tda.projection import DenseProjector, IdentityProjector
from tda.store import FeatureStore
from tda.task import ClassificationTask, LanguageModelingTask

TASK = ClassificationTask()


@pytest.fixture
def problem():
    """A 4-3-3 float64 MLP (27 parameters), 60 training and 7 query examples."""
    generator = torch.Generator().manual_seed(0)
    train = Examples(
        torch.randn(60, 4, generator=generator, dtype=torch.float64),
        torch.randint(0, 3, (60,), generator=generator),
    )
    queries = Examples(
        torch.randn(7, 4, generator=generator, dtype=torch.float64),
        torch.randint(0, 3, (7,), generator=generator),
    )
    models = [build_model(lambda: MLP(4, (3,), 3), seed=s, dtype=torch.float64) for s in (0, 1)]
    return train, queries, models


def _numpy_terms(model, train, queries):
    """Training features Φ, query features and out-to-loss weights Q of one model, in numpy."""
    phi = per_sample_gradients(model, TASK, train.inputs, train.targets).numpy()
    query = per_sample_gradients(model, TASK, queries.inputs, queries.targets).numpy()
    with torch.no_grad():
        q = TASK.out_to_loss(model(train.inputs), train.targets).numpy()
    return phi, query, q


def build_store(path, featurizer, models, train, queries, shard_size=16, order=(0, 1)):
    store = open_feature_store(path, featurizer, shard_size=shard_size)
    for index in order:
        splits = {"train": train, "query": queries}
        featurize(
            models[index], splits, featurizer, store, checkpoint_id=f"m{index}", progress=False
        )
    return store


def closed_form(models, train, queries, damping):
    """Eq. (2) of the TRAK paper in numpy with exact gradients (identity projection)."""
    total, weights = 0.0, []
    for model in models:
        phi = per_sample_gradients(model, TASK, train.inputs, train.targets).numpy()
        query = per_sample_gradients(model, TASK, queries.inputs, queries.targets).numpy()
        gram = phi.T @ phi
        gram += damping * np.mean(np.diag(gram)) * np.eye(len(gram))
        total = total + query @ np.linalg.inv(gram) @ phi.T
        with torch.no_grad():
            weights.append(TASK.out_to_loss(model(train.inputs), train.targets).numpy())
    return total / len(models) * np.mean(weights, axis=0)


@pytest.mark.parametrize("damping", [1e-3, 0.1])  # margins have exact symmetries: ΦᵀΦ is singular
@pytest.mark.parametrize("n_train", [60, 20])  # 27 parameters: k > n takes the dual form
def test_trak_with_identity_projection_equals_closed_form(tmp_path, problem, damping, n_train):
    train, queries, models = problem
    train = train.subset(range(n_train))
    store = build_store(tmp_path, GradientFeaturizer(IdentityProjector()), models, train, queries)
    scores = TRAK(damping=damping).fit(store).score("query")
    assert scores.dtype == torch.float64 and scores.shape == (7, n_train)
    np.testing.assert_allclose(
        scores.numpy(), closed_form(models, train, queries, damping), rtol=1e-8, atol=1e-10
    )
    one = TRAK(damping=damping).fit(store, checkpoints=["m1"]).score("query")
    np.testing.assert_allclose(
        one.numpy(), closed_form(models[1:], train, queries, damping), rtol=1e-8, atol=1e-10
    )


def test_scores_do_not_depend_on_chunking_sharding_or_checkpoint_order(tmp_path, problem):
    train, queries, models = problem
    reference = (
        TRAK(damping=0.01)
        .fit(
            build_store(
                tmp_path / "a", GradientFeaturizer(DenseProjector(16)), models, train, queries
            )
        )
        .score("query")
    )
    featurizer = GradientFeaturizer(DenseProjector(16), chunk_size=5)
    other = build_store(
        tmp_path / "b", featurizer, models, train, queries, shard_size=7, order=(1, 0)
    )
    scores = TRAK(damping=0.01).fit(other, checkpoints=["m1", "m0"]).score("query")
    np.testing.assert_allclose(scores.numpy(), reference.numpy(), rtol=1e-9, atol=1e-12)


def test_query_indices_select_rows_and_out_of_range_is_refused(tmp_path, problem):
    train, queries, models = problem
    store = build_store(tmp_path, GradientFeaturizer(IdentityProjector()), models, train, queries)
    trak = TRAK(damping=0.1).fit(store)
    np.testing.assert_allclose(
        trak.score("query", indices=[5, 2]).numpy(), trak.score("query").numpy()[[5, 2]]
    )
    with pytest.raises(ValueError, match="query index 7 is out of range"):
        trak.score("query", indices=[7])
    with pytest.raises(ValueError, match="not in the store"):
        TRAK().fit(store, checkpoints=["m9"])


@pytest.mark.parametrize("method", [TRAK, GradientSimilarity])
def test_a_checkpoint_listed_twice_is_refused_not_counted_twice(tmp_path, problem, method):
    train, queries, models = problem
    store = build_store(tmp_path, GradientFeaturizer(IdentityProjector()), models, train, queries)
    with pytest.raises(ValueError, match="checkpoint 'm0' is listed more than once"):
        method().fit(store, checkpoints=["m0", "m1", "m0"])


def test_boolean_masks_and_non_integer_indices_are_refused_not_read_as_positions(tmp_path, problem):
    """A mask's True/False would silently select rows and columns 1 and 0."""
    train, queries, models = problem
    store = build_store(tmp_path, GradientFeaturizer(IdentityProjector()), models, train, queries)
    trak = TRAK(damping=0.1).fit(store)
    mask = np.zeros(60, dtype=bool)
    mask[[3, 10]] = True
    with pytest.raises(ValueError, match="group indices must be integers"):
        trak.score_group("query", mask)
    with pytest.raises(ValueError, match="group indices must be integers"):
        trak.score_group("query", torch.from_numpy(mask))
    with pytest.raises(ValueError, match="group indices must be integers"):
        trak.score_group("query", [3.0, 10.5])
    for method in (trak, GradientSimilarity().fit(store)):
        with pytest.raises(ValueError, match="query indices must be integers"):
            method.score("query", indices=[True, False, False, True, False, False, False])
        with pytest.raises(ValueError, match="query indices must be integers"):
            method.score("query", indices=np.array([1.7]))
        with pytest.raises(ValueError, match="query indices must be one-dimensional"):
            method.score("query", indices=[[1, 2]])
    positions = torch.tensor([3, 10])
    torch.testing.assert_close(
        trak.score_group("query", positions), trak.score("query")[:, [3, 10]].sum(1)
    )
    torch.testing.assert_close(
        trak.score("query", indices=np.array([4], dtype=np.int32)), trak.score("query")[[4]]
    )


def test_singular_kernel_without_damping_is_reported(tmp_path, problem):
    train, queries, models = problem
    small = train.subset(range(10))  # 10 examples, 27 parameters: rank-deficient kernel
    store = build_store(tmp_path, GradientFeaturizer(IdentityProjector()), models, small, queries)
    with pytest.raises(ValueError, match="singular"):
        TRAK(damping=0.0).fit(store)
    assert torch.isfinite(TRAK(damping=0.1).fit(store).score("query")).all()


@pytest.mark.parametrize("damping", [-0.1, float("nan"), float("inf")])
def test_negative_or_non_finite_damping_is_refused_as_such(damping):
    """NaN and infinity used to pass and be reported later as a singular kernel."""
    with pytest.raises(ValueError, match="damping must be a finite non-negative number"):
        TRAK(damping=damping)


def test_sign_convention_training_point_supports_itself(tmp_path, problem):
    """A query identical to a training example gets a positive score from it (it helps itself)."""
    train, _, models = problem
    store = build_store(tmp_path, GradientFeaturizer(IdentityProjector()), models, train, train)
    scores = TRAK(damping=0.01).fit(store).score("query").numpy()
    assert (np.diag(scores) > 0).all()


@pytest.mark.parametrize("normalize", [False, True])
def test_gradient_similarity_closed_form(tmp_path, problem, normalize):
    train, queries, models = problem
    store = build_store(tmp_path, GradientFeaturizer(IdentityProjector()), models, train, queries)
    scores = GradientSimilarity(normalize=normalize).fit(store).score("query")
    assert scores.dtype == torch.float64  # was float32 from a float64 store
    expected = 0.0
    for model in models:
        phi = per_sample_gradients(model, TASK, train.inputs, train.targets).numpy()
        query = per_sample_gradients(model, TASK, queries.inputs, queries.targets).numpy()
        if normalize:
            phi = phi / np.linalg.norm(phi, axis=1, keepdims=True)
            query = query / np.linalg.norm(query, axis=1, keepdims=True)
            expected = expected + query @ phi.T
        else:
            with torch.no_grad():
                weight = TASK.out_to_loss(model(train.inputs), train.targets).numpy()
            expected = expected + query @ phi.T * weight
    np.testing.assert_allclose(scores.numpy(), expected / len(models), rtol=1e-10, atol=1e-12)


def test_group_scores_equal_summed_columns_of_the_full_score_matrix(tmp_path, problem):
    train, queries, models = problem
    featurizer = GradientFeaturizer(DenseProjector(5, seed=3))
    trak = TRAK(damping=0.1).fit(build_store(tmp_path, featurizer, models, train, queries))
    group = [0, 7, 8, 31, 59]
    expected = trak.score("query")[:, group].sum(dim=1)
    torch.testing.assert_close(trak.score_group("query", group), expected, rtol=1e-10, atol=0)
    torch.testing.assert_close(
        trak.score_group("query", group, indices=[2, 5]), expected[[2, 5]], rtol=1e-10, atol=0
    )
    assert torch.equal(trak.score_group("query", []), torch.zeros(7, dtype=torch.float64))
    with pytest.raises(ValueError, match="group index 60 is out of range"):
        trak.score_group("query", [1, 60])


@pytest.mark.parametrize("gauss_newton", [False, True])
def test_group_scores_and_query_indices_never_load_a_whole_split(
    tmp_path, problem, monkeypatch, gauss_newton
):
    """score_group loaded all [n_train, k] training features per checkpoint to use |G| rows, and
    query indices loaded the whole query split to use a few rows."""
    train, queries, models = problem
    featurizer = GradientFeaturizer(DenseProjector(5, seed=3))
    store = build_store(tmp_path, featurizer, models, train, queries, shard_size=16)
    trak = TRAK(damping=0.1, gauss_newton=gauss_newton).fit(store)
    similarity = GradientSimilarity().fit(store)
    group, retained, rows = [59, 0, 31, 7, 0], [59, 0, 31, 7], [5, 2, 5]
    full = trak.score("query")
    expected_retained = trak.score_group("query", retained, retain_kernel=True)
    expected_similarity = similarity.score("query")

    def whole_split(*args, **kwargs):
        raise AssertionError("a whole split was loaded")

    monkeypatch.setattr(FeatureStore, "load", whole_split)
    torch.testing.assert_close(
        trak.score_group("query", group, indices=rows),
        full[rows][:, group].sum(1),
        rtol=1e-10,
        atol=0,
    )
    torch.testing.assert_close(
        trak.score_group("query", retained, indices=rows, retain_kernel=True),
        expected_retained[rows],
        rtol=1e-12,
        atol=0,
    )
    torch.testing.assert_close(trak.score("query", indices=rows), full[rows], rtol=1e-12, atol=0)
    torch.testing.assert_close(
        similarity.score("query", indices=rows), expected_similarity[rows], rtol=1e-12, atol=0
    )


def test_gauss_newton_trak_weights_the_kernel_by_the_loss_curvature(tmp_path, problem):
    """Φᵀ diag(p(1−p)) Φ in place of ΦᵀΦ and each model's own Q, against numpy."""
    train, queries, models = problem
    store = build_store(tmp_path, GradientFeaturizer(IdentityProjector()), models, train, queries)
    scores = TRAK(damping=0.1, gauss_newton=True).fit(store).score("query").numpy()
    total = 0.0
    for model in models:
        phi, query, q = _numpy_terms(model, train, queries)
        gram = (phi.T * (q * (1 - q))) @ phi
        gram += 0.1 * np.mean(np.diag(gram)) * np.eye(len(gram))
        total = total + query @ np.linalg.inv(gram) @ phi.T * q
    expected = total / len(models)
    np.testing.assert_allclose(scores, expected, rtol=1e-7, atol=1e-9)
    plain = TRAK(damping=0.1).fit(store).score("query").numpy()
    assert np.abs(scores).mean() > 3 * np.abs(plain).mean()  # effects no longer shrunk
    group = [1, 4, 40]
    torch.testing.assert_close(
        TRAK(damping=0.1, gauss_newton=True).fit(store).score_group("query", group),
        torch.from_numpy(expected[:, group].sum(axis=1)),
    )


def test_gauss_newton_trak_refuses_features_of_a_task_without_that_curvature(tmp_path):
    """Q(1 - Q) is p(1 - p) only for classification; a language model's Q = 1/T_c gave sequences
    with one counted token a zero weight (they dropped out of the kernel)."""
    featurizer = GradientFeaturizer(IdentityProjector(), task=LanguageModelingTask())
    store = open_feature_store(tmp_path, featurizer)
    with pytest.raises(ValueError, match="task LanguageModelingTask"):
        TRAK(gauss_newton=True).fit(store)


@pytest.mark.parametrize("gauss_newton", [False, True])
@pytest.mark.parametrize("n_train", [60, 20])  # 27 parameters: k > n takes the dual form
def test_retain_kernel_group_scores_use_the_curvature_of_the_rest(
    tmp_path, problem, gauss_newton, n_train
):
    """(Φ_Rᵀ W_R Φ_R + λI)⁻¹ Φ_Gᵀ Q_G, λ from the full kernel, against numpy."""
    train, queries, models = problem
    train = train.subset(range(n_train))
    store = build_store(tmp_path, GradientFeaturizer(IdentityProjector()), models, train, queries)
    trak = TRAK(damping=0.1, gauss_newton=gauss_newton).fit(store)
    group = [0, 7, 8, 13, n_train - 1]
    rest = np.setdiff1d(np.arange(len(train)), group)
    with torch.no_grad():
        mean_q = np.mean(
            [TASK.out_to_loss(m(train.inputs), train.targets).numpy() for m in models], 0
        )
    total = 0.0
    for model in models:
        phi, query, q = _numpy_terms(model, train, queries)
        w = q * (1 - q) if gauss_newton else np.ones_like(q)
        damping = 0.1 * np.mean(np.diag((phi.T * w) @ phi))
        kernel = (phi[rest].T * w[rest]) @ phi[rest] + damping * np.eye(phi.shape[1])
        out_to_loss = q if gauss_newton else mean_q
        total = total + query @ np.linalg.solve(kernel, phi[group].T @ out_to_loss[group])
    torch.testing.assert_close(
        trak.score_group("query", group, retain_kernel=True),
        torch.from_numpy(total / len(models)),
        rtol=1e-8,
        atol=1e-10,
    )


def test_retain_kernel_of_one_example_is_the_leave_one_out_correction(tmp_path, problem):
    """For G = {i}: τ(x)_i / (1 − w_i φ_iᵀ A⁻¹ φ_i), one model, Gauss-Newton kernel A."""
    train, queries, models = problem
    featurizer = GradientFeaturizer(IdentityProjector())
    store = build_store(tmp_path, featurizer, models, train, queries, order=(0,))
    trak = TRAK(damping=0.1, gauss_newton=True).fit(store)
    phi = per_sample_gradients(models[0], TASK, train.inputs, train.targets).double()
    with torch.no_grad():
        q = TASK.out_to_loss(models[0](train.inputs), train.targets).double()
    kernel = phi.T @ (phi * (q * (1 - q))[:, None])
    inverse = torch.linalg.inv(kernel + 0.1 * kernel.diagonal().mean() * torch.eye(len(kernel)))
    for i in (3, 42):
        leverage = (q[i] * (1 - q[i])) * phi[i] @ inverse @ phi[i]
        expected = trak.score("query")[:, i] / (1 - leverage)
        torch.testing.assert_close(trak.score_group("query", [i], retain_kernel=True), expected)
    with pytest.raises(ValueError, match="repeats a training example"):
        trak.score_group("query", [3, 3], retain_kernel=True)


@pytest.mark.parametrize("weighted", [False, True])
def test_the_dual_kernel_solves_as_the_primal_one_and_is_chosen_when_k_exceeds_n(
    tmp_path, problem, weighted
):
    train, queries, models = problem
    featurizer = GradientFeaturizer(IdentityProjector())
    store = build_store(tmp_path, featurizer, models, train.subset(range(20)), queries)
    weights = torch.rand(20, dtype=torch.float64) if weighted else None
    primal = DampedKernel.fit(store, "m0", "train", weights, 0.05, dual=False)
    dual = DampedKernel.fit(store, "m0", "train", weights, 0.05, dual=True)
    right = torch.randn(27, 4, dtype=torch.float64)
    torch.testing.assert_close(dual.solve(right), primal.solve(right), rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(dual.solve_rows(right.T), primal.solve_rows(right.T))
    assert DampedKernel.fit(store, "m0", "train", None, 0.05).inverse is None  # k 27 > n 20
    wide = build_store(tmp_path / "wide", featurizer, models, train, queries)
    assert DampedKernel.fit(wide, "m0", "train", None, 0.05).inverse is not None  # n = 60


def test_the_dual_kernel_without_damping_is_refused(tmp_path, problem):
    train, queries, models = problem
    featurizer = GradientFeaturizer(IdentityProjector())
    store = build_store(tmp_path, featurizer, models, train.subset(range(20)), queries)
    with pytest.raises(ValueError, match="singular"):
        DampedKernel.fit(store, "m0", "train", None, 0.0, dual=True)


@pytest.mark.parametrize("normalize", [False, True])
def test_a_refused_gradient_similarity_refit_leaves_the_fitted_one_as_it_was(
    tmp_path, problem, normalize
):
    """The new store used to be kept with the old checkpoints and scales: mixed scores."""
    train, queries, models = problem
    others = [build_model(lambda: MLP(4, (3,), 3), seed=s, dtype=torch.float64) for s in (2, 3)]
    featurizer = GradientFeaturizer(IdentityProjector())
    first = build_store(tmp_path / "a", featurizer, models, train, queries)
    second = build_store(tmp_path / "b", featurizer, others, train, queries)  # same checkpoint ids
    method = GradientSimilarity(normalize=normalize).fit(first)
    before = method.score("query")
    with pytest.raises(ValueError, match="not in the store"):
        method.fit(second, checkpoints=["m9"])
    assert method.store is first
    torch.testing.assert_close(method.score("query"), before, rtol=0, atol=0)


def test_a_refused_trak_refit_leaves_the_fitted_one_as_it_was(tmp_path, problem):
    train, queries, models = problem
    others = [build_model(lambda: MLP(4, (3,), 3), seed=s, dtype=torch.float64) for s in (2, 3)]
    featurizer = GradientFeaturizer(IdentityProjector())
    first = build_store(tmp_path / "a", featurizer, models, train, queries)
    second = build_store(tmp_path / "b", featurizer, others, train, queries)  # same checkpoint ids
    method = TRAK(damping=0.1).fit(first)
    before = method.score("query")
    with pytest.raises(ValueError, match="not in the store"):
        method.fit(second, checkpoints=["m9"])
    assert method.store is first
    torch.testing.assert_close(method.score("query"), before, rtol=0, atol=0)
