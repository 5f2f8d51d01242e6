import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from tda.data import DataSplits, Examples, as_examples, load_digits, load_mnist1d
from tda.data.examples import check_input_dtype


def test_mnist1d_is_generated_offline_deterministically_with_requested_sizes():
    first, second = load_mnist1d(200, 50, seed=3), load_mnist1d(200, 50, seed=3)
    assert len(first.train) == 200 and len(first.test) == 50 and first.input_shape == (40,)
    assert first.train.fingerprint() == second.train.fingerprint()
    assert load_mnist1d(200, 50, seed=4).train.fingerprint() != first.train.fingerprint()
    assert set(first.train.targets.tolist()) == set(range(10))


@pytest.mark.parametrize(("n_train", "n_test"), [(29, 21), (13, 77), (57, 43)])
def test_mnist1d_gives_every_balanced_size_asked_for(n_train, n_test):
    # mnist1d splits at int(total * n_train / total), one short for these: they were refused
    splits = load_mnist1d(n_train, n_test, seed=0)
    assert (len(splits.train), len(splits.test)) == (n_train, n_test)
    whole = load_mnist1d(n_train + n_test - 10, 10, seed=0)
    together = torch.cat([splits.train.inputs, splits.test.inputs])
    assert torch.equal(together, torch.cat([whole.train.inputs, whole.test.inputs]))
    assert splits.train.targets.dtype == torch.int64


def test_mnist1d_leaves_global_random_state_alone():
    state = np.random.get_state()[1].copy()
    load_mnist1d(100, 10, seed=0)
    assert np.array_equal(np.random.get_state()[1], state)


def test_mnist1d_refuses_unbalanced_sizes():
    with pytest.raises(ValueError, match="divisible by 10"):
        load_mnist1d(101, 10)


def test_digits_binary_subset_relabels_classes():
    splits = load_digits(classes=(1, 7), seed=0)
    assert splits.num_classes == 2
    assert set(splits.train.targets.tolist()) == {0, 1}
    assert float(splits.train.inputs.max()) <= 1.0


@pytest.mark.parametrize("classes", [(1, 1, 7), (1, 12), ()])
def test_digits_refuse_repeated_or_unknown_classes(classes):
    # (1, 1, 7) would report 3 classes with labels {0, 2}; (1, 12) 2 classes with only label 0
    with pytest.raises(ValueError, match="classes must be distinct digits 0-9"):
        load_digits(classes=classes)


def test_digits_refuse_a_one_class_task():
    # every classification margin of a one-class model is +inf
    with pytest.raises(ValueError, match=r"classes=\(3,\) keep a single class: .* at least 2"):
        load_digits(classes=(3,))


@pytest.mark.parametrize(
    ("test_fraction", "classes", "empty"),
    [(0.0001, None, "no test"), (0.001, (1, 7), "no test"), (0.9999, (1, 7), "no training")],
)
def test_digits_refuse_a_test_fraction_that_empties_a_split(test_fraction, classes, empty):
    # 0.001 of the 361 ones and sevens rounded to 0 test examples, returned without a word
    with pytest.raises(ValueError, match=f"test_fraction {test_fraction} .* leaves {empty}"):
        load_digits(test_fraction=test_fraction, classes=classes)
    assert len(load_digits(test_fraction=0.001).test) == 2


def test_adapters_agree_for_dataset_loader_and_hugging_face():
    import datasets

    inputs = torch.arange(24, dtype=torch.float32).reshape(8, 3)
    targets = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    expected = Examples(inputs, targets)
    from_dataset = as_examples(TensorDataset(inputs, targets))
    from_loader = as_examples(DataLoader(TensorDataset(inputs, targets), batch_size=3))
    table = datasets.Dataset.from_dict({"x": inputs.numpy(), "label": targets.numpy()})
    from_hf = as_examples(table, input_column="x", target_column="label")
    from_arrays = as_examples((inputs.numpy(), targets.numpy()))  # scikit-learn's X, y
    from_tensors = as_examples((inputs, targets))
    for converted in (from_dataset, from_loader, from_hf, from_arrays, from_tensors):
        assert converted.fingerprint() == expected.fingerprint()
    with pytest.raises(ValueError, match="differ in length: 8 inputs, 7 targets"):
        as_examples((inputs, targets[:7]))
    pairs = ((inputs[0], targets[0]), (inputs[1], targets[1]))  # two (input, target) pairs
    assert as_examples(pairs).fingerprint() == expected.subset([0, 1]).fingerprint()
    with pytest.raises(ValueError, match="columns"):
        as_examples(table, input_column="pixels")
    with pytest.raises(ValueError, match="empty"):
        as_examples(TensorDataset(inputs[:0], targets[:0]))


