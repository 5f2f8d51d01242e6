"""Average several attributors' training-point scores into one DMM predictor's score file.

Each source is ``[n_train, n_train]`` scores of the training points as queries: a score file
(``scores/<name>.npy`` from ``experiments/score.py query_split=train``) or, with ``--dmm-trak M``,
DMM's own Gauss-Newton TRAK over the first M originals (``predictor=trak dmm.models=M``, composed
with the ``--override`` Hydra overrides, e.g. ``experiment=mnist1d_cnn``). Every
source is scaled to unit Frobenius norm before the mean, so none dominates by its units (the
DMM calibration fits the overall scale afterwards). Writes ``scores/<output>.npy`` and the record
``unlearn.load_scores_predictor`` checks:

    python -m experiments.combine_scores runs/mnist1d_mlp --files if_ekfac-train-m20 \\
        --dmm-trak 20 --output trak-ekfac-train-m20
    python -m experiments.combine_scores runs/mnist1d_cnn --files if_ekfac-train-m20 \\
        --dmm-trak 20 --override experiment=mnist1d_cnn --output trak-ekfac-train-m20
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from hydra.utils import instantiate

from benchmarks.record import command_line
from experiments.dmm_table import dmm_config
from experiments.unlearning import build_predictor
from tda.scores import read_scores, save_scores
from unlearn.predictors import architecture

CHECKED = ("train_fingerprint", "query_fingerprint", "architecture")


def unit_norm_mean(sources: dict[str, np.ndarray]) -> np.ndarray:
    """The mean of the sources, each divided by its Frobenius norm (all of one shape)."""
    shapes = {name: matrix.shape for name, matrix in sources.items()}
    if len(set(shapes.values())) != 1:
        raise ValueError(f"sources of different shapes: {shapes}")
    scaled = [matrix.astype(np.float64) / np.linalg.norm(matrix) for matrix in sources.values()]
    return np.mean(scaled, axis=0)


def _file(workspace: Path, name: str) -> tuple[np.ndarray, dict]:
    path = workspace / "scores" / f"{name}.npy"
    scores, record = read_scores(path)
    if record.get("query_split") != "train":
        raise ValueError(f"{path} does not score the training points (query_split=train)")
    return scores, record


def _dmm_trak(workspace: Path, models: int, overrides: list[str]) -> tuple[np.ndarray, dict]:
    cfg = dmm_config(
        [*overrides, "predictor=trak", f"dmm.models={models}", f"workspace={workspace}"]
    )
    train = instantiate(cfg.data).train
    scores = build_predictor(cfg).trak.score("train").numpy()  # its members on cfg.device
    record = {
        "train_fingerprint": train.fingerprint(),
        "query_fingerprint": train.fingerprint(),
        "architecture": architecture(instantiate(cfg.model)()),
    }
    return scores, record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workspace", type=Path)
    parser.add_argument("--files", nargs="*", default=[], help="score files (training queries)")
    parser.add_argument("--dmm-trak", type=int, help="also DMM's Gauss-Newton TRAK over M models")
    parser.add_argument(
        "--override", action="append", default=[], help="Hydra override of --dmm-trak's config"
    )
    parser.add_argument("--output", required=True, help="name of the combined score file")
    args = parser.parse_args()
    torch.set_num_threads(1)
    loaded = {name: _file(args.workspace, name) for name in args.files}
    if args.dmm_trak:
        loaded[f"dmm-trak-m{args.dmm_trak}"] = _dmm_trak(
            args.workspace, args.dmm_trak, args.override
        )
    if len(loaded) < 2:
        parser.error("give at least two sources")
    (first_name, (_, first)), *others = loaded.items()
    for name, (_, record) in others:
        for key in CHECKED:
            if record.get(key) != first.get(key):
                raise ValueError(f"{name} and {first_name} differ in {key}")
    combined = unit_norm_mean({name: scores for name, (scores, _) in loaded.items()})
    record = {key: first[key] for key in CHECKED} | {"query_split": "train"}
    record |= {"sources": list(loaded), "combination": "mean of unit-Frobenius-norm sources"}
    record |= {"shape": list(combined.shape), "command": command_line()}
    path = save_scores(
        args.workspace / "scores" / f"{args.output}.npy", combined.astype(np.float32), record
    )
    print(f"{path}: mean of {list(loaded)}")


if __name__ == "__main__":
    main()
