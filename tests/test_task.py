import pytest
import torch

from tda.data import Examples
from tda.outputs import accuracy
from tda.task import IGNORE_INDEX, ClassificationTask, LanguageModelingTask


def test_margin_is_log_odds_of_the_true_class():
    logits = torch.randn(5, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    targets = torch.tensor([0, 1, 2, 3, 1])
    p = torch.softmax(logits, -1)[torch.arange(5), targets]
    margins = ClassificationTask().output(logits, targets)
    torch.testing.assert_close(margins, torch.log(p / (1 - p)), rtol=1e-12, atol=1e-12)


def test_loss_is_cross_entropy_and_out_to_loss_its_derivative_in_the_margin():
    task = ClassificationTask()
    logits = torch.randn(4, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    target = torch.tensor(2)
    expected = torch.nn.functional.cross_entropy(logits[None], target[None])
    torch.testing.assert_close(task.loss(logits, target), expected, rtol=1e-12, atol=1e-12)
    # loss = log(1 + exp(-f)), so -dloss/df = 1 - p_y = out_to_loss
    margin = task.output(logits, target).requires_grad_()
    (derivative,) = torch.autograd.grad(torch.log1p(torch.exp(-margin)), margin)
    torch.testing.assert_close(
        -derivative, task.out_to_loss(logits, target), rtol=1e-12, atol=1e-12
    )


def test_per_example_and_batched_calls_agree():
    task = ClassificationTask()
    logits = torch.randn(6, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    targets = torch.tensor([0, 2, 1, 1, 0, 2])
    batched = task.output(logits, targets)
    single = torch.stack(
        [task.output(logit, target) for logit, target in zip(logits, targets, strict=True)]
    )
    torch.testing.assert_close(batched, single, rtol=0, atol=0)


def test_a_target_outside_the_classes_gives_nan_not_a_plausible_value():
    task = ClassificationTask()
    logits = torch.randn(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    targets = torch.tensor([0, -1, 3, 2])
    for value in (task.output, task.loss, task.out_to_loss):
        result = value(logits, targets)
        assert result[[1, 2]].isnan().all() and result[[0, 3]].isfinite().all()
    torch.testing.assert_close(
        task.loss(logits[[0, 3]], targets[[0, 3]]),
        torch.nn.functional.cross_entropy(logits[[0, 3]], targets[[0, 3]], reduction="none"),
    )
    logits.requires_grad_()
    (gradient,) = torch.autograd.grad(task.loss(logits, targets)[1], logits)
    assert gradient[1].isnan().all()  # so per-sample gradients refuse it too


def test_a_token_outside_the_vocabulary_gives_nan_but_ignored_positions_do_not():
    logits, targets = _sequence_logits_and_targets()
    task = LanguageModelingTask()
    assert task.output(logits, targets).isfinite().all()  # IGNORE_INDEX is not out of range
    targets[1, 3] = 7
    output, loss = task.output(logits, targets), task.loss(logits, targets)
    assert output[1].isnan() and loss[1].isnan()
    assert output[[0, 2]].isfinite().all() and loss[[0, 2]].isfinite().all()


def _sequence_logits_and_targets():
    generator = torch.Generator().manual_seed(4)
    logits = torch.randn(3, 5, 7, dtype=torch.float64, generator=generator)
    targets = torch.randint(0, 7, (3, 5), generator=generator)
    targets[0, :2] = IGNORE_INDEX  # a prompt whose tokens are not counted
    targets[2, :] = IGNORE_INDEX  # nothing counted at all
    return logits, targets


def test_language_modeling_output_is_the_log_likelihood_of_the_counted_tokens():
    logits, targets = _sequence_logits_and_targets()
    summed = torch.nn.functional.cross_entropy(
        logits.transpose(1, 2), targets, ignore_index=IGNORE_INDEX, reduction="none"
    ).sum(-1)
    output = LanguageModelingTask().output(logits, targets)
    torch.testing.assert_close(output, -summed, rtol=1e-12, atol=1e-12)
    assert output[2] == 0


def test_language_modeling_loss_is_the_mean_token_nll_and_out_to_loss_its_derivative():
    task = LanguageModelingTask()
    logits, targets = _sequence_logits_and_targets()
    for row in range(2):
        expected = torch.nn.functional.cross_entropy(
            logits[row], targets[row], ignore_index=IGNORE_INDEX
        )
        torch.testing.assert_close(
            task.loss(logits[row], targets[row]), expected, rtol=1e-12, atol=0
        )
        # loss = -f / T_c, so -dloss/df = 1 / T_c
        counted = int((targets[row] != IGNORE_INDEX).sum())
        assert float(task.out_to_loss(logits[row], targets[row])) == 1 / counted
    assert task.loss(logits[2], targets[2]) == 0 and task.out_to_loss(logits[2], targets[2]) == 0


def test_language_modeling_per_example_and_batched_calls_agree():
    task = LanguageModelingTask()
    logits, targets = _sequence_logits_and_targets()
    for function in (task.output, task.loss, task.out_to_loss):
        single = torch.stack([function(x, y) for x, y in zip(logits, targets, strict=True)])
        torch.testing.assert_close(function(logits, targets), single, rtol=0, atol=0)


def test_accuracy_of_sequences_counts_only_the_counted_positions():
    logits = 10.0 * torch.nn.functional.one_hot(torch.tensor([[1, 2, 3], [1, 2, 3]]), 4).double()
    targets = torch.tensor([[IGNORE_INDEX, 2, 0], [1, 2, IGNORE_INDEX]])  # 3 of 4 counted right
    assert accuracy(torch.nn.Identity(), Examples(logits, targets)) == 0.75
    labels = torch.tensor([1, 0])  # classification: one of two
    assert accuracy(torch.nn.Identity(), Examples(logits[:, 0], labels)) == 0.5
    nothing_counted = torch.full_like(targets, IGNORE_INDEX)
    with pytest.raises(ValueError, match="at least one example with a counted target"):
        accuracy(torch.nn.Identity(), Examples(logits, nothing_counted))  # was NaN


def test_a_target_column_is_refused_not_broadcast():
    """Targets of shape [n, 1] broadcast against [n] per-class values into [n, n]: training on
    scikit-learn's y[:, None] silently learned a constant model."""
    logits = torch.randn(4, 3)
    for method in ("loss", "output", "out_to_loss"):
        with pytest.raises(ValueError, match=r"targets of shape \(4, 1\) do not fit logits"):
            getattr(ClassificationTask(), method)(logits, torch.zeros(4, 1, dtype=torch.long))


def test_targets_broadcast_over_extra_leading_axes_of_the_logits():
    """Logits of S subset models [S, n, C] share one target per example [n]."""
    logits = torch.randn(5, 4, 3)
    targets = torch.tensor([0, 2, 1, 1])
    stacked = ClassificationTask().output(logits, targets)
    assert stacked.shape == (5, 4)
    torch.testing.assert_close(stacked[2], ClassificationTask().output(logits[2], targets))
