"""Counterfactual retraining: planning, the resumable store, summaries, and real retraining."""

import dataclasses
import json
from functools import partial

import numpy as np
import pytest
import torch

from tda.data import Examples, load_mnist1d
from tda.eval import (
    RANDOM,
    CounterfactualStore,
    QueryOutcomes,
    RemovalRetrainer,
    counterfactual_result,
    counterfactual_retraining,
    plan_removals,
)
from tda.models import MLP, LogisticRegression, build_model
from tda.outputs import task_outputs
from tda.task import ClassificationTask
from tda.training import TrainConfig, train

N_TRAIN, N_QUERY = 30, 4


class LinearFake:
    """A counting stand-in for retraining whose outputs are linear in the kept examples.

    ``outputs = weights @ keep`` (so removing R drops query q's output by exactly
    ``weights[q, R].sum()``), the seed adds ``seed`` to every output, and the prediction is 1
    where the output is positive. ``fail_after`` raises after that many calls (a killed job).
    """

    def __init__(self, weights: np.ndarray, fail_after: int | None = None) -> None:
        self.weights, self.fail_after, self.calls = weights, fail_after, []

    def __call__(self, keep: np.ndarray, seed: int) -> QueryOutcomes:
        if self.fail_after is not None and len(self.calls) >= self.fail_after:
            raise KeyboardInterrupt("killed")
        self.calls.append((tuple(int(i) for i in np.flatnonzero(~keep)), seed))
        outputs = self.weights @ keep.astype(np.float64) + seed
        return QueryOutcomes(outputs, (outputs > 0).astype(np.int64))


@pytest.fixture
def weights() -> np.ndarray:
    return np.random.default_rng(0).normal(size=(N_QUERY, N_TRAIN))


def open_store(
    root, n_train=N_TRAIN, n_query=N_QUERY, fingerprint="queries", train="train", **options
):
    return CounterfactualStore.create_or_open(
        root,
        n_train=n_train,
        n_query=n_query,
        query_fingerprint=fingerprint,
        train_fingerprint=train,
        **options,
    )


def test_plan_removes_the_top_k_and_nested_seeded_random_sets():
    scores = np.array([[0.5, 2.0, -1.0, 2.0, 0.1, -3.0], [1.0, 0.0, 0.0, 0.0, 0.0, 0.0]])
    plan = plan_removals(scores, [0], [4, 2], [7, 8], method="trak", random_seed=1)
    assert [(r.k, r.removal, r.seed) for r in plan] == [
        (2, "trak", 7),
        (2, RANDOM, 7),
        (4, "trak", 7),
        (4, RANDOM, 7),
        (2, "trak", 8),
        (2, RANDOM, 8),
        (4, "trak", 8),
        (4, RANDOM, 8),
    ]
    assert plan[0].removed == (1, 3)  # tie at 2.0: lower index first
    assert plan[2].removed == (1, 3, 0, 4) and plan[2].n_positive == 4
    assert plan[1].n_positive is None and plan[3].removed[:2] == plan[1].removed  # nested
    assert plan[1].removed != plan[5].removed  # another seed, another random set
    again = plan_removals(
        torch.from_numpy(scores), [0], [4, 2], [7, 8], method="trak", random_seed=1
    )
    assert again == plan
    other = plan_removals(scores, [0], [4, 2], [7, 8], method="trak", random_seed=2)
    assert other[1].removed != plan[1].removed
    assert plan_removals(scores, [1], [4], [0], method="x")[0].n_positive == 1


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"ks": [0]}, "every k"),
        ({"ks": [6]}, "every k"),
        ({"seeds": [1, 1]}, "distinct"),
        ({"queries": []}, "non-empty"),
        ({"queries": [2]}, r"lie in \[0, 2\)"),
        ({"method": RANDOM}, "other than"),
        ({"method": "../trak"}, "method '../trak' is not valid"),
        ({"method": "trak+if"}, r"method 'trak\+if' is not valid"),  # the store refused it
        ({"method": ".trak"}, "method '.trak' is not valid"),
    ],
)
def test_bad_plans_are_refused(overrides, message):
    arguments = {"queries": [0], "ks": [2], "seeds": [0], "method": "trak"} | overrides
    scores = np.zeros((2, 6))
    with pytest.raises(ValueError, match=message):
        plan_removals(scores, arguments.pop("queries"), **arguments)
    scores[0, 3] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        plan_removals(scores, [0], [2], [0], method="trak")


