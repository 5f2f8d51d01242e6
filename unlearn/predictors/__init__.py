"""Predictors of the retrained model's outputs, for datamodel matching (DMM) and oracle matching."""

from unlearn.predictors.base import (
    OutputPredictor,
    PredictorScope,
    ShiftPredictor,
    architecture,
    model_outputs,
)
from unlearn.predictors.calibration import (
    Calibration,
    calibrate,
    calibrate_on_proxy,
    calibrate_pooled,
)
from unlearn.predictors.datamodel import (
    DatamodelPredictor,
    TrainingLogits,
    datamodel_predictor,
    select_ridge,
    subset_logits,
)
from unlearn.predictors.head import HeadRefitPredictor
from unlearn.predictors.head_difference import HeadDifferencePredictor
from unlearn.predictors.layer_edit import LayerEdit, LayerEditPredictor, apply_layer_edit
from unlearn.predictors.oracle import OraclePredictor
from unlearn.predictors.scores import ScoresPredictor, load_scores_predictor
from unlearn.predictors.trak import TRAKPredictor, trak_predictor

__all__ = [
    "Calibration",
    "DatamodelPredictor",
    "HeadDifferencePredictor",
    "HeadRefitPredictor",
    "LayerEdit",
    "LayerEditPredictor",
    "OraclePredictor",
    "OutputPredictor",
    "PredictorScope",
    "ScoresPredictor",
    "ShiftPredictor",
    "TRAKPredictor",
    "TrainingLogits",
    "apply_layer_edit",
    "architecture",
    "calibrate",
    "calibrate_on_proxy",
    "calibrate_pooled",
    "datamodel_predictor",
    "load_scores_predictor",
    "model_outputs",
    "select_ridge",
    "subset_logits",
    "trak_predictor",
]
