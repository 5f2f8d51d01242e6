import json
import re
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from tda.features import (
    GradientFeaturizer,
    KroneckerFeaturizer,
    featurize,
    open_feature_store,
    shard_count,
)
from tda.grads import NonFiniteGradientError, per_sample_gradients
from tda.models import MLP, build_model
from tda.projection import DenseProjector, IdentityProjector, derive_seed
from tda.store import StoreMismatchError
from tda.task import ClassificationTask, ClassLogit


@dataclass(frozen=True)
class CountingFeaturizer:
    """Wraps a featurizer and records how many shards it computed (to test resume)."""

    inner: GradientFeaturizer
    calls: list

    @property
    def seed(self):
        return self.inner.seed

    def with_seed(self, seed):
        return CountingFeaturizer(self.inner.with_seed(seed), self.calls)

    def config(self):
        return self.inner.config()

    def __call__(self, model, inputs, targets):
        self.calls.append(len(inputs))
        return self.inner(model, inputs, targets)


def test_identity_features_are_the_per_sample_gradients(tmp_path, tiny_mlp, tiny_data):
    featurizer = GradientFeaturizer(IdentityProjector())
    store = open_feature_store(tmp_path, featurizer, shard_size=6)
    featurize(tiny_mlp, {"train": tiny_data}, featurizer, store, checkpoint_id="c0", progress=False)
    expected = per_sample_gradients(
        tiny_mlp, ClassificationTask(), tiny_data.inputs, tiny_data.targets
    )
    np.testing.assert_allclose(store.load("c0", "train"), expected.numpy(), rtol=1e-12, atol=1e-14)
    assert store.load("c0", "train", "out_to_loss").shape == (20,)


def test_killed_run_resumes_without_redoing_shards_and_gives_identical_features(
    tmp_path, tiny_mlp, tiny_data
):
    calls = []
    featurizer = CountingFeaturizer(GradientFeaturizer(DenseProjector(16, seed=4)), calls)
    reference = open_feature_store(tmp_path / "one", featurizer.inner, shard_size=6)
    featurize(
        tiny_mlp,
        {"train": tiny_data},
        featurizer.inner,
        reference,
        checkpoint_id="c",
        progress=False,
    )

    store = open_feature_store(tmp_path / "two", featurizer.inner, shard_size=6)
    featurize(
        tiny_mlp,
        {"train": tiny_data},
        featurizer,
        store,
        checkpoint_id="c",
        shards={"train": [0, 2]},
        progress=False,
    )
    assert calls == [6, 6]  # "killed" after two of four shards
    reopened = open_feature_store(tmp_path / "two", featurizer.inner, shard_size=6)
    written = featurize(
        tiny_mlp, {"train": tiny_data}, featurizer, reopened, checkpoint_id="c", progress=False
    )
    assert written == 2 and calls == [6, 6, 6, 2]
    np.testing.assert_array_equal(reopened.load("c", "train"), reference.load("c", "train"))


def test_projection_seed_is_derived_from_the_checkpoint(tmp_path, tiny_mlp, tiny_data):
    featurizer = GradientFeaturizer(DenseProjector(16, seed=4))
    store = open_feature_store(tmp_path, featurizer, shard_size=32)
    for checkpoint in ("a", "b"):
        featurize(
            tiny_mlp,
            {"train": tiny_data},
            featurizer,
            store,
            checkpoint_id=checkpoint,
            progress=False,
        )
    expected = featurizer.with_seed(derive_seed(4, "a"))(
        tiny_mlp, tiny_data.inputs, tiny_data.targets
    )
    np.testing.assert_array_equal(store.load("a", "train"), expected.features.numpy())
    assert not np.allclose(store.load("a", "train"), store.load("b", "train"))


def test_store_of_another_model_or_featurizer_is_refused(tmp_path, tiny_mlp, tiny_data):
    featurizer = GradientFeaturizer(DenseProjector(16))
    store = open_feature_store(tmp_path, featurizer)
    featurize(tiny_mlp, {"train": tiny_data}, featurizer, store, checkpoint_id="c0", progress=False)
    other_model = build_model(lambda: MLP(6, (8,), 3), seed=1, dtype=torch.float64)
    with pytest.raises(StoreMismatchError, match="c0"):
        featurize(
            other_model,
            {"train": tiny_data},
            featurizer,
            store,
            checkpoint_id="c0",
            progress=False,
        )
    with pytest.raises(StoreMismatchError, match="projector.dim"):
        open_feature_store(tmp_path, GradientFeaturizer(DenseProjector(32)))