@pytest.mark.parametrize("argument", ["queries", "ks", "seeds"])
def test_plan_refuses_non_integer_queries_ks_and_seeds_instead_of_truncating(argument):
    for bad in ([1.5], [True]):
        arguments = {"queries": [0], "ks": [2], "seeds": [0]} | {argument: bad}
        with pytest.raises(TypeError, match=f"{argument} must be integers"):
            plan_removals(np.zeros((2, 6)), method="trak", **arguments)


def test_plan_refuses_negative_seeds_and_a_bad_random_seed_naming_them():
    """numpy's seed sequence said only 'expected non-negative integer' (or read True as 1)."""
    scores = np.zeros((2, 6))
    with pytest.raises(ValueError, match=r"seeds \[-1\] must lie in \[0, 2\*\*64\)"):
        plan_removals(scores, [0], [2], [-1], method="trak")
    with pytest.raises(ValueError, match=r"seeds \[18446744073709551616\] must lie"):
        plan_removals(scores, [0], [2], [2**64], method="trak")
    with pytest.raises(ValueError, match=r"random_seed must lie in \[0, 2\*\*64\), got -1"):
        plan_removals(scores, [0], [2], [0], method="trak", random_seed=-1)
    for bad in (1.5, True, "0"):
        with pytest.raises(TypeError, match="random_seed must be an integer"):
            plan_removals(scores, [0], [2], [0], method="trak", random_seed=bad)
    by_numpy = plan_removals(scores, [0], [2], [0], method="trak", random_seed=np.int64(3))
    assert by_numpy == plan_removals(scores, [0], [2], [0], method="trak", random_seed=3)


def test_plan_refuses_scores_that_are_not_a_matrix():
    with pytest.raises(ValueError, match=r"scores must be 2-D \[n_query, n_train\]"):
        plan_removals(np.zeros(6), [0], [2], [0], method="trak")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_plan_reads_torch_scores_of_any_dtype_and_with_gradients(dtype):
    scores = torch.tensor([[0.5, -1.0, 2.0, 0.0, 1.0, -2.0]], dtype=dtype, requires_grad=True)
    plan = plan_removals(scores, [0], [2], [0], method="trak")
    assert plan[0].removed == (2, 4) and plan[0].n_positive == 2
    assert plan == plan_removals(scores.detach().double().numpy(), [0], [2], [0], method="trak")


def test_resume_skips_finished_runs_and_a_killed_job_loses_nothing(tmp_path, weights):
    plan = plan_removals(weights, [0, 1, 2], [3, 5], [0, 1], method="oracle")  # 24 runs
    first = LinearFake(weights)
    one_query = [r for r in plan if r.query == 0]
    assert open_store(tmp_path).run(first, one_query, progress=False) == 2 + 8  # 2 full + runs
    killed = LinearFake(weights, fail_after=5)
    with pytest.raises(KeyboardInterrupt):
        open_store(tmp_path).run(killed, plan, progress=False)
    rest = LinearFake(weights)
    assert open_store(tmp_path).run(rest, plan, progress=False) == 16 - 5
    assert open_store(tmp_path).run(LinearFake(weights), plan, progress=False) == 0
    trained = first.calls + killed.calls + rest.calls
    assert len(trained) == len(set(trained)) == 2 + 24  # every run exactly once
    assert sorted(trained[2:]) == sorted((tuple(sorted(r.removed)), r.seed) for r in plan)
    assert open_store(tmp_path).missing(plan) == []
    written = sorted(p.name for p in (tmp_path / "removed" / "oracle").iterdir())
    assert len(written) == 12 and written[0] == "q000000-k000003-seed0.json"


