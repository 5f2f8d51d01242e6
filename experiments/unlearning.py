"""Benchmark one unlearner on one forget set against N retrained oracles (METHODS.md, Unlearning).

Trains or loads N originals (``${workspace}/models``) and N (+N for the KLOM floor) oracles on R
(``${workspace}/oracles``), picks the tuned hyperparameter on a proxy forget set inside R
(unlearn.tuning; DMM's predictor is first calibrated on the same proxy), unlearns every original
and writes UA/RA/TA/MIA, average gap, KLOM P95 and time as a fraction of retraining to
``${workspace}/results/<results_name>.json``. A killed run resumes: models and oracles are
kept, and the proxy search's finished evaluations are read back from its journal
(``results/.search/<results_name>/``, deleted once the record is written). A finished run
(status ``ok`` or ``diverged``) started again with the same settings (:data:`VOLATILE` aside) and
library versions is skipped and returns its recorded average gap, so a killed multirun started
again redoes only its unfinished jobs; ``rerun=true`` recomputes it:

    python experiments/unlearning.py unlearner=retrain forget=class   # also trains every model
    python experiments/unlearning.py -m hydra/launcher=local unlearner=ft,ga,rl,salun forget=class
    python -m experiments.unlearn_table runs/mnist1d_mlp --forget class --output results/x.json

Run one job first: parallel jobs that find the same models missing would train them twice.
"""

import contextlib
import copy
import hashlib
import itertools
import json
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate, to_absolute_path
from omegaconf import DictConfig, OmegaConf, open_dict

import unlearn
from tda.arguments import check_positive_int
from tda.atomic import write_bytes_atomic
from tda.describe import describe
from tda.device import on_device, resolve_device
from tda.timing import warm_up_torch
from tda.versions import package_versions


def setting(cfg: DictConfig) -> tuple:
    """An unlearning configuration's workspace, data splits, forget set, model factory (on its
    device) and training recipe, with torch's threads set and its start-up paid."""
    torch.set_num_threads(cfg.threads)
    warm_up_torch()
    workspace = Path(to_absolute_path(cfg.workspace))
    splits, forget_set = instantiate(cfg.data), instantiate(cfg.forget)
    factory, config = on_device(instantiate(cfg.model), cfg.device), instantiate(cfg.train)
    return workspace, splits, forget_set, factory, config


@hydra.main(config_path="../conf", config_name="unlearn", version_base="1.3")
def main(cfg: DictConfig) -> float:
    """Run the benchmark; returns the average gap to the oracles (inf if unlearning diverged)."""
    check_positive_int("models", cfg.models)
    check_positive_int("tuning.models", cfg.tuning.models)
    recorded = _finished_gap(cfg)  # before any model is loaded or trained
    if recorded is not None:
        return recorded
    workspace, splits, forget_set, factory, config = setting(cfg)
    train = splits.train
    seeds = list(range(cfg.models))
    originals = unlearn.load_or_train(factory, train, config, seeds, workspace / "models")
    forget = forget_set.indices(train)
    count = 2 * cfg.models if cfg.klom_floor else cfg.models
    oracle_seeds = [cfg.oracle_seed + i for i in range(count)]
    oracles = unlearn.load_or_train_oracles(
        factory, train, forget, config, oracle_seeds, workspace / "oracles"
    )
    shared = shared_parts(cfg)
    model_seconds = _prepare_for_models(shared, originals)  # before any request on them
    calibration = calibrate_predictor(cfg, shared, originals, splits.train, forget_set, workspace)
    built = build_candidates(cfg, shared)  # a bad unlearner or tuning key fails before the claim
    journal, claimed = _journal(cfg, workspace)
    with _released_on_error(journal, claimed):
        candidates, selection = _tuned_methods(
            cfg, built, originals, splits, forget_set, workspace, journal
        )
        test = forget_set.evaluation_test(splits.test)
        split = unlearn.ForgetSplit.of(train, unlearn.forget_request(forget, train))
        record = {"forget_size": len(forget), "seeds": seeds, "oracle_seeds": oracle_seeds}
        record["tuning"] = selection.to_dict() if selection else None
        record["predictor_seconds"] = _prepare_predictors(candidates, forget, model_seconds)
        record["calibration"] = calibration
        try:
            used, group, diverged = unlearn.unlearn_each_stable(
                candidates, originals, train, forget, test, seeds=seeds
            )
        except FloatingPointError as error:
            _write(cfg, workspace, {**record, "status": "diverged", "error": str(error)})
            journal.clear()
            return float("inf")
        reference, floor = oracles.models[: cfg.models], oracles.models[cfg.models :] or None
        metrics = unlearn.metrics_of(reference, split, test, seeds=oracle_seeds[: cfg.models])
        report = unlearn.benchmark(
            group, reference, metrics, oracles.seconds, split, splits.test, floor_oracles=floor
        )
        method = describe(dict(candidates)[used])
        record |= {"status": "ok", **report, "used": used, "diverged": diverged, "method": method}
        record["original"] = unlearn.untouched_report(
            originals, reference, metrics, split, test, splits.test, seeds=seeds
        )
        _write(cfg, workspace, record)
        journal.clear()
    return report["average_gap"]