def test_featurizer_other_than_the_stores_is_refused_before_writing(tmp_path, tiny_mlp, tiny_data):
    store = open_feature_store(tmp_path, GradientFeaturizer(DenseProjector(16, seed=0)))
    other = GradientFeaturizer(DenseProjector(16, seed=1))  # same width, another matrix
    with pytest.raises(StoreMismatchError, match="'projector': store has"):
        featurize(tiny_mlp, {"train": tiny_data}, other, store, checkpoint_id="c", progress=False)
    assert store.checkpoints() == [] and store.splits() == {}


@pytest.mark.parametrize("featurizer_class", ["gradient", "kronecker"])
def test_stores_of_class_logit_tasks_are_keyed_by_the_class(
    tmp_path, tiny_mlp, tiny_data, featurizer_class
):
    def make(task):
        if featurizer_class == "gradient":
            return GradientFeaturizer(IdentityProjector(), task=task)
        return KroneckerFeaturizer(dim=8, task=task)

    first = make(ClassLogit(0))
    store = open_feature_store(tmp_path, first)
    featurize(tiny_mlp, {"q": tiny_data}, first, store, checkpoint_id="c", progress=False)
    assert first.config()["task"] == "ClassLogit(class_index=0)"
    assert make(ClassificationTask()).config()["task"] == "ClassificationTask"
    with pytest.raises(StoreMismatchError, match="task"):  # would reuse class 0's features
        open_feature_store(tmp_path, make(ClassLogit(2)))


def test_bad_requests_give_clear_errors(tmp_path, tiny_mlp, tiny_data):
    featurizer = GradientFeaturizer(DenseProjector(16))
    store = open_feature_store(tmp_path, featurizer, shard_size=8)
    with pytest.raises(ValueError, match="no examples"):
        featurize(
            tiny_mlp,
            {"x": tiny_data.subset([])},
            featurizer,
            store,
            checkpoint_id="c",
            progress=False,
        )
    with pytest.raises(ValueError, match="out of range"):
        featurize(
            tiny_mlp,
            {"train": tiny_data},
            featurizer,
            store,
            checkpoint_id="c",
            shards={"train": [3]},
            progress=False,
        )
    assert shard_count(20, 8) == 3
    with pytest.raises(ValueError, match="shard_size"):
        open_feature_store(tmp_path / "other", featurizer, shard_size=0)


def test_shards_for_a_split_that_is_not_featurized_are_refused_before_any_work(
    tmp_path, tiny_mlp, tiny_data
):
    calls = []
    featurizer = CountingFeaturizer(GradientFeaturizer(DenseProjector(16)), calls)
    store = open_feature_store(tmp_path, featurizer, shard_size=8)
    with pytest.raises(ValueError, match=r"shards name splits \['tain'\] that are not among"):
        featurize(
            tiny_mlp,
            {"train": tiny_data},
            featurizer,
            store,
            checkpoint_id="c",
            shards={"tain": [0]},  # misspelt: would compute all 3 shards of "train"
            progress=False,
        )
    assert calls == [] and store.checkpoints() == []


@pytest.mark.parametrize(
    ("dtype", "loaded", "rtol"),
    [(torch.float16, np.float16, 2e-3), (torch.bfloat16, np.float32, 1e-2)],
)
def test_half_precision_storage(tmp_path, tiny_mlp, tiny_data, dtype, loaded, rtol):
    featurizer = GradientFeaturizer(DenseProjector(16))
    store = open_feature_store(tmp_path, featurizer)
    featurize(
        tiny_mlp,
        {"train": tiny_data},
        featurizer,
        store,
        checkpoint_id="c",
        storage_dtype=dtype,
        progress=False,
    )
    full = featurizer.with_seed(derive_seed(0, "c"))(tiny_mlp, tiny_data.inputs, tiny_data.targets)
    stored = store.load("c", "train")
    assert stored.dtype == loaded
    np.testing.assert_allclose(stored, full.features.numpy(), rtol=rtol, atol=1e-4)
    if dtype == torch.bfloat16:  # exactly the bfloat16 rounding of the features
        np.testing.assert_array_equal(stored, full.features.to(dtype).float().numpy())


