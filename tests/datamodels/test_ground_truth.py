import json
import multiprocessing

import numpy as np
import pytest
import torch

from tda.datamodels import GroundTruthStore, sample_subsets

N_TRAIN, N_QUERY, COUNT, SEEDS = 12, 4, 6, [0, 1]
QUERY_FINGERPRINT = "queries-v1"
TRAIN_FINGERPRINT = "train-v1"


def fake_measure(mask: np.ndarray, seed: int) -> np.ndarray:
    """A deterministic stand-in for training on ``mask`` and measuring ``N_QUERY`` outputs."""
    weights = np.random.default_rng(100 + seed).normal(size=(N_QUERY, N_TRAIN))
    return weights @ mask.astype(np.float64) + seed


class CountingMeasure:
    """Counts calls; raises after ``fail_after`` calls to simulate a killed job."""

    def __init__(self, fail_after: int | None = None) -> None:
        self.calls: list[int] = []
        self.fail_after = fail_after

    def __call__(self, mask: np.ndarray, seed: int) -> np.ndarray:
        if self.fail_after is not None and len(self.calls) == self.fail_after:
            raise KeyboardInterrupt("killed")
        self.calls.append(seed)
        return fake_measure(mask, seed)


@pytest.fixture
def masks():
    return sample_subsets(N_TRAIN, 0.5, COUNT, seed=0)


def make_store(root, masks, **overrides):
    arguments = {
        "seeds": SEEDS,
        "query_fingerprint": QUERY_FINGERPRINT,
        "config": {"lr": 0.1},
        "train_fingerprint": TRAIN_FINGERPRINT,
    }
    return GroundTruthStore.create_or_open(root, masks, **(arguments | overrides))


def expected_outputs(masks):
    return np.array([[fake_measure(mask, seed) for seed in SEEDS] for mask in masks])


def test_alpha_of_subsets_of_different_sizes_is_their_mean_as_in_the_manifest(tmp_path):
    masks = np.array([[1, 0, 0, 0], [1, 1, 1, 0], [1, 1, 0, 0]], dtype=bool)  # 1/4, 3/4, 1/2
    store = GroundTruthStore.create_or_open(
        tmp_path, masks, [0], QUERY_FINGERPRINT, train_fingerprint=TRAIN_FINGERPRINT
    )
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert store.alpha == manifest["alpha"] == 0.5  # not the first subset's 1/4


def test_run_records_everything_then_does_nothing(tmp_path, masks):
    store = make_store(tmp_path, masks)
    measure = CountingMeasure()
    assert store.run(measure, progress=False) == COUNT * len(SEEDS)
    assert len(measure.calls) == COUNT * len(SEEDS)
    assert store.missing() == []
    np.testing.assert_array_equal(store.outputs(), expected_outputs(masks))
    assert store.outputs().shape == (COUNT, len(SEEDS), N_QUERY)

    again = CountingMeasure()
    assert make_store(tmp_path, masks).run(again, progress=False) == 0
    assert again.calls == []


def test_manifest_and_masks_are_written(tmp_path, masks):
    make_store(tmp_path, masks)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["alpha"] == 0.5
    assert (manifest["n_train"], manifest["count"], manifest["seeds"]) == (N_TRAIN, COUNT, SEEDS)
    assert manifest["query_fingerprint"] == QUERY_FINGERPRINT
    assert manifest["config"] == {"lr": 0.1}
    np.testing.assert_array_equal(np.load(tmp_path / "masks.npy"), masks)
    opened = GroundTruthStore.open(tmp_path)
    np.testing.assert_array_equal(opened.masks, masks)
    assert opened.seeds == SEEDS and opened.alpha == 0.5


def test_resume_after_kill_runs_only_the_missing_pairs(tmp_path, masks):
    store = make_store(tmp_path, masks)
    with pytest.raises(KeyboardInterrupt):
        store.run(CountingMeasure(fail_after=5), progress=False)
    assert len(store.missing()) == COUNT * len(SEEDS) - 5
    with pytest.raises(RuntimeError, match=f"{COUNT * len(SEEDS) - 5} of {COUNT * len(SEEDS)}"):
        store.outputs()

    resumed = CountingMeasure()
    assert make_store(tmp_path, masks).run(resumed, progress=False) == COUNT * len(SEEDS) - 5
    np.testing.assert_array_equal(store.outputs(), expected_outputs(masks))


