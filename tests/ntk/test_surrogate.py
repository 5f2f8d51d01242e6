"""Kernel machines, the NTK surrogate's decomposition and its faithfulness report."""

import numpy as np
import pytest
import torch
from scipy.stats import kendalltau

from tda.data import Examples
from tda.models import MLP, LogisticRegression, build_model
from tda.ntk import (
    DegenerateKernelError,
    EmpiricalNTK,
    KernelLogisticRegression,
    KernelSVM,
    KernelTooLargeError,
    NTKSurrogate,
    contributions,
    decision_function,
    faithfulness,
)
from tda.projection import DenseProjector
from tda.training import TrainConfig, train


def rbf_problem(n=30, classes=3, seed=0):
    """A well-conditioned kernel [n + 10, n] (train rows first) and labels of the train rows."""
    generator = torch.Generator().manual_seed(seed)
    points = torch.randn(n + 10, 2, generator=generator, dtype=torch.float64)
    labels = (torch.atan2(points[:n, 1], points[:n, 0]) + np.pi) * classes / (2 * np.pi)
    kernel = torch.exp(-(torch.cdist(points, points[:n]) ** 2)) * 7.0  # arbitrary scale
    return kernel, labels.long().clamp(max=classes - 1)


@pytest.mark.parametrize("classes", [2, 3])
def test_logistic_decomposition_reproduces_sklearn(classes):
    kernel, labels = rbf_problem(classes=classes)
    gram = kernel[:30]
    machine = KernelLogisticRegression().fit(gram, labels, classes)
    scale = float(torch.diagonal(gram).mean())
    reference = machine.estimator.decision_function(kernel.numpy() / scale)
    ours = decision_function(machine, kernel).numpy()
    if classes == 2:
        np.testing.assert_allclose(ours[:, 1] - ours[:, 0], reference, rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(ours.sum(1), 0.0, atol=1e-12)
    else:
        np.testing.assert_allclose(ours, reference, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("classes", [2, 3])
def test_svm_decomposition_reproduces_sklearn(classes):
    kernel, labels = rbf_problem(classes=classes)
    machine = KernelSVM().fit(kernel[:30], labels, classes)
    scale = float(torch.diagonal(kernel[:30]).mean())
    ours = decision_function(machine, kernel).numpy()
    if classes == 2:
        reference = machine.estimator[0].decision_function(kernel.numpy() / scale)
        np.testing.assert_allclose(ours[:, 1] - ours[:, 0], reference, rtol=1e-10, atol=1e-10)
    else:
        for c, estimator in enumerate(machine.estimator):
            reference = estimator.decision_function(kernel.numpy() / scale)
            np.testing.assert_allclose(ours[:, c], reference, rtol=1e-10, atol=1e-10)


def test_contributions_sum_to_weighted_decisions():
    kernel, labels = rbf_problem()
    machine = KernelLogisticRegression().fit(kernel[:30], labels, 3)
    weights = torch.randn(40, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    terms = contributions(machine, kernel, weights)
    assert terms.shape == (40, 30)
    expected = (decision_function(machine, kernel) * weights).sum(1)
    torch.testing.assert_close(terms.sum(1) + weights @ machine.intercept, expected)


def test_never_predicted_class_is_never_chosen():
    kernel, labels = rbf_problem(classes=2)
    machine = KernelLogisticRegression().fit(kernel[:30], labels * 2, 3)  # classes 0 and 2 only
    scores = decision_function(machine, kernel[:30])
    assert torch.all(machine.coefficients[:, 1] == 0)
    assert not bool((scores.argmax(1) == 1).any())


def test_machines_refuse_degenerate_inputs():
    kernel, labels = rbf_problem()
    with pytest.raises(DegenerateKernelError, match="constant"):
        KernelSVM().fit(torch.ones(30, 30, dtype=torch.float64), labels, 3)
    with pytest.raises(ValueError, match="at least two classes"):
        KernelLogisticRegression().fit(kernel[:30], torch.zeros(30, dtype=torch.long), 3)
    with pytest.raises(RuntimeError, match="fit"):
        decision_function(KernelLogisticRegression(), kernel)


@pytest.fixture
def trained(tiny_mlp, tiny_data):
    train(tiny_mlp, tiny_data, TrainConfig(epochs=20, batch_size=10), seed=0)
    return tiny_mlp


@pytest.mark.parametrize("machine", [KernelLogisticRegression(), KernelSVM()])
@pytest.mark.parametrize("kind", ["trace", "pseudo"])
def test_surrogate_scores_sum_to_its_prediction(trained, tiny_data, machine, kind):
    surrogate = NTKSurrogate(EmpiricalNTK(kind), machine).fit(trained, tiny_data.subset(range(15)))
    queries = tiny_data.subset(range(15, 20))
    scores = surrogate.score(queries)
    assert scores.shape == (5, 15)
    torch.testing.assert_close(
        scores.sum(1) + surrogate.bias(queries), surrogate.surrogate_output(queries)
    )


def test_surrogate_scores_are_the_kernel_terms(trained, tiny_data):
    train_set, queries = tiny_data.subset(range(15)), tiny_data.subset(range(15, 20))
    surrogate = NTKSurrogate(EmpiricalNTK("trace", DenseProjector(32))).fit(trained, train_set)
    rows = EmpiricalNTK("trace", DenseProjector(32)).matrix(
        trained, queries.inputs, train_set.inputs
    )
    alpha = surrogate.fitted.coefficients
    target = int(queries.targets[0])
    others = [c for c in range(3) if c != target]
    expected = rows[0] * (alpha[:, target] - alpha[:, others].mean(1))
    torch.testing.assert_close(surrogate.score(queries)[0], expected)


@pytest.mark.parametrize("bad_target", [-1, 3])
def test_surrogate_refuses_query_targets_outside_the_classes(trained, tiny_data, bad_target):
    surrogate = NTKSurrogate().fit(trained, tiny_data.subset(range(15)))
    queries = Examples(tiny_data.inputs[15:17], torch.tensor([0, bad_target]))
    for attribute in ("score", "bias", "surrogate_output"):
        with pytest.raises(ValueError, match=r"class indices in 0\.\.2"):
            getattr(surrogate, attribute)(queries)


def test_surrogate_imitates_the_network(trained, tiny_data):
    surrogate = NTKSurrogate(EmpiricalNTK("trace")).fit(trained, tiny_data)
    report = surrogate.faithfulness(tiny_data)
    assert report.n_examples == 20 and report.num_classes == 3
    assert report.agreement >= 0.9  # fit to the network's own predictions on these examples
    assert report.kendall_tau > 0.5


def test_a_refused_refit_leaves_the_surrogate_as_it_was(trained, tiny_data):
    """The new training features were kept beside the old model and machine: scores then mixed
    the two fits with no error."""
    surrogate = NTKSurrogate().fit(trained, tiny_data.subset(range(15)))
    queries = tiny_data.subset(range(15, 20))
    before, features = surrogate.score(queries), surrogate.train_features
    one_class = build_model(lambda: MLP(6, (8,), 3), seed=1, dtype=torch.float64)
    with torch.no_grad():
        one_class[-1].bias.copy_(torch.tensor([100.0, 0.0, 0.0], dtype=torch.float64))
    with pytest.raises(ValueError, match="at least two classes"):
        surrogate.fit(one_class, tiny_data.subset(range(5, 20)))
    assert surrogate.model is trained and surrogate.train_features is features
    torch.testing.assert_close(surrogate.score(queries), before, rtol=0, atol=0)


def test_surrogate_refuses_a_constant_kernel():
    model = build_model(lambda: LogisticRegression(4, 2), seed=0, dtype=torch.float64)
    data = Examples(torch.ones(8, 4, dtype=torch.float64), torch.tensor([0, 1] * 4))
    with pytest.raises(DegenerateKernelError, match="constant"):
        NTKSurrogate().fit(model, data)


def test_faithfulness_oracles():
    generator = torch.Generator().manual_seed(0)
    network = torch.randn(50, 4, generator=generator, dtype=torch.float64)
    shifted = network * 2.0 + torch.randn(50, 1, generator=generator, dtype=torch.float64)
    same = faithfulness(network, shifted)  # per-example shifts and positive scales: same ranks
    assert same.kendall_tau == pytest.approx(1.0) and same.agreement == 1.0
    assert same.kendall_tau_per_class == pytest.approx(1.0)
    assert faithfulness(network, -network).kendall_tau == pytest.approx(-1.0)
    binary = network[:, :2]
    noisy = binary + 0.5 * torch.randn(50, 2, generator=generator, dtype=torch.float64)
    expected = kendalltau(binary[:, 1] - binary[:, 0], noisy[:, 1] - noisy[:, 0]).statistic
    assert faithfulness(binary, noisy).kendall_tau == pytest.approx(expected)
    with pytest.raises(ValueError, match="both be"):
        faithfulness(network, network[:, :3])


def test_query_rows_over_the_memory_limit_are_refused(tiny_mlp, tiny_data):
    """Fitting checked the limit; the queries' kernel rows (score, faithfulness, ...) did not,
    so a large query set was computed whatever the limit."""
    ntk = EmpiricalNTK("trace", DenseProjector(8), chunk_size=4, memory_limit_bytes=40_000)
    surrogate = NTKSurrogate(ntk).fit(tiny_mlp, tiny_data.subset(range(15)))
    assert surrogate.kernel_rows(tiny_data.subset(range(5))).shape == (5, 15)
    many = Examples(tiny_data.inputs.repeat(10, 1), tiny_data.targets.repeat(10))  # 200 queries
    with pytest.raises(KernelTooLargeError, match="would need"):
        surrogate.score(many)


@pytest.mark.parametrize("kind", ["trace", "pseudo"])
def test_surrogate_refuses_inputs_of_another_float_dtype(trained, tiny_data, kind):
    """torch's "mat1 and mat2 must have the same dtype" came from inside the kernel."""
    single = tiny_data.to(dtype=torch.float32)
    with pytest.raises(ValueError, match="torch.float64 but the inputs are torch.float32"):
        NTKSurrogate(EmpiricalNTK(kind)).fit(trained, single)
    surrogate = NTKSurrogate(EmpiricalNTK(kind)).fit(trained, tiny_data.subset(range(15)))
    with pytest.raises(ValueError, match="torch.float64 but the inputs are torch.float32"):
        surrogate.score(single.subset(range(15, 20)))


def test_surrogate_reads_raw_arrays_as_their_examples(trained, tiny_data):
    """(X, y) arrays failed: "'tuple' object has no attribute 'inputs'"."""
    train_set, queries = tiny_data.subset(range(15)), tiny_data.subset(range(15, 20))
    expected = NTKSurrogate().fit(trained, train_set)
    raw = NTKSurrogate().fit(trained, (train_set.inputs.numpy(), train_set.targets.numpy()))
    pair = (queries.inputs.numpy(), queries.targets.numpy())
    torch.testing.assert_close(raw.score(pair), expected.score(queries))
    torch.testing.assert_close(raw.surrogate_output(pair), expected.surrogate_output(queries))
    torch.testing.assert_close(raw.bias(pair), expected.bias(queries))
    assert raw.faithfulness(pair) == expected.faithfulness(queries)


@pytest.mark.parametrize("progress", [True, False])
def test_fit_shows_its_stages_unless_told_not_to(trained, tiny_data, capsys, progress):
    NTKSurrogate().fit(trained, tiny_data.subset(range(15)), progress=progress)
    shown = capsys.readouterr().err
    if progress:  # the bar ends on its last stage, the machine's fit, all three done
        assert "NTK surrogate" in shown and "3/3" in shown and "KernelLogisticRegression" in shown
    else:
        assert shown == ""