@pytest.mark.parametrize("complete", [True, False])
def test_the_models_dtype_on_a_store_of_another_is_refused_before_computing(
    tmp_path, tiny_mlp, tiny_data, complete
):
    """storage_dtype=None on a complete float16 store "wrote 0 shards" without a word (the
    float64 features differ from the store's record); on an incomplete one it computed a shard
    before refusing it."""
    calls = []
    featurizer = CountingFeaturizer(GradientFeaturizer(DenseProjector(16)), calls)
    store = open_feature_store(tmp_path, featurizer, shard_size=8)

    def store_as(dtype, shards=None):
        options = {"checkpoint_id": "c", "shards": shards, "storage_dtype": dtype}
        featurize(tiny_mlp, {"train": tiny_data}, featurizer, store, **options, progress=False)

    store_as(torch.float16, None if complete else {"train": [0]})
    calls.clear()
    with pytest.raises(
        StoreMismatchError,
        match=r"keeps its features as float16 .*storage_dtype=null would write float64; "
        r"featurize with storage_dtype=float16",
    ):
        store_as(None)
    assert calls == [] and store.array_dtype("features") == "<f2"


def test_the_dtype_record_is_read_as_often_for_many_shards_as_for_one(
    tmp_path, tiny_mlp, tiny_data, monkeypatch
):
    """It was read two or three times per shard written (checked twice, then recorded)."""

    def reads(shard_size):
        featurizer = GradientFeaturizer(DenseProjector(16))
        store = open_feature_store(tmp_path / str(shard_size), featurizer, shard_size=shard_size)
        counted, read = [], store.array_dtype
        monkeypatch.setattr(store, "array_dtype", lambda name: counted.append(name) or read(name))
        splits = {"train": tiny_data}
        featurize(tiny_mlp, splits, featurizer, store, checkpoint_id="c", progress=False)
        assert len(store.shards("c", "train")) == shard_count(len(tiny_data), shard_size)
        return len(counted)

    assert reads(shard_size=2) == reads(shard_size=20)


def test_features_beyond_float16_are_refused_not_stored_as_infinity(tmp_path, tiny_mlp, tiny_data):
    featurizer = GradientFeaturizer(IdentityProjector())
    store = open_feature_store(tmp_path, featurizer, shard_size=8)
    large = tiny_data.subset(range(8))
    large = type(large)(large.inputs * 1e6, large.targets)  # first-layer gradients ~ 1e6

    def store_as(dtype):
        splits = {"train": large}
        options = {"checkpoint_id": "c", "storage_dtype": dtype, "progress": False}
        featurize(tiny_mlp, splits, featurizer, store, **options)

    with pytest.raises(ValueError, match="shard 0 of split 'train' has features up to .*float16"):
        store_as(torch.float16)
    assert not store.has_shard("c", "train", 0)
    store_as(torch.bfloat16)
    assert np.isfinite(store.load("c", "train")).all()


@pytest.mark.parametrize("featurizer_class", ["gradient", "kronecker"])
def test_a_bfloat16_model_on_bfloat16_data_is_featurized(
    tmp_path, tiny_mlp, tiny_data, featurizer_class
):
    model = tiny_mlp.to(torch.bfloat16)  # its out_to_loss is bfloat16 too, which numpy lacks
    data = type(tiny_data)(tiny_data.inputs.bfloat16(), tiny_data.targets)
    featurizer = (
        GradientFeaturizer(DenseProjector(16))
        if featurizer_class == "gradient"
        else KroneckerFeaturizer(dim=8)
    )
    store = open_feature_store(tmp_path, featurizer, shard_size=8)
    featurize(model, {"train": data}, featurizer, store, checkpoint_id="c", progress=False)
    full = featurizer.with_seed(derive_seed(0, "c"))(model, data.inputs, data.targets)
    assert full.out_to_loss.dtype == torch.bfloat16  # kept as raw words, loaded as float32
    for name, computed in (("features", full.features), ("out_to_loss", full.out_to_loss)):
        np.testing.assert_array_equal(store.load("c", "train", name), computed.float().numpy())


