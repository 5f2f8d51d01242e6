"""The Gauss-Newton diagonal benchmark runs and its two sandwich forms agree."""

import json

from benchmarks.bench_gn_diagonal import main


def test_a_smoke_run_records_both_products_agreeing(threads, tmp_path):
    output = tmp_path / "gn-diagonal-lm.json"
    main(["--quick", "--out", str(output)])
    row = json.loads(output.read_text())["results"]
    assert row["max_relative_difference"] < 1e-5  # float32 model
    assert row["block_sandwich_s_per_example"] > 0 and row["full_sandwich_s_per_example"] > 0
    assert row["call_s_per_example"] > 0
