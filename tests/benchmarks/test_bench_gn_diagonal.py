"""The Gauss-Newton diagonal benchmark runs and its two sandwich forms agree."""

import json

import torch

from benchmarks.bench_gn_diagonal import main


def test_a_smoke_run_records_both_products_agreeing(tmp_path):
    output, threads = tmp_path / "gn-diagonal-lm.json", torch.get_num_threads()
    try:
        main(["--quick", "--out", str(output)])
    finally:
        torch.set_num_threads(threads)  # the benchmark sets its own
    row = json.loads(output.read_text())["results"]
    assert row["max_relative_difference"] < 1e-5  # float32 model
    assert row["block_sandwich_s_per_example"] > 0 and row["full_sandwich_s_per_example"] > 0
    assert row["call_s_per_example"] > 0
