"""The primal-versus-dual TRAK kernel benchmark runs and its two forms agree."""

import json

from benchmarks.bench_trak_kernel import main


def test_a_smoke_run_records_both_forms_agreeing(threads, tmp_path):
    output = tmp_path / "trak-kernel.json"
    main(["--quick", "--out", str(output)])
    record = json.loads(output.read_text())
    rows = record["results"]
    assert [row["k"] for row in rows] == record["settings"]["dims"]
    assert all(row["max_relative_difference"] < 1e-10 for row in rows)
    assert all(row["primal_s"] > 0 and row["dual_s"] > 0 for row in rows)
