"""FeatureStore: round trips, resume, idempotence, mismatches, corruption, concurrency, merging."""

from __future__ import annotations

import json
import multiprocessing
import os
from pathlib import Path

import numpy as np
import pytest
import torch

import tda.store as store_module
from tda.projection.base import random_stream_digest
from tda.store import (
    CorruptShardError,
    FeatureStore,
    IncompleteStoreError,
    StoreMismatchError,
)

CONFIG = {"projector": {"dim": 3, "seed": 0}, "task": "classification"}
DATA_FINGERPRINT, MODEL_FINGERPRINT = "d" * 64, "a" * 64
SIZE = 12
RANGES = [(0, 3), (3, 6), (6, 9), (9, 12)]  # rows of shard i
_rng = np.random.default_rng(0)
FEATURES = _rng.standard_normal((SIZE, 3)).astype(np.float32)
OUT_TO_LOSS = _rng.random(SIZE)


def _store(root: Path, config: dict = CONFIG) -> FeatureStore:
    store = FeatureStore.open(root, config)
    store.declare_split("train", SIZE, DATA_FINGERPRINT)
    store.register_checkpoint("c0", MODEL_FINGERPRINT)
    return store


def _write(store: FeatureStore, index: int, rows: tuple[int, int] | None = None) -> None:
    start, stop = rows or RANGES[index]
    arrays = {"features": FEATURES[start:stop], "out_to_loss": OUT_TO_LOSS[start:stop]}
    store.write_shard("c0", "train", index, start, arrays)


def _write_in_process(root: str, indices: list[int]) -> None:
    store = _store(Path(root))
    for index in indices:
        _write(store, index)


def _shard_dir(store: FeatureStore) -> Path:
    return store.root / "shards" / "c0" / "train"


def _assert_bitwise_equal(actual: np.ndarray, expected: np.ndarray) -> None:
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    assert actual.tobytes() == expected.tobytes()


@pytest.fixture
def reference(tmp_path: Path) -> FeatureStore:
    store = _store(tmp_path / "reference")
    for index in range(len(RANGES)):
        _write(store, index)
    return store


def test_round_trip(reference: FeatureStore) -> None:
    _assert_bitwise_equal(reference.load("c0", "train"), FEATURES)
    _assert_bitwise_equal(reference.load("c0", "train", "out_to_loss", verify=True), OUT_TO_LOSS)
    assert reference.checkpoints() == ["c0"] and reference.splits() == {"train": SIZE}
    infos = reference.shards("c0", "train")
    assert [(info.index, info.start, info.stop) for info in infos] == [
        (i, start, stop) for i, (start, stop) in enumerate(RANGES)
    ]
    assert infos[0].arrays == {"features": ((3, 3), "<f4"), "out_to_loss": ((3,), "<f8")}


def test_write_order_and_shard_numbering_do_not_change_load(tmp_path, reference) -> None:
    store = _store(tmp_path / "shuffled")
    for index, rows in zip([7, 2, 0, 5], reversed(RANGES), strict=True):
        _write(store, index, rows)
    _assert_bitwise_equal(store.load("c0", "train"), reference.load("c0", "train"))
    starts = [start for start, _ in store.iter_rows("c0", "train")]
    assert starts == [start for start, _ in RANGES]


def test_resume_in_a_new_store_object(tmp_path, reference) -> None:
    _write(_store(tmp_path / "resumed"), 0)
    _write(_store(tmp_path / "resumed"), 2)
    store = FeatureStore.open(tmp_path / "resumed", CONFIG)
    assert [store.has_shard("c0", "train", i) for i in range(4)] == [True, False, True, False]
    _write(store, 1)
    _write(store, 3)
    for name in ("features", "out_to_loss"):
        _assert_bitwise_equal(store.load("c0", "train", name), reference.load("c0", "train", name))


def test_identical_rewrite_writes_nothing(reference: FeatureStore) -> None:
    def snapshot() -> dict:
        return {
            p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in _shard_dir(reference).iterdir()
        }

    before = snapshot()
    _write(reference, 1)
    assert snapshot() == before


def test_conflicting_rewrite_is_refused(reference: FeatureStore) -> None:
    with pytest.raises(StoreMismatchError, match="shard 1 .* other content"):
        reference.write_shard("c0", "train", 1, 3, {"features": FEATURES[3:6] + 1})
    _assert_bitwise_equal(reference.load("c0", "train", verify=True), FEATURES)