def test_run_on_a_subset_list_only_touches_those(tmp_path, masks):
    store = make_store(tmp_path, masks)
    assert store.run(fake_measure, subsets=[1, 4], progress=False) == 2 * len(SEEDS)
    done = {(i, s) for i in range(COUNT) for s in SEEDS} - set(store.missing())
    assert done == {(1, 0), (1, 1), (4, 0), (4, 1)}
    assert store.is_done(4, 1) and not store.is_done(0, 0)


def test_run_takes_integer_arrays_and_tensors_of_subsets(tmp_path, masks):
    store = make_store(tmp_path, masks)
    assert store.run(fake_measure, subsets=np.array([2]), progress=False) == len(SEEDS)
    assert store.run(fake_measure, subsets=torch.tensor([3]), progress=False) == len(SEEDS)
    assert {subset for subset, _ in store.missing()} == {0, 1, 4, 5}


@pytest.mark.parametrize(
    "subsets", [[True, False, True], np.array([True, False, True]), [2.7], np.array([0.0])]
)
def test_run_refuses_boolean_masks_and_floats_instead_of_reading_them_as_indices(
    tmp_path, masks, subsets
):
    store = make_store(tmp_path, masks)
    with pytest.raises(TypeError, match="integer subset indices"):
        store.run(fake_measure, subsets=subsets, progress=False)
    assert len(store.missing()) == COUNT * len(SEEDS)  # nothing trained


def _worker(root: str, subsets: list[int]) -> None:
    store = GroundTruthStore.create_or_open(
        root,
        sample_subsets(N_TRAIN, 0.5, COUNT, seed=0),
        SEEDS,
        QUERY_FINGERPRINT,
        {"lr": 0.1},
        train_fingerprint=TRAIN_FINGERPRINT,
    )
    store.run(fake_measure, subsets=subsets, progress=False)


def test_two_processes_fill_one_store(tmp_path, masks):
    context = multiprocessing.get_context("spawn")
    workers = [
        context.Process(target=_worker, args=(str(tmp_path), part))
        for part in ([0, 2, 4], [1, 3, 5])
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
    assert [worker.exitcode for worker in workers] == [0, 0]
    np.testing.assert_array_equal(
        GroundTruthStore.open(tmp_path).outputs(), expected_outputs(masks)
    )


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"seeds": [0, 1, 2]}, "seeds"),
        ({"query_fingerprint": "other-queries"}, "query_fingerprint"),
        ({"train_fingerprint": "another-training-set"}, "train_fingerprint"),
        ({"config": {"lr": 0.2}}, "config_fingerprint"),
    ],
)
def test_reopening_with_other_settings_raises(tmp_path, masks, overrides, field):
    make_store(tmp_path, masks)
    with pytest.raises(ValueError, match=field):
        make_store(tmp_path, masks, **overrides)


def test_reopening_with_other_masks_raises(tmp_path, masks):
    make_store(tmp_path, masks)
    with pytest.raises(ValueError, match="masks_fingerprint"):
        make_store(tmp_path, sample_subsets(N_TRAIN, 0.5, COUNT, seed=1))
    with pytest.raises(ValueError, match="count"):
        make_store(tmp_path, masks[:-1])


def test_losing_the_creation_race_with_other_masks_raises(tmp_path, masks):
    make_store(tmp_path, masks)
    (tmp_path / "manifest.json").unlink()  # as if the winner had not written its manifest yet
    with pytest.raises(ValueError, match="different masks"):
        make_store(tmp_path, sample_subsets(N_TRAIN, 0.5, COUNT, seed=1))


def test_masks_left_by_an_interrupted_creation_are_named_with_the_way_out(tmp_path, masks):
    make_store(tmp_path, masks)
    (tmp_path / "manifest.json").unlink()  # killed between publishing masks.npy and the manifest
    with pytest.raises(FileNotFoundError, match=r"masks\.npy there is from a creation interrupted"):
        GroundTruthStore.open(tmp_path)
    other = sample_subsets(N_TRAIN, 0.5, COUNT + 1, seed=1)  # e.g. another count asked for now
    with pytest.raises(ValueError, match=r"different masks.*interrupted.*delete .*masks\.npy"):
        make_store(tmp_path, other)
    (tmp_path / "masks.npy").unlink()  # the way out the message gives
    assert make_store(tmp_path, other).masks.shape == (COUNT + 1, N_TRAIN)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_outputs_are_refused(tmp_path, masks, bad):
    store = make_store(tmp_path, masks)
    with pytest.raises(ValueError, match="subset 2, seed 1"):
        store.record(2, 1, np.array([0.0, bad, 1.0, 2.0]))
    assert not store.is_done(2, 1)


