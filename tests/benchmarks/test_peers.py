"""A benchmark beside a peer library stops before any work, naming the peer, when it is missing."""

import json
import sys

import pytest

from benchmarks import bench_lds, bench_methods, bench_throughput


@pytest.fixture
def no_peers(monkeypatch):
    """Every peer unimportable (a ``None`` entry in ``sys.modules`` makes ``import`` fail)."""
    for module in ("trak", "kronfluence", "kronfluence.analyzer"):
        monkeypatch.setitem(sys.modules, module, None)


def test_bench_lds_without_traker_stops_before_training(no_peers, threads, tmp_path):
    workspace, output = tmp_path / "workspace", tmp_path / "lds.json"
    with pytest.raises(SystemExit, match=r"traker==0\.3\.2.*--traker-dims"):
        bench_lds.main(["--quick", "--workspace", str(workspace), "--out", str(output)])
    assert not workspace.exists() and not output.exists()


def test_bench_lds_runs_ours_alone_with_no_traker_dims(no_peers, threads, tmp_path):
    output = tmp_path / "lds.json"
    flags = ["--quick", "--threads", "1", "--workers", "1", "--traker-dims"]
    bench_lds.main([*flags, "--workspace", str(tmp_path / "workspace"), "--out", str(output)])
    record = json.loads(output.read_text())
    methods = {row["method"] for row in record["results"]["rows"]}
    assert record["settings"]["traker_dims"] == []
    assert methods and not any(method.startswith("traker") for method in methods)


def test_bench_throughput_without_traker_stops_before_measuring(no_peers, threads, tmp_path):
    output = tmp_path / "throughput.json"
    with pytest.raises(SystemExit, match=r"bench_throughput compares with traker==0\.3\.2"):
        bench_throughput.main(["--quick", "--out", str(output)])
    assert not output.exists()


def test_bench_methods_without_kronfluence_stops_before_training(no_peers, threads, tmp_path):
    workspace, output = tmp_path / "workspace", tmp_path / "methods.json"
    with pytest.raises(SystemExit, match=r"bench_methods compares with kronfluence==1\.0\.1"):
        bench_methods.main(["--quick", "--workspace", str(workspace), "--out", str(output)])
    assert not workspace.exists() and not output.exists()