def test_a_shuffling_or_dropping_loader_is_refused():
    """A shuffling loader gave another order (and fingerprint) on every read and moved the global
    random state; drop_last lost the last partial batch."""
    dataset = TensorDataset(torch.arange(20.0).reshape(10, 2), torch.arange(10) % 3)
    state = torch.random.get_rng_state()
    with pytest.raises(ValueError, match="draws examples with a RandomSampler"):
        as_examples(DataLoader(dataset, batch_size=4, shuffle=True))
    with pytest.raises(ValueError, match="drop_last=True"):
        as_examples(DataLoader(dataset, batch_size=4, drop_last=True))
    assert torch.equal(torch.random.get_rng_state(), state)
    assert len(as_examples(DataLoader(dataset, batch_size=4))) == 10


def test_fractional_or_text_targets_are_refused_by_every_adapter():
    import datasets

    inputs = torch.arange(12, dtype=torch.float32).reshape(4, 3)
    fractional = torch.tensor([0.0, 1.0, 2.7, 1.0])  # .long() read 2.7 as class 2
    table = datasets.Dataset.from_dict({"input": inputs.numpy(), "label": fractional.numpy()})
    for data in (
        TensorDataset(inputs, fractional),
        DataLoader(TensorDataset(inputs, fractional), batch_size=3),
        table,
        (inputs.numpy(), fractional.numpy()),
    ):
        with pytest.raises(ValueError, match="target 2.7.* of example 2 is not an integer class"):
            as_examples(data)
    text = datasets.Dataset.from_dict({"input": inputs.numpy(), "label": list("abab")})
    with pytest.raises(ValueError, match="targets must be integer class indices.*'a'"):
        as_examples(text)
    whole = as_examples(TensorDataset(inputs, torch.tensor([0.0, 1.0, 2.0, 1.0])))
    assert whole.targets.dtype == torch.int64 and whole.targets.tolist() == [0, 1, 2, 1]


@pytest.mark.parametrize("bad", [float("inf"), float("-inf"), float("nan")])
def test_non_finite_float_targets_are_refused_not_wrapped_into_a_class(bad):
    inputs = np.zeros((3, 2), np.float32)
    with pytest.raises(ValueError, match=f"target {bad} of example 2 is not an integer class"):
        as_examples((inputs, np.array([0.0, 1.0, bad])))


def test_dataset_tensors_numpy_cannot_hold_keep_their_dtype():
    # bfloat16 and tensors that require grad went through numpy and failed
    inputs = torch.linspace(-1, 1, 12).reshape(4, 3)
    targets = torch.tensor([0, 1, 2, 1])
    half = as_examples(TensorDataset(inputs.bfloat16(), targets))
    assert half.inputs.dtype == torch.bfloat16 and torch.equal(half.inputs, inputs.bfloat16())
    tracked = as_examples(TensorDataset(inputs.clone().requires_grad_(), targets))
    assert not tracked.inputs.requires_grad and torch.equal(tracked.inputs, inputs)
    assert torch.equal(tracked.targets, targets)


def test_an_unbatched_loader_is_read_and_mapping_batches_are_refused_by_name():
    import datasets

    inputs = torch.arange(12, dtype=torch.float32).reshape(4, 3)
    targets = torch.tensor([0, 1, 2, 1])
    unbatched = as_examples(DataLoader(TensorDataset(inputs, targets), batch_size=None))
    assert unbatched.fingerprint() == Examples(inputs, targets).fingerprint()
    table = datasets.Dataset.from_dict({"input": inputs.numpy(), "label": targets.numpy()})
    with pytest.raises(ValueError, match=r"mapping with keys \['input', 'label'\]"):
        as_examples(DataLoader(table.with_format("torch"), batch_size=2))


def test_subset_by_indices_and_mask_and_range_check():
    data = Examples(torch.arange(5.0)[:, None], torch.arange(5))
    assert data.subset([4, 0]).targets.tolist() == [4, 0]
    assert data.subset(np.array([True, False, True, False, False])).targets.tolist() == [0, 2]
    with pytest.raises(ValueError, match="out of range"):
        data.subset([5])


def test_subset_names_the_offending_index_and_refuses_float_indices():
    data = Examples(torch.arange(5.0)[:, None], torch.arange(5))
    with pytest.raises(ValueError, match="index -1 is out of range for 5 examples"):
        data.subset([-1, 3])
    with pytest.raises(TypeError, match="indices must be integers or a boolean mask"):
        data.subset([0.7, 2.2])  # would be truncated to [0, 2]
    with pytest.raises(TypeError, match="torch.float32"):
        data.subset(torch.tensor([1.9]))
    assert len(data.subset([])) == 0
    assert data.subset(np.array([3, 1], dtype=np.int32)).targets.tolist() == [3, 1]
    with pytest.raises(ValueError, match=r"one-dimensional \(e.g. \[3\]\)"):
        data.subset(3)  # examples without their example axis