def _write(cfg: DictConfig, workspace: Path, record: dict) -> None:
    """``${workspace}/results/<results_name>.json`` with the settings, versions and command."""
    record |= {
        "settings": OmegaConf.to_container(cfg, resolve=True),
        "versions": _versions(),
        "resolved_device": str(resolve_device(cfg.device)),
        "command": [sys.executable, *sys.argv],
        "overrides": list(HydraConfig.get().overrides.task),
    }
    path = _record_path(cfg, workspace)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(path, json.dumps(record, indent=2, allow_nan=False).encode())
    print(f"{path}: {record['status']}, average gap {record.get('average_gap', float('inf')):.2f}")


VOLATILE = ("progress", "threads", "rerun", "device")
"""Settings that do not change a run's record: a finished run started again with other values of
them is still skipped (or, with ``rerun=true``, replaced), and a killed run restarted with other
values of them resumes (its journal and claim). ``device`` is compared as resolved instead
(``device=cpu`` and ``device=auto`` on a CPU machine are one run; :func:`_finished_gap`)."""


def portable_settings(settings: dict) -> dict:
    """``settings`` (resolved) as runs compare them: :data:`VOLATILE` keys dropped and the
    workspace's spelling (``runs/x``, ``./runs/x/``, an absolute path, a moved workspace) replaced
    by ``${workspace}`` in every path under it, since a record is found through its workspace."""
    workspace = str(settings.get("workspace", "")).rstrip("/")

    def portable(value):
        if isinstance(value, dict):
            return {key: portable(item) for key, item in value.items()}
        if isinstance(value, list):
            return [portable(item) for item in value]
        if isinstance(value, str) and workspace and value.startswith(workspace):
            rest = value[len(workspace) :]
            if not rest or rest.startswith("/"):
                return "/".join(["${workspace}", *filter(None, rest.split("/"))])
        return value

    return {key: portable(value) for key, value in settings.items() if key not in VOLATILE}


def _record_path(cfg: DictConfig, workspace: Path) -> Path:
    return workspace / "results" / f"{cfg.results_name}.json"


def _finished_gap(cfg: DictConfig) -> float | None:
    """The recorded average gap (inf if it diverged) of this configuration's finished run, which is
    then skipped: its record holds the same settings (:data:`VOLATILE` aside) and library versions
    (:func:`_versions`) and ran on the device ``device`` resolves to here (``auto`` is ``cpu`` on
    one machine and ``cuda`` on another; records from before ``resolved_device`` was written are
    taken as they are). ``None`` when the run is to be made: no record, ``rerun=true``, or a
    record of other versions or another device (replaced, as before).

    Raises:
        ValueError: ``results_name`` holds a record of other settings (:func:`_same_run_record`),
            refused here before any model is trained.
    """
    path = _record_path(cfg, Path(to_absolute_path(cfg.workspace)))
    record = _same_run_record(cfg, path)
    if cfg.rerun or record is None or record.get("status") not in ("ok", "diverged"):
        return None
    if record.get("versions") != _versions():
        print(f"{path}: recorded with other library versions; recomputing it")
        return None
    device = str(resolve_device(cfg.device))
    if record.get("resolved_device", device) != device:
        print(f"{path}: recorded on {record['resolved_device']}, not {device}; recomputing it")
        return None
    gap = record.get("average_gap", float("inf"))
    print(
        f"{path}: already recorded with these settings and versions ({record['status']}, "
        f"average gap {gap:.2f}); skipped (rerun=true recomputes it)"
    )
    return gap


def _same_run_record(cfg: DictConfig, path: Path) -> dict | None:
    """The record at ``path`` if it holds this configuration's settings (:data:`VOLATILE` aside,
    so a record from before a volatile key existed matches); ``None`` if there is none.

    Raises:
        ValueError: ``path`` records a run with other settings.
    """
    if not path.is_file():
        return None
    record = json.loads(path.read_text())
    as_recorded = json.loads(json.dumps(OmegaConf.to_container(cfg, resolve=True)))
    settings = portable_settings(as_recorded)
    recorded = portable_settings(record.get("settings", {}))
    differing = sorted(
        key for key in settings.keys() | recorded.keys() if settings.get(key) != recorded.get(key)
    )
    if differing:
        raise ValueError(
            f"{path} records a run with other {differing}; pass another results_name "
            "(or delete that record to replace it)"
        )
    return record


