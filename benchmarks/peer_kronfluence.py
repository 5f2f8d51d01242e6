"""kronfluence 1.0.1 run on our models and data, for the side-by-side benchmarks only (the library
never imports it): its Task for our margin measurement, and its pairwise scores."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional

from tda import ClassificationTask

TASK = ClassificationTask()


def kronfluence_task():
    """kronfluence's Task for our measurement: ``-margin`` (so that its positive scores, which
    lower the measurement, are ours: they raise the margin) and the summed cross-entropy."""
    from kronfluence.task import Task

    class MarginTask(Task):
        def compute_train_loss(self, batch, model, sample=False):
            inputs, targets = batch
            logits = model(inputs)
            if sample:  # labels from the model's softmax: the true Fisher
                with torch.no_grad():
                    probabilities = functional.softmax(logits.detach(), dim=-1)
                    targets = torch.multinomial(probabilities, 1).flatten()
            return functional.cross_entropy(logits, targets, reduction="sum")

        def compute_measurement(self, batch, model):
            inputs, targets = batch
            return -TASK.output(model(inputs), targets).sum()

    return MarginTask()


def kronfluence_scores(model, train, queries, root: Path, strategy: str, **options) -> np.ndarray:
    """kronfluence's pairwise scores ``[q, n]``: factors, eigendecomposition, lambda, scores."""
    from kronfluence.analyzer import Analyzer, prepare_model
    from kronfluence.arguments import FactorArguments, ScoreArguments

    torch.manual_seed(0)  # its sampled labels come from the global generator
    dtype = next(model.parameters()).dtype
    names = ("activation_covariance", "gradient_covariance", "per_sample_gradient", "lambda")
    factor_args = FactorArguments(strategy=strategy, use_empirical_fisher=options.get("empirical",
        False), **{f"{name}_dtype": dtype for name in names})  # fmt: skip
    names = ("per_sample_gradient", "precondition", "score")
    score_args = ScoreArguments(damping_factor=options.get("damping", 1e-8),
        **{f"{name}_dtype": dtype for name in names})  # fmt: skip
    task = kronfluence_task()
    analyzer = Analyzer("bench", prepare_model(model, task), task, cpu=True, disable_tqdm=True,
        output_dir=str(root), log_level=logging.WARNING)  # fmt: skip
    data = torch.utils.data.TensorDataset(train.inputs, train.targets)
    query_data = torch.utils.data.TensorDataset(queries.inputs, queries.targets)
    analyzer.fit_all_factors("factors", data, per_device_batch_size=256, factor_args=factor_args,
        overwrite_output_dir=True)  # fmt: skip
    analyzer.compute_pairwise_scores("scores", "factors", query_data, data,
        per_device_query_batch_size=len(queries), per_device_train_batch_size=256,
        score_args=score_args, overwrite_output_dir=True)  # fmt: skip
    scores = analyzer.load_pairwise_scores("scores")["all_modules"]
    shutil.rmtree(root)
    return scores.double().numpy()


def plain_linear(model: torch.nn.Linear) -> torch.nn.Module:
    """The LR as ``Sequential(nn.Linear)``: kronfluence wraps modules by exact type, so it raises
    ``KeyError: <class 'tda.models.LogisticRegression'>`` on our ``nn.Linear`` subclass."""
    plain = torch.nn.Sequential(torch.nn.Linear(model.in_features, model.out_features))
    plain[0].load_state_dict(model.state_dict())
    return plain.to(model.weight.dtype).eval()
