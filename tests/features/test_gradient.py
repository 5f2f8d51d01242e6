"""GradientFeaturizer: projected per-sample gradients and TRAK's out-to-loss weight."""

import torch
from torch import nn

from tda.features import GradientFeaturizer, out_to_loss
from tda.grads import per_sample_gradients
from tda.projection import DenseProjector
from tda.task import ClassificationTask


class BatchSpy(nn.Module):
    """Runs ``model`` and records the leading size of every input it is given."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model, self.sizes = model, []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.sizes.append(x.shape[0])
        return self.model(x)


def test_the_model_never_runs_on_more_than_a_chunk(tiny_mlp, tiny_data):
    """Q came from one forward pass over every row given (a shard), whatever chunk_size."""
    spy = BatchSpy(tiny_mlp)
    featurizer = GradientFeaturizer(DenseProjector(8, seed=1), chunk_size=3)
    batch = featurizer(spy, tiny_data.inputs, tiny_data.targets)
    assert max(spy.sizes) == 3
    task, projector = ClassificationTask(), featurizer.projector
    gradients = per_sample_gradients(tiny_mlp, task, tiny_data.inputs, tiny_data.targets)
    torch.testing.assert_close(batch.features, projector.project(gradients), rtol=0, atol=1e-12)
    expected = out_to_loss(tiny_mlp, task, tiny_data.inputs, tiny_data.targets)  # all at once
    torch.testing.assert_close(batch.out_to_loss, expected, rtol=0, atol=1e-12)