def test_checking_a_checkpoint_reads_without_registering(reference: FeatureStore) -> None:
    reference.check_checkpoint("c0", MODEL_FINGERPRINT)  # the model recorded: accepted
    with pytest.raises(StoreMismatchError, match="'c0' computed from model fingerprint"):
        reference.check_checkpoint("c0", "f" * 64)
    with pytest.raises(StoreMismatchError, match="no features of checkpoint 'c1'"):
        reference.check_checkpoint("c1", MODEL_FINGERPRINT)
    assert reference.checkpoints() == ["c0"]


def test_overlapping_shards_are_refused(reference: FeatureStore) -> None:
    with pytest.raises(StoreMismatchError, match=r"rows \[2, 5\) of shard 9 overlap"):
        _write(reference, 9, (2, 5))
    assert not reference.has_shard("c0", "train", 9)


def test_each_sidecar_is_read_once_per_store_object(tmp_path: Path, monkeypatch) -> None:
    """The overlap check re-read every sidecar on every write: O(n^2) reads for n shards."""
    reads, read = [], store_module.complete_sidecar
    monkeypatch.setattr(store_module, "complete_sidecar", lambda *a: reads.append(a) or read(*a))
    store = _store(tmp_path)
    for index in range(SIZE):
        _write(store, index, (index, index + 1))
    assert len(reads) == SIZE - 1  # each shard's sidecar, read by the writes after it


def test_a_shard_another_writer_added_is_still_checked_for_overlap(tmp_path: Path) -> None:
    mine, theirs = _store(tmp_path), _store(tmp_path)
    _write(mine, 0)
    _write(theirs, 1)  # after `mine` has read the directory
    with pytest.raises(StoreMismatchError, match=r"rows \[4, 7\) of shard 2 overlap rows \[3, 6\)"):
        _write(mine, 2, (4, 7))


def test_config_mismatch_names_the_key(tmp_path: Path) -> None:
    FeatureStore.open(tmp_path, CONFIG)
    other = {**CONFIG, "projector": {"dim": 8, "seed": 0}}
    with pytest.raises(StoreMismatchError, match="'projector.dim': store has 3, given 8"):
        FeatureStore.open(tmp_path, other)


def test_a_store_records_the_random_stream_and_torch_its_projections_were_drawn_under(
    tmp_path: Path,
) -> None:
    FeatureStore.open(tmp_path / "s", {"k": 1})
    manifest = json.loads((tmp_path / "s" / "manifest.json").read_text())
    assert manifest["random_stream"] == random_stream_digest()
    assert manifest["torch"] == torch.__version__


def test_a_store_made_under_another_random_stream_is_refused(tmp_path: Path) -> None:
    """Another torch may draw other matrices from the same seeds: features projected now would
    be mixed with the store's."""
    FeatureStore.open(tmp_path / "s", {"k": 1})
    path = tmp_path / "s" / "manifest.json"
    manifest = json.loads(path.read_text())
    path.write_text(json.dumps({**manifest, "random_stream": "0" * 64, "torch": "1.0"}))
    with pytest.raises(StoreMismatchError, match=r"made under torch 1\.0, whose random stream"):
        FeatureStore.open(tmp_path / "s", {"k": 1})
    del manifest["random_stream"], manifest["torch"]  # a store made before they were recorded
    path.write_text(json.dumps(manifest))
    FeatureStore.open(tmp_path / "s", {"k": 1})  # opens, unchecked


def test_the_random_stream_digest_is_stable_and_follows_the_draws(monkeypatch) -> None:
    first = random_stream_digest()
    assert random_stream_digest() == first and len(first) == 64
    drawn = torch.randn
    monkeypatch.setattr(torch, "randn", lambda *a, **k: drawn(*a, **k) + 1)  # another stream
    assert random_stream_digest() != first


def test_checkpoint_fingerprint_mismatch_is_refused(reference: FeatureStore) -> None:
    with pytest.raises(StoreMismatchError, match="'c0' .* aaaaaaaa….* bbbbbbbb…"):
        reference.register_checkpoint("c0", "b" * 64)
    reference.register_checkpoint("c0", MODEL_FINGERPRINT)  # idempotent


def test_split_mismatch_is_refused(reference: FeatureStore) -> None:
    with pytest.raises(StoreMismatchError, match="with 12 examples .* but 13 examples"):
        reference.declare_split("train", 13, DATA_FINGERPRINT)
    with pytest.raises(StoreMismatchError, match="eeeeeeee…"):
        reference.declare_split("train", SIZE, "e" * 64)