def _journal(cfg: DictConfig, workspace: Path) -> tuple[unlearn.SearchJournal, bool]:
    """The proxy search's journal: a killed run, started again with the same configuration (but
    for its :data:`VOLATILE` settings) and library versions, reads back the evaluations it
    finished; cleared once the record is written.

    The journal also claims ``results_name`` for this configuration (:func:`_claim`); returns
    it and whether this run made the claim (``False``: it resumes, or joins, an earlier one's)."""
    root = workspace / "results" / ".search" / cfg.results_name
    settings = OmegaConf.to_container(cfg, resolve=True)
    journal = unlearn.SearchJournal(root, run_digest(settings, cfg.device))
    return journal, _claim(cfg, workspace, journal)


def run_digest(settings: dict, device: str) -> str:
    """SHA-256 of what makes a run's outcome: its ``settings`` as runs compare them
    (:func:`portable_settings`: a run restarted with other threads or progress, or from another
    spelling of its workspace, is the same run), the library versions, and ``device`` as resolved
    (``auto`` differs between machines)."""
    resolved = str(resolve_device(device))
    context = {"settings": portable_settings(settings), "versions": _versions(), "device": resolved}
    return hashlib.sha256(json.dumps(context, sort_keys=True).encode()).hexdigest()


def _claim(cfg: DictConfig, workspace: Path, journal: unlearn.SearchJournal) -> bool:
    """Refuse to let two configurations share ``results_name``: one record would silently replace
    the other (e.g. ``forget.label=3`` under the default name of label 0's run, or a multirun over
    a key the name does not carry). A finished record with other settings is refused, and a job
    claims the name for its configuration while it runs (first claimant wins; a killed run's claim
    stays for its resumption). Returns whether this call made the claim.

    Raises:
        ValueError: ``results_name`` holds, or is being written by, another configuration.
    """
    _same_run_record(cfg, _record_path(cfg, workspace))  # one may have finished meanwhile
    claim = journal.root / ".claim"
    made = write_bytes_atomic(claim, journal.context.encode(), replace=False)  # first writer wins
    if claim.read_text() != journal.context:
        raise ValueError(
            f"another configuration is writing results_name={cfg.results_name!r} (its claim: "
            f"{claim}; a killed run's stays for its resumption); pass another results_name, or "
            "delete that directory to abandon the other run"
        )
    return made


@contextlib.contextmanager
def _released_on_error(journal: unlearn.SearchJournal, claimed: bool) -> Iterator[None]:
    """Withdraw the claim this run made (``claimed``) if the run fails before its journal holds
    anything: nothing is left to resume, and the corrected command must not be refused as
    "another configuration". A run killed (or interrupted) keeps its claim, as does one whose
    journal holds evaluations."""
    try:
        yield
    except Exception:
        if claimed and len(journal) == 0:
            (journal.root / ".claim").unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                journal.root.rmdir()  # only if empty
        raise


def shared_parts(cfg) -> dict:
    """Objects every candidate shares: DMM's output predictor, built (and featurized) once."""
    return {"predictor": build_predictor(cfg)} if "predictor" in cfg.unlearner else {}


def build_predictor(cfg: DictConfig, **kwargs: Any):
    """``cfg.predictor`` (with ``kwargs`` set), its ``model_factory``, if it has one, put on
    ``cfg.device`` by :func:`tda.device.on_device` as every other factory of the run is: its
    members, oracles or retrainings are trained there. The settings still hold the bare
    ``${model}``, so a run's record and resume keys read as before."""
    if "model_factory" not in cfg.predictor:
        return instantiate(cfg.predictor, **kwargs)
    factory = on_device(instantiate(cfg.model), cfg.device)
    rest = copy.deepcopy(cfg)  # Hydra would merge (and rebuild) an object passed as a setting
    with open_dict(rest):
        del rest.predictor.model_factory
    return instantiate(rest.predictor, _partial_=True, **kwargs)(model_factory=factory)


def build_candidates(cfg: DictConfig, shared: dict) -> dict:
    """``{value: unlearner}`` for every value of the search (:func:`search_grid`), or
    ``{None: unlearner}`` when no ``tuning.parameter`` is named."""
    if cfg.tuning.parameter is None:
        return {None: build_unlearner(cfg.unlearner, shared)}
    keys, values = search_grid(cfg.tuning)
    return {
        value: build_unlearner(cfg.unlearner, shared, settings_of(keys, value)) for value in values
    }