def test_raw_array_splits_are_featurized_as_their_examples(tmp_path, tiny_mlp, tiny_data):
    """(X, y) arrays failed: "'tuple' object has no attribute 'fingerprint'"."""
    featurizer = GradientFeaturizer(DenseProjector(16))
    store = open_feature_store(tmp_path, featurizer, shard_size=8)
    raw = {"train": (tiny_data.inputs.numpy(), tiny_data.targets.numpy())}
    assert featurize(tiny_mlp, raw, featurizer, store, checkpoint_id="c0", progress=False) == 3
    again = {"train": tiny_data}  # the same data: accepted, and nothing left to compute
    assert featurize(tiny_mlp, again, featurizer, store, checkpoint_id="c0", progress=False) == 0
    expected = featurizer.with_seed(derive_seed(featurizer.seed, "c0"))(
        tiny_mlp, tiny_data.inputs, tiny_data.targets
    )
    np.testing.assert_array_equal(store.load("c0", "train"), expected.features.numpy())


@pytest.mark.parametrize(
    "featurizer", [GradientFeaturizer(DenseProjector(16)), KroneckerFeaturizer(dim=16)]
)
def test_a_split_of_another_float_dtype_is_refused_before_writing(
    tmp_path, tiny_mlp, tiny_data, featurizer
):
    """The train split was written, then the test split failed with torch's "mat1 and mat2
    must have the same dtype" (after a warning that vmap could not trace the model)."""
    store = open_feature_store(tmp_path, featurizer)
    splits = {"train": tiny_data, "test": tiny_data.to(dtype=torch.float32)}
    with pytest.raises(ValueError, match="torch.float64 but the inputs are torch.float32"):
        featurize(tiny_mlp, splits, featurizer, store, checkpoint_id="c0", progress=False)
    assert store.checkpoints() == []
    with pytest.raises(ValueError, match="torch.float64 but the inputs are torch.float32"):
        featurizer(tiny_mlp, splits["test"].inputs, splits["test"].targets)


@pytest.mark.parametrize("featurizer_class", ["gradient", "kronecker"])
@pytest.mark.parametrize("frozen", [("0.weight", "0.bias"), ("0.bias",)])
def test_a_resume_with_another_set_of_trainable_parameters_is_refused(
    tmp_path, tiny_mlp, tiny_data, featurizer_class, frozen
):
    """The same weights with a layer (or a bias: Kronecker's bias column) frozen were accepted,
    and the remaining shards were written from the gradient of another set of parameters."""
    featurizer = (
        GradientFeaturizer(DenseProjector(16))
        if featurizer_class == "gradient"
        else KroneckerFeaturizer(dim=16)
    )
    store = open_feature_store(tmp_path, featurizer, shard_size=10)
    options = {"checkpoint_id": "c", "progress": False}
    featurize(tiny_mlp, {"train": tiny_data}, featurizer, store, shards={"train": [0]}, **options)
    for name in frozen:
        tiny_mlp.get_parameter(name).requires_grad_(False)
    with pytest.raises(
        StoreMismatchError,
        match=rf"checkpoint 'c' .* parameters; the model given has .* \(without "
        rf"{re.escape(str(list(frozen)))}\)",
    ):
        featurize(tiny_mlp, {"train": tiny_data}, featurizer, store, **options)
    assert [info.index for info in store.shards("c", "train")] == [0]


def test_a_store_from_before_the_parameter_record_still_resumes(tmp_path, tiny_mlp, tiny_data):
    """A checkpoint recorded without the differentiated parameters opens and resumes (they are
    not known, so not checked)."""
    featurizer = GradientFeaturizer(DenseProjector(16))
    store = open_feature_store(tmp_path, featurizer, shard_size=10)
    options = {"checkpoint_id": "c", "progress": False}
    featurize(tiny_mlp, {"train": tiny_data}, featurizer, store, shards={"train": [0]}, **options)
    record_path = tmp_path / "checkpoints" / "c.json"
    record = json.loads(record_path.read_text())
    assert record["parameters"] == ["0.weight", "0.bias", "2.weight", "2.bias"]
    del record["parameters"]  # as a store from before
    record_path.write_text(json.dumps(record))
    reopened = open_feature_store(tmp_path, featurizer, shard_size=10)
    assert featurize(tiny_mlp, {"train": tiny_data}, featurizer, reopened, **options) == 1