def test_missing_shard_names_the_gap(tmp_path: Path) -> None:
    store = _store(tmp_path)
    for index in (0, 1, 3):
        _write(store, index)
    with pytest.raises(IncompleteStoreError, match=r"rows \[6, 9\) are missing .*3 complete"):
        store.load("c0", "train")
    with pytest.raises(IncompleteStoreError):
        store.iter_rows("c0", "train")


def test_verify_detects_corruption_and_rewrite_repairs_it(reference: FeatureStore) -> None:
    path = _shard_dir(reference) / "000001.features.npy"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    assert not np.array_equal(reference.load("c0", "train"), FEATURES)
    with pytest.raises(CorruptShardError, match="000001.features.npy"):
        reference.load("c0", "train", verify=True)
    _write(reference, 1)
    _assert_bitwise_equal(reference.load("c0", "train", verify=True), FEATURES)


@pytest.mark.parametrize("cut", [-8, -40, 10, None])
def test_a_truncated_or_padded_data_file_is_corrupt_and_rewrite_repairs_it(
    reference: FeatureStore, cut: int | None
) -> None:
    # numpy's own ValueError / EOFError escaped without naming the file; padding was read
    path = _shard_dir(reference) / "000001.features.npy"
    whole = path.read_bytes()
    path.write_bytes(whole + b"\0" * 12 if cut is None else whole[:cut])
    for read in (reference.load, lambda *key: list(reference.iter_rows(*key))):
        with pytest.raises(CorruptShardError, match="000001.features.npy"):
            read("c0", "train")
    _write(reference, 1)
    _assert_bitwise_equal(reference.load("c0", "train"), FEATURES)


def test_non_finite_values_are_refused_with_global_row(tmp_path: Path) -> None:
    store = _store(tmp_path)
    features = FEATURES[3:6].copy()
    features[1, 2] = np.nan
    with pytest.raises(ValueError, match="'features' has a non-finite value .* row 4"):
        store.write_shard("c0", "train", 1, 3, {"features": features})
    assert not store.has_shard("c0", "train", 1)


def test_leftovers_of_a_killed_writer_are_ignored(tmp_path: Path) -> None:
    store = _store(tmp_path)
    _write(store, 0)
    directory = _shard_dir(store)
    (directory / ".000001.json.k1ll3d.tmp").write_bytes(b'{"start": 3, "st')
    (directory / "000001.features.npy").write_bytes(b"half a file")
    (tmp_path / ".manifest.json.k1ll3d.tmp").write_bytes(b"{")
    store = FeatureStore.open(tmp_path, CONFIG)
    assert not store.has_shard("c0", "train", 1)
    assert [info.index for info in store.shards("c0", "train")] == [0]
    with pytest.raises(IncompleteStoreError, match=r"rows \[3, 12\) are missing"):
        store.load("c0", "train")
    for index in (1, 2, 3):
        _write(store, index)
    _assert_bitwise_equal(store.load("c0", "train", verify=True), FEATURES)


def test_concurrent_writers_match_a_single_writer(tmp_path, reference) -> None:
    root = str(tmp_path / "concurrent")
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        pool.starmap(_write_in_process, [(root, [0, 2]), (root, [3, 1])])
    store = FeatureStore.open(root, CONFIG)
    _assert_bitwise_equal(store.load("c0", "train", verify=True), reference.load("c0", "train"))
    assert not [name for name in os.listdir(_shard_dir(store)) if name.endswith(".tmp")]


def test_merge_of_disjoint_stores_equals_a_single_store(tmp_path, reference) -> None:
    first, second = _store(tmp_path / "first"), _store(tmp_path / "second")
    _write(first, 0)
    _write(first, 2)
    _write(second, 1)
    _write(second, 3)
    merged = FeatureStore.open(tmp_path / "merged", CONFIG)
    assert merged.merge_from(first.root) == 2 and merged.merge_from(second.root) == 2
    assert merged.merge_from(second.root) == 0
    assert merged.checkpoints() == ["c0"] and merged.splits() == {"train": SIZE}
    for name in ("features", "out_to_loss"):
        expected = reference.load("c0", "train", name)
        _assert_bitwise_equal(merged.load("c0", "train", name, verify=True), expected)


def test_merge_refuses_other_config_and_conflicting_shards(tmp_path, reference) -> None:
    other = _store(tmp_path / "other", {**CONFIG, "task": "regression"})
    with pytest.raises(StoreMismatchError, match="'task': store has 'regression'"):
        reference.merge_from(other.root)
    conflicting = _store(tmp_path / "conflicting")
    conflicting.write_shard("c0", "train", 2, 6, {"features": FEATURES[6:9] * 2})
    with pytest.raises(StoreMismatchError, match="shard 2"):
        reference.merge_from(conflicting.root)


