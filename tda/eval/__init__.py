"""Evaluation of attributions against retraining ground truth."""

from tda.eval.lds import LDSResult, lds, noise_ceiling, predict_subset_outputs

__all__ = ["LDSResult", "lds", "noise_ceiling", "predict_subset_outputs"]