def test_summaries_match_the_exact_drops_of_linear_outputs(tmp_path, weights):
    fake, store = LinearFake(weights), open_store(tmp_path)
    plan = dict(queries=[0, 1, 2, 3], ks=[3], seeds=[0, 1], method="oracle")
    result = counterfactual_retraining(store, fake, weights, **plan, progress=False)
    assert len(result.records) == 4 * 2 * 2
    for record in result.records:
        removal = next(
            r
            for r in plan_removals(weights, [record.query], [3], [record.seed], method="oracle")
            if r.removal == record.removal
        )
        expected = weights[record.query, list(removal.removed)].sum()  # the seed cancels
        assert record.drop == pytest.approx(expected, abs=1e-12)
    summary = {(s.removal, s.k): s for s in result.summaries}
    top = np.sort(weights, axis=1)[:, -3:].sum(axis=1)
    assert summary["oracle", 3].drop.mean == pytest.approx(top.mean(), abs=1e-12)
    assert summary["oracle", 3].n_queries == 4 and summary["oracle", 3].n_seeds == 2
    for s in result.summaries:
        assert s.drop.ci_low <= s.drop.mean <= s.drop.ci_high
        assert 0.0 <= s.flipped.ci_low <= s.flipped.mean <= s.flipped.ci_high <= 1.0
    flipped = {(r.removal, r.query, r.seed): float(r.flipped) for r in result.records}
    for removal in ("oracle", RANDOM):  # flip fraction: per query over seeds, then over queries
        per_query = [np.mean([flipped[removal, q, seed] for seed in (0, 1)]) for q in range(4)]
        assert 0.0 < max(per_query) < 1.0  # some query flipped at one seed only
        assert summary[removal, 3].flipped.mean == pytest.approx(np.mean(per_query), abs=1e-12)
    (comparison,) = result.comparisons
    extra = [  # oracle minus random at the same query and seed, over seeds, then over queries
        np.mean([flipped["oracle", q, seed] - flipped[RANDOM, q, seed] for seed in (0, 1)])
        for q in range(4)
    ]
    assert comparison.extra_flipped.mean == pytest.approx(np.mean(extra), abs=1e-12)
    difference = summary["oracle", 3].drop.mean - summary[RANDOM, 3].drop.mean
    assert comparison.extra_drop.mean == pytest.approx(difference, abs=1e-12)
    assert comparison.extra_drop.ci_low > 0  # the oracle beats random on every query here
    json.dumps(dataclasses.asdict(result))  # serialisable
    assert "oracle - random, 3:" in str(result)


def test_a_method_is_compared_with_random_at_its_own_seeds_when_plans_share_the_control(
    tmp_path, weights
):
    """Method b ran seed 0 only; a's plan adds random runs at seeds 1 and 2. b's comparison
    must pair seed 0 with seed 0 (it averaged random over seeds 0-2 and changed with a)."""

    def seed_dependent(keep, seed):  # removing r examples adds r * seed: no cancellation
        outputs = weights @ keep.astype(np.float64) + seed * float((~keep).sum())
        return QueryOutcomes(outputs, (outputs > 0).astype(np.int64))

    store = open_store(tmp_path)
    a = plan_removals(weights, [0, 1], [3], [0, 1, 2], method="a")
    b = plan_removals(weights, [0, 1], [3], [0], method="b")
    store.run(seed_dependent, a + b, progress=False)
    alone = counterfactual_result(store, b)
    together = counterfactual_result(store, a + b)
    b_alone = next(c for c in alone.comparisons if c.method == "b")
    b_together = next(c for c in together.comparisons if c.method == "b")
    expected = np.mean(  # exact: removed weights of b minus those of random at seed 0
        [
            weights[q, list(m.removed)].sum() - weights[q, list(r.removed)].sum()
            for q, (m, r) in enumerate(zip(b[::2], b[1::2], strict=True))
        ]
    )
    assert b_alone.extra_drop.mean == pytest.approx(expected, abs=1e-12)
    assert b_together.extra_drop.mean == pytest.approx(expected, abs=1e-12)
    assert b_together.n_queries == 2


