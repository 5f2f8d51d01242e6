"""bench_source's ground truth resumes and counts only the models it trains."""

from types import SimpleNamespace

import numpy as np

from benchmarks.bench_source import EARLY, Pipeline
from benchmarks.bench_source import ground_truth as bench_ground_truth
from tda import Examples, GroundTruthStore


class CountingPipeline(Pipeline):
    """The ``early`` pipeline with a stand-in for training: outputs ``[mask sum + seed] * q``."""

    def measure(self, queries: Examples, mask: np.ndarray, seed: int) -> np.ndarray:
        self.calls.append(seed)
        return np.full(len(queries), float(np.sum(mask) + seed))


def test_a_resumed_ground_truth_counts_only_the_pairs_it_trained(tmp_path):
    data = Examples(np.zeros((8, 2), dtype=np.float32), np.zeros(8, dtype=np.int64))
    queries = data.subset(range(3))
    pipeline = CountingPipeline("early", data, ((np.arange(8), EARLY),))
    object.__setattr__(pipeline, "calls", [])
    args = SimpleNamespace(subsets=3, gt_seeds=2, workers=1, workspace=tmp_path)
    (masks, _), first = bench_ground_truth(args, pipeline, queries)
    assert first["trained_this_run"] == 6 == len(pipeline.calls)
    root = tmp_path / "early" / "ground_truth"
    (root / "outputs" / "subset000001_seed1001.npy").unlink()  # killed between subset 1's seeds
    assert GroundTruthStore.open(root).missing() == [(1, 1001)]
    pipeline.calls.clear()
    (_, outputs), resumed = bench_ground_truth(args, pipeline, queries)
    assert pipeline.calls == [1001] and resumed["trained_this_run"] == 1
    assert bench_ground_truth(args, pipeline, queries)[1]["trained_this_run"] == 0
    expected = masks.sum(axis=1)[:, None, None] + np.array([1000, 1001])[None, :, None]
    np.testing.assert_array_equal(outputs, np.broadcast_to(expected, (3, 2, 3)))