@pytest.mark.parametrize("featurizer_class", ["gradient", "kronecker"])
def test_a_non_finite_gradient_names_the_example_in_its_split(
    tmp_path, tiny_mlp, tiny_data, featurizer_class
):
    """It named the row within the shard ("example 3"), not the example."""
    featurizer = (
        GradientFeaturizer(IdentityProjector())
        if featurizer_class == "gradient"
        else KroneckerFeaturizer(dim=16)
    )
    inputs = tiny_data.inputs.clone()
    inputs[13, 0] = float("nan")  # row 3 of shard 2
    data = {"train": tiny_data.subset(range(5)), "test": type(tiny_data)(inputs, tiny_data.targets)}
    store = open_feature_store(tmp_path, featurizer, shard_size=5)
    with pytest.raises(
        NonFiniteGradientError, match=r"gradient of the output for example 13 of split 'test' is"
    ) as raised:
        featurize(tiny_mlp, data, featurizer, store, checkpoint_id="c", progress=False)
    assert raised.value.example == 13


@pytest.mark.parametrize("dtype", [torch.int32, torch.bool, torch.float8_e4m3fn, torch.complex64])
def test_a_storage_dtype_other_than_a_float_is_refused_before_any_work(
    tmp_path, tiny_mlp, tiny_data, dtype
):
    """int32 and bool were accepted and truncated every feature (to 0 and False)."""
    featurizer = GradientFeaturizer(DenseProjector(16))
    store = open_feature_store(tmp_path, featurizer)
    with pytest.raises(
        ValueError,
        match=r"storage_dtype must be one of torch.float16, torch.bfloat16, torch.float32, "
        rf"torch.float64, got {dtype}",
    ):
        featurize(
            tiny_mlp,
            {"train": tiny_data},
            featurizer,
            store,
            checkpoint_id="c",
            storage_dtype=dtype,
            progress=False,
        )
    assert store.checkpoints() == []


def test_other_data_under_a_later_split_is_refused_before_any_work(tmp_path, tiny_mlp, tiny_data):
    """Every shard of the earlier splits was computed and written before the refusal."""
    calls = []
    featurizer = CountingFeaturizer(GradientFeaturizer(DenseProjector(16)), calls)
    store = open_feature_store(tmp_path, featurizer, shard_size=8)
    queries = tiny_data.subset(range(10))
    featurize(tiny_mlp, {"query": queries}, featurizer, store, checkpoint_id="a", progress=False)
    calls.clear()
    splits = {"train": tiny_data, "query": tiny_data.subset(range(5))}  # other queries
    with pytest.raises(StoreMismatchError, match="declares split 'query' with 10 examples"):
        featurize(tiny_mlp, splits, featurizer, store, checkpoint_id="b", progress=False)
    assert calls == [] and store.shards("b", "train") == []


def test_a_shard_index_out_of_range_in_a_later_split_is_refused_before_any_work(
    tmp_path, tiny_mlp, tiny_data
):
    calls = []
    featurizer = CountingFeaturizer(GradientFeaturizer(DenseProjector(16)), calls)
    store = open_feature_store(tmp_path, featurizer, shard_size=8)
    splits = {"train": tiny_data, "test": tiny_data.subset(range(5))}
    with pytest.raises(ValueError, match=r"shard indices \[1\] are out of range: split 'test'"):
        featurize(
            tiny_mlp,
            splits,
            featurizer,
            store,
            checkpoint_id="c",
            shards={"test": [1]},
            progress=False,
        )
    assert calls == []


def test_a_single_shard_index_is_taken_and_a_string_refused(tmp_path, tiny_mlp, tiny_data):
    """An int gave "'int' object is not iterable"; "12" computed shards 1 and 2."""
    featurizer = GradientFeaturizer(DenseProjector(16))
    store = open_feature_store(tmp_path, featurizer, shard_size=2)

    def compute(shards):
        splits = {"train": tiny_data}
        options = {"checkpoint_id": "c", "shards": {"train": shards}, "progress": False}
        return featurize(tiny_mlp, splits, featurizer, store, **options)

    assert compute(7) == 1
    assert [info.index for info in store.shards("c", "train")] == [7]
    for text in ("12", b"12"):
        with pytest.raises(ValueError, match=r"shards\['train'\] must be shard indices, got "):
            compute(text)
    assert [info.index for info in store.shards("c", "train")] == [7]