def test_x_y_as_a_list_pandas_or_read_only_arrays_convert_and_odd_items_are_named():
    """(DataFrame, Series), [X, y] and read-only arrays failed with 'too many values to unpack'
    or warned about non-writable arrays; rows without targets gave the same cryptic error."""
    import warnings

    import pandas

    inputs = np.arange(12.0).reshape(4, 3)
    targets = np.array([0, 1, 1, 0])
    expected = as_examples((inputs, targets)).fingerprint()
    frozen = inputs.copy()
    frozen.flags.writeable = False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for data in ([inputs, targets], (pandas.DataFrame(inputs), pandas.Series(targets)),
                     (frozen, targets)):  # fmt: skip
            assert as_examples(data).fingerprint() == expected
    with pytest.raises(ValueError, match="an item of list with 3 elements"):
        as_examples([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])


def test_examples_of_arrays_are_tensors_as_as_examples_reads_them():
    """Examples(X, y) of numpy arrays was kept as numpy: training failed later with
    "'numpy.ndarray' object has no attribute 'to'"."""
    import warnings

    inputs = np.arange(12.0, dtype=np.float32).reshape(4, 3)
    targets = np.array([0, 1, 1, 0], dtype=np.int32)
    frozen = inputs.copy()
    frozen.flags.writeable = False
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a read-only array is copied, not shared with a warning
        examples = Examples(frozen, targets)
    assert isinstance(examples.inputs, torch.Tensor) and examples.inputs.dtype == torch.float32
    assert examples.targets.dtype == torch.int64
    assert examples.fingerprint() == as_examples((inputs, targets)).fingerprint()
    assert examples.to(dtype=torch.float64).inputs.dtype == torch.float64
    regression = Examples(inputs, np.array([0.0, 0.5, 1.0, 0.0]))
    assert regression.targets.dtype == torch.float64  # as a float tensor of targets is kept


def test_examples_of_non_numeric_data_are_refused_naming_as_examples():
    with pytest.raises(TypeError, match="Examples takes tensors or numeric arrays.*as_examples"):
        Examples(["a", "b"], torch.tensor([0, 1]))


def test_a_float_dtype_mismatch_is_refused_naming_both_dtypes_and_the_fix():
    model = torch.nn.Linear(3, 2)  # float32
    fix = r"model.to\(torch.float64\).*tda.as_examples\(data\).to\(dtype=torch.float32\)"
    with pytest.raises(ValueError, match=f"torch.float32 but the inputs are torch.float64.*{fix}"):
        check_input_dtype(model, torch.zeros(2, 3, dtype=torch.float64))
    check_input_dtype(model, torch.zeros(2, 3))
    check_input_dtype(torch.nn.Embedding(5, 3).double(), torch.tensor([[1, 4]]))  # token ids
    check_input_dtype(torch.nn.ReLU(), torch.zeros(2, 3, dtype=torch.float64))  # no parameters


def test_data_splits_refuse_labels_outside_their_classes():
    """DataSplits(num_classes=2) with digit labels 0-9 was accepted, and a model built for
    splits.num_classes failed only at a training step (or scored NaN)."""
    inputs = torch.zeros(6, 3)
    binary = Examples(inputs, torch.tensor([0, 1, 1, 0, 1, 0]))
    digits = Examples(inputs, torch.tensor([0, 1, 9, 3, 1, 0]))
    assert DataSplits(train=binary, test=binary, num_classes=2).num_classes == 2
    with pytest.raises(
        ValueError,
        match=r"train label 9 of example 2 is outside the classes 0\.\.1 \(num_classes=2\)",
    ):
        DataSplits(train=digits, test=binary, num_classes=2)
    negative = Examples(inputs, torch.tensor([0, 1, 1, -1, 1, 0]))
    with pytest.raises(ValueError, match=r"test label -1 of example 3 is outside the classes"):
        DataSplits(train=binary, test=negative, num_classes=2)
    for count in (0, 2.0, True):
        with pytest.raises(ValueError, match="num_classes must be an integer >= 1"):
            DataSplits(train=binary, test=binary, num_classes=count)


def test_data_splits_of_other_targets_keep_their_meaning_of_num_classes():
    """A language model's [n, T] tokens (num_classes is its vocabulary, -100 ignored positions)
    and a regression's float targets are not class labels."""
    tokens = Examples(torch.zeros(4, 5, dtype=torch.long), torch.full((4, 5), -100))
    assert DataSplits(train=tokens, test=tokens, num_classes=128).num_classes == 128
    values = Examples(torch.zeros(4, 3), torch.tensor([0.5, 7.0, -2.0, 3.0]))
    assert DataSplits(train=values, test=values, num_classes=1).input_shape == (3,)
    assert load_digits(classes=(1, 7)).num_classes == 2 and load_mnist1d(100, 10).num_classes == 10