def test_merge_refuses_a_store_of_another_dtype_and_carries_the_record(tmp_path) -> None:
    """The dtype record was ignored: float16 shards joined a float32 store, and a merged store
    recorded no dtype."""
    half = _store(tmp_path / "half")
    half.keep_array_dtype("features", "<f2")
    half.write_shard("c0", "train", 0, 0, {"features": FEATURES[:6].astype(np.float16)})
    full = _store(tmp_path / "full")
    full.keep_array_dtype("features", "<f4")
    with pytest.raises(
        StoreMismatchError, match=r"keeps array 'features' as float16, but .* keeps it as float32"
    ):
        full.merge_from(half.root)
    assert not _shard_dir(full).exists()
    merged = FeatureStore.open(tmp_path / "merged", CONFIG)
    assert merged.merge_from(half.root) == 1
    record = json.loads((merged.root / "dtypes" / "features.json").read_text())
    assert record == {"array": "features", "dtype": "<f2"}


@pytest.mark.parametrize("name", ["", "..", "../escape", "a/b", ".hidden", "has space", "ü"])
def test_invalid_names_are_refused(tmp_path: Path, name: str) -> None:
    store = _store(tmp_path)
    with pytest.raises(ValueError, match="is not valid"):
        store.register_checkpoint(name, MODEL_FINGERPRINT)
    with pytest.raises(ValueError, match="is not valid"):
        store.declare_split(name, SIZE, DATA_FINGERPRINT)
    with pytest.raises(ValueError, match="is not valid"):
        store.write_shard("c0", "train", 0, 0, {name: FEATURES[:3]})
    assert sorted(os.listdir(tmp_path)) == ["checkpoints", "manifest.json", "splits"]


def test_bad_writes_and_non_store_directories_are_refused(tmp_path: Path) -> None:
    store = _store(tmp_path / "store")
    with pytest.raises(ValueError, match="split 'test' is not declared"):
        store.write_shard("c0", "test", 0, 0, {"features": FEATURES[:3]})
    with pytest.raises(ValueError, match=r"rows \[10, 13\)"):
        store.write_shard("c0", "train", 0, 10, {"features": FEATURES[:3]})
    with pytest.raises(ValueError, match="equal row counts"):
        store.write_shard("c0", "train", 0, 0, {"features": FEATURES[:3], "w": OUT_TO_LOSS[:2]})
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("not a store")
    with pytest.raises(ValueError, match="not a feature store"):
        FeatureStore.open(tmp_path / "notes", CONFIG)


def test_negative_shard_indices_are_refused_before_anything_is_written(tmp_path: Path) -> None:
    store = _store(tmp_path / "store")
    with pytest.raises(ValueError, match="shard index must be non-negative, got -1"):
        store.write_shard("c0", "train", -1, 0, {"features": FEATURES})
    with pytest.raises(ValueError, match="shard index must be non-negative, got -1"):
        store.has_shard("c0", "train", -1)
    assert not (_shard_dir(store)).exists()
    assert store.shards("c0", "train") == []


def test_shard_missing_a_data_file_is_incomplete_until_rewritten(reference: FeatureStore) -> None:
    (_shard_dir(reference) / "000002.out_to_loss.npy").unlink()
    assert not reference.has_shard("c0", "train", 2)
    with pytest.raises(IncompleteStoreError, match=r"rows \[6, 9\) are missing"):
        reference.load("c0", "train", "out_to_loss")
    _write(reference, 2)
    _assert_bitwise_equal(reference.load("c0", "train", "out_to_loss", verify=True), OUT_TO_LOSS)


def test_bfloat16_arrays_round_trip_as_float32(tmp_path: Path) -> None:
    """Kept as raw 16-bit words (numpy has no bfloat16), loaded back exactly as float32."""
    store = _store(tmp_path)
    values = torch.from_numpy(FEATURES).to(torch.bfloat16)
    for index, (start, stop) in enumerate(RANGES):
        store.write_shard("c0", "train", index, start, {"features": values[start:stop]})
    expected = values.float().numpy()
    _assert_bitwise_equal(store.load("c0", "train", verify=True), expected)
    blocks = np.concatenate([block for _, block in store.iter_rows("c0", "train")])
    _assert_bitwise_equal(blocks, expected)
    assert np.load(_shard_dir(store) / "000000.features.npy").dtype == np.uint16
    assert store.shards("c0", "train")[0].arrays["features"] == ((3, 3), "bfloat16")


