"""Per-class-logit features against explicit Jacobians, and their place in a feature store."""

import pytest
import torch

from tda.features import (
    GradientFeaturizer,
    LogitFeaturizer,
    featurize,
    logit_split,
    open_feature_store,
)
from tda.projection import DenseProjector, IdentityProjector, derive_seed
from tda.task import ClassLogit


def _explicit_jacobians(model, inputs):
    """``[b, C, p]``: the gradient of each logit of each example, one backward pass at a time."""
    rows = []
    for x in inputs:
        per_class = []
        for logit in model(x.unsqueeze(0))[0]:
            grads = torch.autograd.grad(logit, list(model.parameters()), retain_graph=True)
            per_class.append(torch.cat([g.reshape(-1) for g in grads]))
        rows.append(torch.stack(per_class))
    return torch.stack(rows)


def test_identity_logit_features_are_the_explicit_logit_jacobians(tiny_mlp, tiny_data):
    features = LogitFeaturizer(GradientFeaturizer(IdentityProjector()), 3)(
        tiny_mlp, tiny_data.inputs, tiny_data.targets
    ).features
    expected = _explicit_jacobians(tiny_mlp, tiny_data.inputs)
    assert features.shape == (20, 3, 83)
    torch.testing.assert_close(features, expected, rtol=1e-12, atol=1e-12)


def test_logit_features_use_the_base_projection_of_the_same_checkpoint(
    tmp_path, tiny_mlp, tiny_data
):
    """Stored per-class features equal P^T J for the projection the train split was stored with."""
    base = GradientFeaturizer(DenseProjector(7, seed=5))
    store = open_feature_store(tmp_path, base, shard_size=8)
    featurize(tiny_mlp, {"train": tiny_data}, base, store, checkpoint_id="m", progress=False)
    split = logit_split("train")
    featurize(
        tiny_mlp,
        {split: tiny_data},
        LogitFeaturizer(base, 3),
        store,
        checkpoint_id="m",
        progress=False,
    )
    stored = torch.from_numpy(store.load("m", split))
    margins = torch.from_numpy(store.load("m", "train"))
    jacobians = _explicit_jacobians(tiny_mlp, tiny_data.inputs)
    # the projection P of checkpoint "m", applied to the identity
    seeded = base.with_seed(derive_seed(5, "m"))
    identity = seeded.projector.project(torch.eye(83, dtype=torch.float64))
    torch.testing.assert_close(stored, jacobians @ identity, rtol=1e-10, atol=1e-10)
    assert margins.shape == (20, 7) and stored.shape == (20, 3, 7)


def test_class_logit_task_rejects_a_class_outside_the_logits():
    with pytest.raises(ValueError, match="class_index 3 is out of range for 3 logits"):
        ClassLogit(3).output(torch.zeros(3), torch.tensor(0))
    with pytest.raises(ValueError, match="non-negative"):
        ClassLogit(-1)


@pytest.mark.parametrize("num_classes", [2, 4])
def test_a_number_of_classes_other_than_the_models_logits_is_refused(
    tiny_mlp, tiny_data, num_classes
):
    """Fewer than the model's 3 logits dropped the last classes' features without a word."""
    featurizer = LogitFeaturizer(GradientFeaturizer(IdentityProjector()), num_classes)
    with pytest.raises(
        ValueError, match=rf"num_classes={num_classes}, but the model gives 3 logits"
    ):
        featurizer(tiny_mlp, tiny_data.inputs, tiny_data.targets)