def test_a_recorded_pair_is_never_modified(tmp_path, masks):
    store = make_store(tmp_path, masks)
    store.record(1, 0, np.arange(N_QUERY, dtype=np.float64))
    store.record(1, 0, np.zeros(N_QUERY))  # a second job's measurement of the same pair
    np.testing.assert_array_equal(np.load(store._path(1, 0)), np.arange(N_QUERY))


def test_bad_pairs_and_shapes_are_refused(tmp_path, masks):
    store = make_store(tmp_path, masks)
    with pytest.raises(ValueError, match="out of range"):
        store.record(COUNT, 0, np.zeros(N_QUERY))
    with pytest.raises(ValueError, match="seed 7"):
        store.record(0, 7, np.zeros(N_QUERY))
    with pytest.raises(ValueError, match="1-D"):
        store.record(0, 0, np.zeros((2, N_QUERY)))
    with pytest.raises(ValueError, match="distinct"):
        make_store(tmp_path / "other", masks, seeds=[1, 1])


def test_open_without_a_store_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match="manifest.json"):
        GroundTruthStore.open(tmp_path)


def test_masks_given_to_measure_are_read_only(tmp_path, masks):
    def mutate(mask, seed):
        mask[0] = not mask[0]
        return np.zeros(N_QUERY)

    store = make_store(tmp_path, masks)
    with pytest.raises(ValueError, match="read-only"):
        store.run(mutate, progress=False)
    np.testing.assert_array_equal(np.load(tmp_path / "masks.npy"), masks)


def test_a_store_made_before_training_sets_were_recorded_opens_unchecked(tmp_path, masks):
    made = make_store(tmp_path, masks)
    made.run(fake_measure, subsets=[0], progress=False)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    del manifest["train_fingerprint"]
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    store = make_store(tmp_path, masks, train_fingerprint="any-training-set")
    assert store.train_fingerprint is None and len(store.missing()) == (COUNT - 1) * len(SEEDS)
    with pytest.raises(ValueError, match="query_fingerprint"):  # the rest is still checked
        make_store(tmp_path, masks, query_fingerprint="other-queries")


def test_a_store_that_knows_n_query_refuses_a_record_of_another_length(tmp_path, masks):
    store = make_store(tmp_path, masks, n_query=N_QUERY)
    assert store.n_query == N_QUERY
    assert json.loads((tmp_path / "manifest.json").read_text())["n_query"] == N_QUERY
    with pytest.raises(
        ValueError, match=r"subset 1, seed 0 hold 5 values, but the store.s n_query is 4"
    ):
        store.record(1, 0, np.zeros(N_QUERY + 1))
    assert not store.is_done(1, 0)  # the right record can still be made
    store.record(1, 0, np.ones(N_QUERY))
    np.testing.assert_array_equal(np.load(store._path(1, 0)), np.ones(N_QUERY))


def test_n_query_is_checked_when_both_stores_know_it(tmp_path, masks):
    make_store(tmp_path, masks, n_query=N_QUERY)
    with pytest.raises(ValueError, match=r"n_query: stored 4, given 5"):
        make_store(tmp_path, masks, n_query=N_QUERY + 1)
    assert make_store(tmp_path, masks).n_query == N_QUERY  # a caller that does not know it
    make_store(tmp_path / "unknown", masks)  # a store made without it (as before) opens with it
    unknown = make_store(tmp_path / "unknown", masks, n_query=N_QUERY)
    assert unknown.n_query is None
    assert "n_query" not in json.loads((tmp_path / "unknown" / "manifest.json").read_text())


def test_outputs_name_the_records_that_disagree_on_n_query(tmp_path, masks):
    store = make_store(tmp_path, masks)  # made without n_query: any length is recorded
    store.run(fake_measure, progress=False)
    (tmp_path / "outputs" / "subset000003_seed1.npy").unlink()
    store.record(3, 1, np.zeros(N_QUERY + 1))  # one job measured other queries
    with pytest.raises(
        ValueError, match=r"n_query: \(4,\): 11 records .*; \(5,\): 1 record \(subset000003_seed1"
    ):
        store.outputs()