def test_records_count_the_positive_scores_of_the_planned_scores_not_the_recorded_ones(
    tmp_path, weights
):
    """Scores shifted by -100 rank alike, so the recorded run is reused, but none is positive."""
    store = open_store(tmp_path)
    store.run(
        LinearFake(weights), plan_removals(weights, [0], [3], [0], method="m"), progress=False
    )
    shifted = plan_removals(weights - 100.0, [0], [3], [0], method="m")
    result = counterfactual_result(store, shifted)
    assert [(r.removal, r.n_positive) for r in result.records] == [("m", 0), (RANDOM, None)]


def test_stale_records_and_other_settings_are_refused(tmp_path, weights):
    plan = plan_removals(weights, [0], [3], [0], method="oracle")
    open_store(tmp_path).run(LinearFake(weights), plan, progress=False)
    changed = plan_removals(-weights, [0], [3], [0], method="oracle")
    with pytest.raises(ValueError, match="removed other training examples"):
        open_store(tmp_path).run(LinearFake(weights), changed, progress=False)
    with pytest.raises(ValueError, match="query_fingerprint"):
        open_store(tmp_path, fingerprint="other queries")
    with pytest.raises(ValueError, match="n_train"):
        open_store(tmp_path, n_train=31)
    with pytest.raises(RuntimeError, match="not recorded"):
        counterfactual_result(
            open_store(tmp_path), plan_removals(weights, [1], [3], [0], method="o")
        )

    def too_short(keep, seed):
        return QueryOutcomes(np.zeros(3), np.zeros(3))

    with pytest.raises(ValueError, match=r"outputs \(3,\)"):
        new_seed = [dataclasses.replace(plan[0], seed=5)]
        open_store(tmp_path).run(too_short, new_seed, progress=False)
    outside = [dataclasses.replace(plan[0], removal="../x")]  # a hand-made removal
    with pytest.raises(ValueError, match="removal '../x' is not valid"):
        open_store(tmp_path).run(LinearFake(weights), outside, progress=False)
    twice = [dataclasses.replace(plan[0], removed=(1, 1, 2), seed=6)]
    with pytest.raises(ValueError, match="removes an example more than once"):
        open_store(tmp_path).run(LinearFake(weights), twice, progress=False)


def test_a_random_control_of_another_random_seed_is_refused_naming_random_seed(tmp_path, weights):
    # the control lives in removed/random/ whatever the method is called: another method name
    # (the advice given before) cannot help
    store = open_store(tmp_path)
    store.run(
        LinearFake(weights), plan_removals(weights, [0], [3], [0], method="trak"), progress=False
    )
    for method in ("influence", "influence2"):
        other = plan_removals(weights, [0], [3], [0], method=method, random_seed=1)
        with pytest.raises(ValueError, match="random control .* another random_seed") as error:
            store.run(LinearFake(weights), other, progress=False)
        assert "method name" not in str(error.value)
    changed = plan_removals(-weights, [0], [3], [0], method="trak")
    with pytest.raises(ValueError, match="the scores changed .* another method name"):
        store.run(LinearFake(weights), changed, progress=False)


def test_the_random_seed_is_recorded_when_given_and_checked_where_both_know_it(tmp_path, weights):
    store = open_store(tmp_path, random_seed=0)
    assert store.random_seed == 0
    assert json.loads((tmp_path / "manifest.json").read_text())["random_seed"] == 0
    with pytest.raises(ValueError, match="random_seed: stored 0, given 1"):
        open_store(tmp_path, random_seed=1)
    store = open_store(tmp_path)  # a caller that does not know it
    store.run(
        LinearFake(weights), plan_removals(weights, [0], [3], [0], method="m"), progress=False
    )
    other = plan_removals(weights, [0], [3], [0], method="m2", random_seed=1)
    with pytest.raises(ValueError, match="drawn with random_seed=0"):
        store.run(LinearFake(weights), other, progress=False)
    # a store made without it (as before) opens with it, and stays as it was written
    open_store(tmp_path / "before")
    assert open_store(tmp_path / "before", random_seed=1).random_seed is None
    assert "random_seed" not in json.loads((tmp_path / "before" / "manifest.json").read_text())