def test_bfloat16_shards_refuse_non_finite_values_and_float32_neighbours(tmp_path: Path) -> None:
    store = _store(tmp_path)
    bad = torch.from_numpy(FEATURES[:3]).to(torch.bfloat16)
    bad[1, 2] = float("inf")
    with pytest.raises(ValueError, match="non-finite value .* at row 1"):
        store.write_shard("c0", "train", 0, 0, {"features": bad})
    store.write_shard("c0", "train", 0, 0, {"features": torch.from_numpy(FEATURES[:6]).bfloat16()})
    store.write_shard("c0", "train", 1, 6, {"features": FEATURES[6:]})
    with pytest.raises(StoreMismatchError, match="differ"):
        store.load("c0", "train")


def test_an_arrays_dtype_is_kept_from_its_first_record(tmp_path: Path) -> None:
    """A store recorded no dtype: shards of another dtype joined it, and a reader refused the
    mixed store only then."""
    store = _store(tmp_path)
    assert store.array_dtype("features") is None
    store.keep_array_dtype("features", "bfloat16")
    store.keep_array_dtype("features", "bfloat16")  # the same again: accepted
    reopened = FeatureStore.open(tmp_path, CONFIG)
    assert reopened.array_dtype("features") == "bfloat16"
    with pytest.raises(StoreMismatchError, match="keeps array 'features' as bfloat16, not float32"):
        reopened.keep_array_dtype("features", "<f4")
    assert reopened.array_dtype("out_to_loss") is None  # recorded per array


def test_a_store_from_before_dtype_records_keeps_the_dtype_of_its_shards(reference) -> None:
    assert not (reference.root / "dtypes").exists()
    assert reference.array_dtype("features") == "<f4"
    assert reference.array_dtype("out_to_loss") == "<f8"
    with pytest.raises(StoreMismatchError, match="keeps array 'features' as float32, not float16"):
        reference.keep_array_dtype("features", "<f2")
    reference.keep_array_dtype("features", "<f4")
    assert (reference.root / "dtypes" / "features.json").is_file()


def test_a_store_whose_shards_mix_dtypes_names_them(tmp_path: Path) -> None:
    store = _store(tmp_path)
    store.write_shard("c0", "train", 0, 0, {"features": torch.from_numpy(FEATURES[:6]).bfloat16()})
    store.write_shard("c0", "train", 1, 6, {"features": FEATURES[6:]})
    with pytest.raises(StoreMismatchError, match=r"several dtypes \(bfloat16, float32\)"):
        store.array_dtype("features")
    with pytest.raises(StoreMismatchError, match="storage_dtype"):
        store.load("c0", "train")


def test_the_fingerprint_follows_what_decides_the_features_not_the_path(tmp_path: Path) -> None:
    first, elsewhere = _store(tmp_path / "a"), _store(tmp_path / "b")
    assert first.fingerprint() == elsewhere.fingerprint()  # same config, models and data
    other_model = FeatureStore.open(tmp_path / "c", CONFIG)
    other_model.declare_split("train", SIZE, DATA_FINGERPRINT)
    other_model.register_checkpoint("c0", "b" * 64)
    other_data = FeatureStore.open(tmp_path / "d", CONFIG)
    other_data.declare_split("train", SIZE, "e" * 64)
    other_data.register_checkpoint("c0", MODEL_FINGERPRINT)
    other_config = _store(tmp_path / "e", {**CONFIG, "projector": {"dim": 4, "seed": 0}})
    prints = {store.fingerprint() for store in (first, other_model, other_data, other_config)}
    assert len(prints) == 4
    first.register_checkpoint("c1", MODEL_FINGERPRINT)  # a checkpoint added later counts
    assert first.fingerprint() != elsewhere.fingerprint()


def test_other_differentiated_parameters_are_refused_and_merged_on(tmp_path: Path) -> None:
    store = FeatureStore.open(tmp_path / "a", CONFIG)
    store.register_checkpoint("c0", MODEL_FINGERPRINT, ["w", "b"])
    store.register_checkpoint("c0", MODEL_FINGERPRINT, ["w", "b"])  # idempotent
    store.register_checkpoint("c0", MODEL_FINGERPRINT)  # not said: not checked
    with pytest.raises(
        StoreMismatchError, match=r"respect to 2 parameters; .* has 1 \(without \['b'\]\)"
    ):
        store.register_checkpoint("c0", MODEL_FINGERPRINT, ["w"])
    merged = FeatureStore.open(tmp_path / "merged", CONFIG)
    merged.merge_from(store.root)
    with pytest.raises(StoreMismatchError, match=r"also with \['v'\]"):
        merged.register_checkpoint("c0", MODEL_FINGERPRINT, ["w", "b", "v"])
