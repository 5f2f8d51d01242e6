"""`make demo`: attribute MNIST-1D predictions with TRAK, measure LDS, then unlearn 10% of the data.

Steps (a few minutes on 2 CPU cores; everything is cached under runs/demo and resumes):
train an ensemble of MLPs, featurize train + test examples into a FeatureStore, score with TRAK,
retrain on random half-subsets for a small LDS ground truth, report LDS with its confidence
interval and noise ceiling, and show the most helpful / harmful training examples for test points.
Then issue an unlearning request (forget a random 10% of the training set) to one of the models and
print its report: SalUn and fine-tuning against exact retraining, with the audit record.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

import tda
from experiments import demo_unlearning
from tda.describe import describe
from tda.plots import plot_top_examples
from tda.ranking import top_examples

MODELS, QUERIES, SUBSETS = 3, 100, 30
SEEDS = (1000, 1001)  # ground-truth retraining seeds, apart from the members' 0 .. MODELS - 1
CONFIG = tda.TrainConfig(epochs=30, batch_size=64)
MODEL = tda.on_device(tda.MLP, "auto")  # CUDA when present, else the CPU


def checkpoint_id(seed: int) -> str:
    """The feature store's name for member ``seed`` (only these members are scored)."""
    return f"seed-{seed}"


def attribute(data: tda.DataSplits, queries: tda.Examples, workspace: Path) -> torch.Tensor:
    members = tda.train_ensemble(MODEL, data.train, CONFIG, range(MODELS), workspace / "models")
    featurizer = tda.GradientFeaturizer(tda.SparseProjector(dim=2048))
    store = tda.open_feature_store(workspace / "features", featurizer)
    for seed, checkpoints in members.items():
        model = tda.load_member(MODEL, checkpoints[-1])
        splits = {"train": data.train, "test": queries}
        tda.featurize(model, splits, featurizer, store, checkpoint_id=checkpoint_id(seed))
    return tda.TRAK().fit(store, checkpoints=list(map(checkpoint_id, members))).score("test")


def ground_truth(
    data: tda.DataSplits, queries: tda.Examples, workspace: Path
) -> tda.GroundTruthStore:
    masks = tda.sample_subsets(len(data.train), alpha=0.5, count=SUBSETS, seed=2026)
    retrainer = tda.SubsetRetrainer(MODEL, data.train, queries, CONFIG)
    store = tda.GroundTruthStore.create_or_open(
        workspace / "ground_truth",
        masks,
        SEEDS,
        queries.fingerprint(),
        describe(retrainer),  # a workspace retrained with another recipe is refused
        train_fingerprint=data.train.fingerprint(),
    )
    store.run(retrainer)
    return store


def main(workspace: Path = Path("runs/demo")) -> None:
    torch.set_num_threads(1)  # small models: one thread is as fast and robust to a busy machine
    print(f"models run on: {MODEL.device} (device=auto)")
    data = tda.load_mnist1d(n_train=4000, n_test=1000, seed=0)
    queries = data.test.subset(range(QUERIES))
    scores = attribute(data, queries, workspace)
    truth = ground_truth(data, queries, workspace)
    print(f"\nTRAK (M={MODELS}, sparse JL k=2048): {tda.lds(scores, truth.masks, truth.outputs())}")
    print(f"Ground-truth {tda.noise_ceiling(truth.outputs())}")
    top = top_examples(scores, k=4)
    for query in range(3):
        print(f"\ntest example {query} (label {int(queries.targets[query])}):")
        for kind in ("helpful", "harmful"):
            pairs = zip(
                getattr(top, kind)[query].tolist(),
                getattr(top, f"{kind}_scores")[query],
                strict=True,
            )
            listed = ", ".join(f"#{index} ({float(score):+.2e})" for index, score in pairs)
            print(f"  most {kind}: {listed}")
    figure = workspace / "top_examples.png"
    plot_top_examples(queries, data.train, top, rows=[0, 1, 2], path=figure)
    print(f"\nfigure of the most helpful and harmful training examples: {figure}")
    model = tda.load_member(MODEL, tda.list_checkpoints(workspace / "models" / "seed-0")[-1])
    demo_unlearning.run(model, MODEL, data, CONFIG, workspace)


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("runs/demo"))