def test_a_store_of_another_training_set_of_the_same_size_is_refused(tmp_path, weights):
    plan = plan_removals(weights, [0], [3], [0], method="oracle")
    open_store(tmp_path, train="set a").run(LinearFake(weights), plan, progress=False)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["train_fingerprint"] == "set a"
    assert CounterfactualStore.open(tmp_path).train_fingerprint == "set a"
    with pytest.raises(ValueError, match="train_fingerprint: stored 'set a', given 'set b'"):
        open_store(tmp_path, train="set b")  # n_train, queries and recipe all equal


def test_a_store_made_before_training_sets_were_recorded_opens_unchecked(tmp_path, weights):
    plan = plan_removals(weights, [0], [3], [0], method="oracle")
    open_store(tmp_path, train="set a").run(LinearFake(weights), plan, progress=False)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    del manifest["train_fingerprint"]  # as written before the field existed
    (tmp_path / "manifest.json").write_text(json.dumps(manifest, indent=2))
    fake = LinearFake(weights)
    store = open_store(tmp_path, train="set b")
    assert store.train_fingerprint is None and store.run(fake, plan, progress=False) == 0
    assert fake.calls == []  # resumed: nothing retrained
    assert "train_fingerprint" not in json.loads((tmp_path / "manifest.json").read_text())
    with pytest.raises(ValueError, match="query_fingerprint"):  # the rest is still checked
        open_store(tmp_path, fingerprint="other queries", train="set b")


def planted_problem(generic=6, groups=3, copies=10):
    """200 examples with noise labels, except that feature ``generic + j`` is on only for the
    ``copies`` examples ``j*copies ...`` of class j. Query j has just that feature on, so its
    margin rests on those examples: they are the known top-k of query j."""
    generator = torch.Generator().manual_seed(0)
    inputs = torch.zeros(200, generic + groups)
    inputs[:, :generic] = torch.randn(200, generic, generator=generator)
    targets = torch.randint(0, groups, (200,), generator=generator)
    for j in range(groups):
        inputs[j * copies : (j + 1) * copies, generic + j] = 1.0
        targets[j * copies : (j + 1) * copies] = j
    queries = torch.zeros(groups, generic + groups)
    queries[torch.arange(groups), generic + torch.arange(groups)] = 1.0
    return Examples(inputs, targets), Examples(queries, torch.arange(groups))


def test_removing_planted_helpers_drops_the_margin_far_more_than_random(tmp_path):
    train_data, queries = planted_problem()
    scores = np.random.default_rng(0).normal(scale=0.1, size=(3, 200))
    for j in range(3):
        scores[j, j * 10 : (j + 1) * 10] += 1.0
    config = TrainConfig(epochs=20, batch_size=32, optimizer=partial(torch.optim.Adam, lr=0.05))
    retrain = RemovalRetrainer(lambda: LogisticRegression(9, 3), train_data, queries, config)
    store = CounterfactualStore.create_or_open(
        tmp_path,
        n_train=200,
        n_query=3,
        query_fingerprint=queries.fingerprint(),
        train_fingerprint=train_data.fingerprint(),
    )
    result = counterfactual_retraining(
        store, retrain, scores, [0, 1, 2], [10], [0, 1, 2], method="planted", progress=False
    )
    summary = {s.removal: s for s in result.summaries}
    for removal in plan_removals(scores, [0, 1, 2], [10], [0], method="planted")[::2]:
        assert set(removal.removed) == set(range(10 * removal.query, 10 * removal.query + 10))
    assert all(r.drop > 2.0 for r in result.records if r.removal == "planted")
    assert summary["planted"].drop.mean > 4 * summary[RANDOM].drop.mean
    (comparison,) = result.comparisons
    assert comparison.extra_drop.ci_low > 2.0
    assert summary["planted"].flipped.mean >= 0.5 and summary[RANDOM].flipped.mean == 0.0


