"""The facts KLOM experiment: a tiny run writes every row, resumes from its cache, checks input."""

import json

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf, open_dict

import experiments.facts_klom
import experiments.facts_unlearning
from experiments.facts_klom import check_chosen
from tests.experiments.entry import REPO, run_entry_point

TINY = [
    "facts.people=8", "forget_people=2", "train.epochs=3", "seeds=[0,1]", "grid=[1e-3,1e-2]",
    "model.dim=8", "model.heads=2", "model.layers=1", "chosen.graddiff=1e-2", "chosen.npo=1e-3",
    "chosen.wagle_graddiff=1e-3", "chosen.wagle_npo=1e-3", "chosen.ga=1e-3",
]  # fmt: skip


def test_a_tiny_run_writes_every_row_and_a_second_run_reads_the_cache(tmp_path, monkeypatch):
    output = tmp_path / "klom.json"
    run_entry_point("facts_klom", tmp_path, *TINY, f"output={output}", base=["progress=false"])
    results = json.loads(output.read_text())["results"]
    rows, frontier = results["rows"], results["frontier"]
    methods = {"ga", "graddiff", "npo", "wagle_graddiff", "wagle_npo"}
    assert set(rows) == {"original", "retrain", *methods}
    assert rows["graddiff"] == frontier["graddiff"][1] and rows["npo"] == frontier["npo"][0]
    assert all(row["forget"] >= 0 and len(row["retain_ci95"]) == 2 for row in rows.values())
    assert all("forget_floor" not in row for row in rows.values())
    assert 0 < rows["original"]["forget_probability"] <= 1
    cached = sorted(path.name for path in (tmp_path / "klom").iterdir())
    assert len(cached) == 10 and cached[0].startswith("ga-0.001-")
    output.unlink()

    def unlearn_again(*args, **kwargs):
        raise AssertionError("a cached (method, rate) was unlearned again")

    monkeypatch.setattr(experiments.facts_unlearning, "unlearn_all", unlearn_again)
    run_entry_point("facts_klom", tmp_path, *TINY, f"output={output}", base=["progress=false"])
    assert json.loads(output.read_text())["results"] == results


def test_a_chosen_rate_outside_the_grid_is_refused():
    cfg = OmegaConf.create({"methods": {"npo": {}}, "grid": [1e-3], "chosen": {"npo": 2e-3}})
    with pytest.raises(ValueError, match="chosen.npo must be one of grid"):
        check_chosen(cfg)
    with pytest.raises(ValueError, match="chosen.npo"):
        check_chosen(OmegaConf.create({"methods": {"npo": {}}, "grid": [1e-3], "chosen": {}}))


def test_a_cached_row_is_keyed_by_the_device_auto_resolves_to(tmp_path, monkeypatch):
    """device=auto is CUDA on one machine and the CPU on another: a row measured on one must
    not be read back on the other, and on the CPU it is the row of device=cpu."""
    decides = dict.fromkeys(experiments.facts_klom.DECIDES, 0) | {"methods": {"npo": {}}}
    measured = []

    def row(device):
        cfg = OmegaConf.create(decides | {"device": device})
        measure = lambda: measured.append(device) or {"forget": float(len(measured))}  # noqa: E731
        return experiments.facts_klom.cached_row(cfg, "npo", 1e-3, tmp_path, measure)

    assert row("cpu") == row("auto") == {"forget": 1.0} and measured == ["cpu"]
    monkeypatch.setattr(experiments.facts_klom, "resolve_device", lambda spec: "cuda:0")
    assert row("auto") == {"forget": 2.0} and measured == ["cpu", "auto"]


def _default(name: str, *overrides: str):
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(name, list(overrides), return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


@pytest.mark.parametrize("name", ["facts_unlearning", "facts_klom"])
def test_the_facts_configs_default_to_device_auto_as_every_entry_point(name):
    try:
        assert _default(name).device == "auto"
    finally:
        HydraConfig.instance().cfg = None


def test_on_the_cpu_the_default_reads_the_rows_cached_under_device_cpu(tmp_path, monkeypatch):
    """The rows cached when the facts configs said device=cpu are still read on the CPU."""
    monkeypatch.setattr(experiments.facts_klom, "resolve_device", lambda spec: torch.device("cpu"))
    try:
        for cfg, directory in (
            (_default("facts_klom", "device=cpu"), "cpu"),
            (_default("facts_klom"), "auto"),
        ):
            for name in cfg.methods:
                experiments.facts_klom.cached_row(
                    cfg, name, cfg.grid[0], tmp_path / directory, dict
                )
    finally:
        HydraConfig.instance().cfg = None
    names = {
        directory: sorted(p.name for p in (tmp_path / directory).iterdir())
        for directory in ("cpu", "auto")
    }
    assert names["cpu"] == names["auto"] and len(names["auto"]) == 5
