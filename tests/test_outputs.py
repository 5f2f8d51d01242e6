"""Batched evaluation: logits and task outputs, whatever the batch size or number of examples."""

import torch
from torch import nn

from tda.data.examples import Examples
from tda.outputs import accuracy, logits_of, task_outputs
from tda.task import ClassificationTask


def model_and_examples(n: int) -> tuple[nn.Module, Examples]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)).double()
    return model, Examples(torch.randn(n, 4, dtype=torch.float64), torch.arange(n) % 3)


def test_batches_give_the_logits_of_one_pass():
    model, examples = model_and_examples(7)
    with torch.no_grad():
        whole = model(examples.inputs)
    torch.testing.assert_close(logits_of(model, examples, batch_size=3), whole, rtol=0, atol=0)


def test_no_examples_give_empty_logits_and_outputs():
    model, examples = model_and_examples(0)
    assert logits_of(model, examples).shape == (0, 3)
    assert task_outputs(model, ClassificationTask(), examples).shape == (0,)


def test_accuracy_is_a_ratio_of_counts():
    """It was a float32 mean: 23 of 25 read 0.9200000166893005."""
    model = torch.nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.eye(2))
    inputs = torch.tensor([[1.0, 0.0]] * 25)
    targets = torch.tensor([0] * 23 + [1] * 2)
    assert accuracy(model, Examples(inputs, targets)) == 23 / 25