def test_mnist1d_runs_match_direct_seed_matched_retraining(tmp_path):
    splits = load_mnist1d(n_train=200, n_test=20)
    queries = splits.test.subset(range(5))
    config = TrainConfig(epochs=2, batch_size=32)
    factory = partial(MLP, 40, (16,), 10)
    retrain = RemovalRetrainer(factory, splits.train, queries, config)
    scores = np.random.default_rng(0).normal(size=(5, 200))
    store = CounterfactualStore.create_or_open(
        tmp_path,
        n_train=200,
        n_query=5,
        query_fingerprint=queries.fingerprint(),
        train_fingerprint=splits.train.fingerprint(),
    )
    result = counterfactual_retraining(
        store, retrain, scores, [1, 3], [5, 20], [0, 1], method="noise", progress=False
    )
    assert len(result.records) == 2 * 2 * 2 * 2  # queries x ks x removals x seeds
    assert [(s.removal, s.k, s.n_queries, s.n_seeds) for s in result.summaries] == [
        ("noise", 5, 2, 2),
        ("noise", 20, 2, 2),
        (RANDOM, 5, 2, 2),
        (RANDOM, 20, 2, 2),
    ]
    assert [c.k for c in result.comparisons] == [5, 20]

    def direct(keep, seed):  # the original recipe, trained here by hand
        model = build_model(factory, seed)
        train(model, splits.train.subset(keep), config, seed=seed)
        return task_outputs(model, ClassificationTask(), queries).double().numpy()

    record = next(r for r in result.records if (r.removal, r.k, r.seed) == ("noise", 20, 1))
    removal = next(
        r
        for r in plan_removals(scores, [record.query], [20], [1], method="noise")
        if r.removal == "noise"
    )
    keep = np.ones(200, dtype=bool)
    keep[list(removal.removed)] = False
    assert record.output_full == direct(np.ones(200, dtype=bool), 1)[record.query]  # bitwise
    assert record.output == direct(keep, 1)[record.query]
    assert record.drop == record.output_full - record.output


def test_removal_retrainer_reads_a_zero_one_keep_mask_as_booleans():
    train_data, queries = planted_problem()
    config = TrainConfig(epochs=2, batch_size=32)
    retrain = RemovalRetrainer(lambda: LogisticRegression(9, 3), train_data, queries, config)
    keep = np.ones(200, dtype=bool)
    keep[:10] = False
    expected = retrain(keep, 0)
    for values in (keep.astype(np.int64), keep.astype(np.float64)):
        outcomes = retrain(values, 0)
        np.testing.assert_array_equal(outcomes.outputs, expected.outputs)
        np.testing.assert_array_equal(outcomes.predictions, expected.predictions)
    with pytest.raises(ValueError, match="boolean or hold only 0 and 1"):
        retrain(np.full(200, 2), 0)


def test_removal_retrainer_trains_a_float64_model_on_float64_data():
    # the model was built in float32 whatever the data: its first forward pass failed
    train_data, queries = planted_problem()
    train_data = Examples(train_data.inputs.double(), train_data.targets)
    queries = Examples(queries.inputs.double(), queries.targets)
    config = TrainConfig(epochs=2, batch_size=32)
    retrain = RemovalRetrainer(lambda: LogisticRegression(9, 3), train_data, queries, config)
    keep = np.ones(200, dtype=bool)
    keep[:10] = False
    model = build_model(lambda: LogisticRegression(9, 3), 0, dtype=torch.float64)
    model = train(model, train_data.subset(keep), config, seed=0).model
    expected = task_outputs(model, ClassificationTask(), queries).numpy()
    np.testing.assert_array_equal(retrain(keep, 0).outputs, expected)
