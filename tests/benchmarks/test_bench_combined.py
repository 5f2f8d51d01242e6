"""bench_combined reads its components where bench_methods (and bench_fisher) cache them."""

from types import SimpleNamespace

import numpy as np
import pytest

from benchmarks.bench_combined import CACHED, cached_mean, trak_scores, trak_scores_path

EKFAC = CACHED["IF EK-FAC (empirical Fisher)"]


def _write(root, key: str, scores: list[np.ndarray]) -> None:
    folder = root / "scores" / "MNIST-1D" / key
    folder.mkdir(parents=True)
    for index, matrix in enumerate(scores):
        np.savez(folder / f"model-{index}.npz", scores=matrix, seconds=1.0, info="{}")


def test_ekfac_is_read_from_bench_methods_rows_when_bench_fisher_has_not_run(tmp_path):
    scores = [np.full((2, 3), 1.0), np.full((2, 3), 3.0)]
    _write(tmp_path, "IF_EK-FAC", scores)  # bench_methods's row of the default (empirical) Fisher
    np.testing.assert_array_equal(cached_mean(tmp_path, EKFAC, 2), np.full((2, 3), 2.0))


def test_ekfac_prefers_bench_fisher_rows_and_a_missing_component_says_what_to_run(tmp_path):
    _write(tmp_path, "IF_EK-FAC", [np.zeros((2, 3))])
    _write(tmp_path, EKFAC, [np.ones((2, 3))])
    np.testing.assert_array_equal(cached_mean(tmp_path, EKFAC, 1), np.ones((2, 3)))
    with pytest.raises(FileNotFoundError, match="bench_methods first"):
        cached_mean(tmp_path, CACHED["TracIn-CP"], 1)


def test_trak_scores_are_cached_per_projection_size(tmp_path, monkeypatch):
    paths = []
    monkeypatch.setattr(
        "benchmarks.bench_combined.cached", lambda path, compute, _: paths.append(path) or [None]
    )
    for dim in (2048, 512):  # a k = 512 run must not read the k = 2048 scores
        trak_scores(SimpleNamespace(dim=dim, workspace=tmp_path), [], None, None, 5)
    assert paths[0] != paths[1] and "k512" in str(paths[1])


def test_the_benchmarks_that_reuse_its_trak_scores_read_where_it_writes_them():
    """It moved its TRAK cache to TRAK_sparse_k<dim>; bench_fresh_lds and bench_ntk_lds kept
    reading TRAK_sparse and silently dropped their TRAK rows."""
    from benchmarks import bench_fresh_lds, bench_methods, bench_ntk_lds

    workspace = bench_methods.parse_args([]).workspace
    written = trak_scores_path(workspace, 2048, 5)
    key, pattern = bench_fresh_lds.CACHED["TRAK (sparse 2048)"]
    assert workspace / "scores" / "MNIST-1D" / key / pattern.format(m=5) == written
    assert trak_scores_path(bench_ntk_lds.TRAK_WORKSPACE, 2048, 5) == written
