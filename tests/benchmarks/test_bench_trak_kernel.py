"""The primal-versus-dual TRAK kernel benchmark runs and its two forms agree."""

import json

import torch

from benchmarks.bench_trak_kernel import main


def test_a_smoke_run_records_both_forms_agreeing(tmp_path):
    output, threads = tmp_path / "trak-kernel.json", torch.get_num_threads()
    try:
        main(["--quick", "--out", str(output)])
    finally:
        torch.set_num_threads(threads)  # the benchmark sets its own
    record = json.loads(output.read_text())
    rows = record["results"]
    assert [row["k"] for row in rows] == record["settings"]["dims"]
    assert all(row["max_relative_difference"] < 1e-10 for row in rows)
    assert all(row["primal_s"] > 0 and row["dual_s"] > 0 for row in rows)
