import torch

from tda.task import ClassificationTask


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