def _tuned_methods(cfg, candidates, originals, splits, forget_set, workspace, journal):
    """``[(value, unlearner)]`` of :func:`build_candidates`, best proxy value first, when
    ``tuning.parameter`` is named."""
    if cfg.tuning.parameter is None:
        return list(candidates.items()), None
    keys, _ = search_grid(cfg.tuning)
    count = min(cfg.tuning.models, cfg.models)
    selection = unlearn.tune_on_proxy(
        ", ".join(keys),
        candidates,
        forget_set,
        originals[:count],
        splits.train,
        splits.test,
        seeds=list(range(count)),
        model_factory=on_device(instantiate(cfg.model), cfg.device),
        config=instantiate(cfg.train),
        oracle_seeds=[cfg.oracle_seed + i for i in range(count)],
        oracle_root=workspace / "oracles",
        criterion=cfg.tuning.criterion,
        proxies=cfg.tuning.proxies,
        journal=journal,
    )
    return [(value, candidates[value]) for value in selection.ranking()], selection


def search_grid(tuning: DictConfig) -> tuple[list[str], list]:
    """The searched dotted keys inside ``unlearner`` and the search's values, in order.

    ``tuning.grid`` for ``tuning.parameter`` alone; with ``tuning.also`` (more keys, each with its
    values, e.g. ``+tuning.also.fraction=[0.1,0.5,0.9]``; Hydra nests a dotted key such as
    ``+tuning.also.loop.optimizer.lr=[...]``, read back as ``loop.optimizer.lr``) every
    combination, as a tuple in key order, ``parameter`` varying slowest.
    """
    also = _dotted(OmegaConf.to_container(tuning.get("also") or OmegaConf.create({})))
    keys = [tuning.parameter, *also]
    if not also:
        return keys, list(tuning.grid)
    return keys, list(itertools.product(tuning.grid, *also.values()))


def _dotted(tree: dict, prefix: str = "") -> dict[str, list]:
    """``{"loop.optimizer.lr": [...]}`` from ``{"loop": {"optimizer": {"lr": [...]}}}``."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat |= _dotted(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def settings_of(keys: list[str], value) -> dict:
    """``{key: setting}`` of one value of :func:`search_grid` (a tuple or list for several keys)."""
    return dict(zip(keys, value if len(keys) > 1 else [value], strict=True))


def build_unlearner(
    unlearner_cfg: DictConfig, shared: dict, settings: Mapping[str, Any] | None = None
):
    """The unlearner of ``unlearner_cfg`` with the ``shared`` objects in place of their configs
    and each dotted key of ``settings`` (e.g. ``loop.optimizer.lr``) set to its value."""
    own = OmegaConf.to_container(unlearner_cfg, resolve=True)
    variant = OmegaConf.create({k: v for k, v in own.items() if k not in shared})
    for key, value in (settings or {}).items():
        OmegaConf.update(variant, key, value)
    return instantiate(variant, _partial_=True)(**shared)


def calibrate_predictor(cfg, shared, originals, train, forget_set, workspace) -> dict | None:
    """Fit the shared DMM predictor's scales on the proxy forget sets (``calibrate_predictor``);
    uses the tuning protocol's originals, proxies (``tuning.proxies``, pooled) and their oracles."""
    if not cfg.calibrate_predictor:
        return None
    count = min(cfg.tuning.models, cfg.models)
    calibration = unlearn.calibrate_on_proxy(
        shared["predictor"],
        forget_set,
        originals[:count],
        train,
        model_factory=on_device(instantiate(cfg.model), cfg.device),
        config=instantiate(cfg.train),
        oracle_seeds=[cfg.oracle_seed + i for i in range(count)],
        oracle_root=workspace / "oracles",
        proxies=cfg.tuning.proxies,
    )
    calibration.apply(shared["predictor"])
    return calibration.to_dict()


def _prepare_for_models(shared, originals) -> float:
    """Seconds for the shared predictor's per-model work (``prepare_model``), if it has any."""
    prepare = getattr(shared.get("predictor"), "prepare_model", None)
    start = time.perf_counter()
    for model in originals if prepare is not None else ():
        prepare(model)
    return time.perf_counter() - start


def _prepare_predictors(candidates, forget, model_seconds: float) -> float | None:
    """Seconds to ready each candidate's output predictor for ``forget`` (DMM / OM), if any,
    plus ``model_seconds`` of its per-model work.

    Attribution cost is reported apart from unlearning time, since one featurization (or one set
    of oracles, or one reference per model) serves many requests; the candidates share one
    predictor.
    """
    predictor = getattr(candidates[0][1], "predictor", None)
    if predictor is None:
        return None
    start = time.perf_counter()
    predictor.prepare(forget)
    return time.perf_counter() - start + model_seconds


def _versions() -> dict[str, str]:
    packages = ("tda-unlearn", "torch", "numpy", "scipy", "scikit-learn", "hydra-core", "mnist1d")
    return package_versions(*packages)


if __name__ == "__main__":
    main()
