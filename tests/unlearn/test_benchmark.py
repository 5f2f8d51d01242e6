import json
from dataclasses import replace
from functools import partial

import numpy as np
import pytest
import torch

import unlearn.tuning
from tda.checkpoints import list_checkpoints
from tda.data.examples import Examples
from tda.ensemble import member_directory
from tda.fingerprint import model_fingerprint
from tda.models import MLP
from tda.task import IGNORE_INDEX, LanguageModelingTask
from tda.training import TrainConfig
from tda.transformer import CausalTransformer
from unlearn import (
    ClassForgetSet,
    ExactRetraining,
    FineTune,
    ForgetSplit,
    LoopConfig,
    RandomForgetSet,
    benchmark,
    ensembles,
    forget_request,
    interval,
    klom,
    klom_report,
    load_or_train,
    load_or_train_oracles,
    margins_of,
    metrics_of,
    oracle_directory,
    select_on_proxy,
    tune_on_proxy,
    unlearn_each,
)
from unlearn.benchmark import UnlearnedGroup
from unlearn.tuning import Selection, average_selections, join_selections, relative_sum

FACTORY = partial(MLP, 40, (16,), 10)
CONFIG = TrainConfig(epochs=2, batch_size=32)
T_975_2DOF = 4.302652729749464  # Student t quantile 0.975 with 2 degrees of freedom


@pytest.fixture(scope="module")
def small(mnist):
    """120 training and 60 test examples of the shared MNIST-1D fixture."""
    return mnist.train.subset(range(120)), mnist.test.subset(range(60))


def test_interval_is_the_student_t_interval():
    summary = interval([1.0, 2.0, 3.0])
    assert summary["mean"] == 2.0 and summary["n"] == 3
    assert summary["ci95"] == pytest.approx(T_975_2DOF / np.sqrt(3), rel=1e-10)
    assert interval([5.0])["ci95"] is None
    with pytest.raises(ValueError, match="finite values"):
        interval([1.0, float("nan")])


def test_oracles_are_exact_retraining_and_resume_with_their_recorded_times(small, tmp_path):
    train, _ = small
    forget = RandomForgetSet(0.1).indices(train)
    first = load_or_train_oracles(FACTORY, train, forget, CONFIG, [3, 4], tmp_path)
    again = load_or_train_oracles(FACTORY, train, forget, CONFIG, [3, 4], tmp_path)
    assert [model_fingerprint(m) for m in first.models] == [
        model_fingerprint(m) for m in again.models
    ]
    assert first.seconds == again.seconds and all(s > 0 for s in first.seconds)
    directory = oracle_directory(tmp_path, forget)
    assert json.loads((directory / "seconds-seed-3.json").read_text())["seed"] == 3
    split = ForgetSplit.of(train, forget_request(forget, train))
    retrained = ExactRetraining(FACTORY, CONFIG, init_seed=3).unlearn(
        first.models[1], split, seed=3
    )
    assert model_fingerprint(retrained) == model_fingerprint(first.models[0])


def test_an_oracle_killed_before_its_time_was_recorded_is_retrained_and_timed(
    small, tmp_path, monkeypatch
):
    train, _ = small
    forget = RandomForgetSet(0.1).indices(train)

    def killed(path, data, **options):
        raise KeyboardInterrupt(f"killed before writing {path}")

    with monkeypatch.context() as patch:
        patch.setattr(ensembles, "write_bytes_atomic", killed)  # only the seconds record
        with pytest.raises(KeyboardInterrupt, match="seconds-seed-5.json"):
            load_or_train_oracles(FACTORY, train, forget, CONFIG, [5], tmp_path)
    member = member_directory(oracle_directory(tmp_path, forget), 5)
    finished = list_checkpoints(member)[-1]
    assert finished.epoch == CONFIG.epochs  # the oracle was saved, its time was not
    again = load_or_train_oracles(FACTORY, train, forget, CONFIG, [5], tmp_path)
    assert np.isfinite(again.seconds[0]) and again.seconds[0] > 0
    assert model_fingerprint(again.models[0]) == finished.fingerprint


def test_an_unlearner_that_returns_the_oracles_has_zero_gap_and_zero_klom(small, tmp_path):
    train, test = small
    forget = RandomForgetSet(0.1).indices(train)
    split = ForgetSplit.of(train, forget_request(forget, train))
    oracles = load_or_train_oracles(FACTORY, train, forget, CONFIG, [0, 1], tmp_path)
    floor = load_or_train_oracles(FACTORY, train, forget, CONFIG, [2, 3], tmp_path)
    metrics = metrics_of(oracles.models, split, test, seeds=[0, 1])
    group = UnlearnedGroup(oracles.models, metrics, [s / 10 for s in oracles.seconds])
    report = benchmark(
        group, oracles.models, metrics, oracles.seconds, split, test, floor_oracles=floor.models
    )
    assert report["average_gap"] == 0.0 and report["paired_gap"]["mean"] == 0.0
    klom = report["klom"]
    assert klom["forget"] == klom["retain"] == klom["validation"] == 0.0
    assert klom["forget_floor"] > 0.0 and klom["direction"] == "KL(unlearned || oracle)"
    expected = np.mean([s / np.median(oracles.seconds) / 10 for s in oracles.seconds])
    assert report["time_fraction"]["mean"] == pytest.approx(expected, rel=1e-12)
    assert report["metrics"]["UA"] == report["oracle_metrics"]["UA"]
    json.dumps(report, allow_nan=False)


def test_the_report_measures_the_benchmarked_models_against_the_oracles_on_every_point_set(
    small, tmp_path
):
    """The originals (which still fit F) benchmarked against the oracles: each group's reported
    means are its own runs' means, and KLOM on forget / retain / validation compares the two
    groups' margins on exactly those points."""
    train, test = small
    forget = RandomForgetSet(0.1).indices(train)
    split = ForgetSplit.of(train, forget_request(forget, train))
    seeds = [0, 1, 2, 3]  # with 2 models a side every KLOM sits at the same ceiling
    originals = load_or_train(FACTORY, train, CONFIG, seeds, tmp_path / "models")
    oracles = load_or_train_oracles(FACTORY, train, forget, CONFIG, seeds, tmp_path / "oracles")
    group = UnlearnedGroup(originals, metrics_of(originals, split, test, seeds=seeds), [1.0] * 4)
    oracle_metrics = metrics_of(oracles.models, split, test, seeds=seeds)
    validation = test.subset(range(30))
    with pytest.warns(UserWarning, match="4 models on a side"):
        report = benchmark(
            group, oracles.models, oracle_metrics, oracles.seconds, split, validation
        )
    for key in ("UA", "RA", "TA", "MIA"):
        assert report["metrics"][key]["mean"] == pytest.approx(
            np.mean([run[key] for run in group.metrics]), rel=1e-12
        )
        assert report["oracle_metrics"][key]["mean"] == pytest.approx(
            np.mean([run[key] for run in oracle_metrics]), rel=1e-12
        )
    assert report["metrics"]["UA"]["mean"] != report["oracle_metrics"]["UA"]["mean"]
    points = {"forget": split.forget, "retain": split.retain, "validation": validation}
    for name, examples in points.items():
        expected = klom(margins_of(originals, examples), margins_of(oracles.models, examples))
        assert report["klom"][name] == expected, name
    assert report["klom"]["validation"] != report["klom"]["retain"]  # the sets tell apart


def test_klom_of_language_models_compares_their_sequence_log_likelihoods():
    torch.manual_seed(0)
    models = [
        CausalTransformer(vocab_size=6, context=5, dim=4, heads=2, layers=1) for _ in range(6)
    ]
    tokens = torch.randint(1, 6, (9, 5))
    targets = torch.where(torch.arange(5) < 2, IGNORE_INDEX, torch.roll(tokens, -1, dims=1))
    points = {"forget": Examples(tokens, targets)}
    task = LanguageModelingTask()
    judged, oracles, floor = models[:2], models[2:4], models[4:]
    with pytest.warns(UserWarning, match="2 models on a side and 20 bins"):
        report = klom_report(judged, oracles, floor, points, task=task)
    fewer = klom_report(judged, oracles, None, points, task=task, bins=2)  # no warning: 2 >= 2
    assert fewer["forget"] == klom(
        margins_of(judged, points["forget"], task=task),
        margins_of(oracles, points["forget"], task=task),
        bins=2,
    )

    def measured(group):
        return margins_of(group, points["forget"], task=task)

    assert report["forget"] == klom(measured(judged), measured(oracles))
    assert report["forget_floor"] == klom(measured(floor), measured(oracles))
    assert (
        report["forget"] > 0.0
        and klom_report(oracles, oracles, None, points, task=task, bins=2)["forget"] == 0.0
    )


def test_unlearn_each_uses_each_originals_seed_and_leaves_the_originals_alone(small, tmp_path):
    train, test = small
    originals = load_or_train(FACTORY, train, CONFIG, [0, 1], tmp_path)
    before = [model_fingerprint(m) for m in originals]
    forget = RandomForgetSet(0.1).indices(train)
    method = FineTune(LoopConfig(epochs=1))
    group = unlearn_each(method, originals, train, forget, test, seeds=[0, 1])
    assert [model_fingerprint(m) for m in originals] == before
    assert len(group.models) == len(group.metrics) == len(group.seconds) == 2
    assert set(group.metrics[0]) == {"UA", "RA", "TA", "MIA"}
    with pytest.raises(ValueError, match="2 originals but 1 seeds"):
        unlearn_each(FineTune(), originals, train, forget, test, seeds=[0])


def test_the_proxy_selection_picks_the_value_closest_to_the_proxy_oracles(small, tmp_path):
    train, test = small
    originals = load_or_train(FACTORY, train, CONFIG, [0], tmp_path)
    proxy = RandomForgetSet(0.1).proxy(train).indices(train)
    sgd = lambda lr: LoopConfig(epochs=1, optimizer=partial(torch.optim.SGD, lr=lr))  # noqa: E731
    candidates = {lr: FineTune(sgd(lr)) for lr in (0.0, 0.05, 0.5)}
    # Make the "oracle" metrics those of lr = 0.05 itself: the rule must pick it with score 0.
    target = unlearn_each(candidates[0.05], originals, train, proxy, test, seeds=[0]).metrics
    selection = select_on_proxy(
        "loop.optimizer.lr", candidates, originals, train, proxy, target, test, seeds=[0]
    )
    assert selection.chosen == 0.05 and selection.grid == [0.0, 0.05, 0.5]
    assert selection.scores[1] == 0.0 and min(selection.scores[0], selection.scores[2]) > 0
    record = selection.to_dict()
    assert record["parameter"] == "loop.optimizer.lr" and "proxy forget set" in record["rule"]
    diverging = {lr: FineTune(sgd(lr)) for lr in (1e30, 0.05)}  # lr 1e30 gives infinite weights
    selection = select_on_proxy("lr", diverging, originals, train, proxy, target, test, seeds=[0])
    assert selection.scores[0] is None and selection.metrics[0] is None
    assert selection.chosen == 0.05 and selection.scores[1] == 0.0
    with pytest.raises(ValueError, match="every value of lr"):
        select_on_proxy(
            "lr", {1e30: diverging[1e30]}, originals, train, proxy, target, test, seeds=[0]
        )
    with pytest.raises(ValueError, match="grid is empty"):
        select_on_proxy("lr", {}, originals, train, proxy, target, test, seeds=[0])


def test_the_gap_and_klom_criterion_weighs_both_against_the_untouched_originals(small, tmp_path):
    train, test = small
    originals = load_or_train(FACTORY, train, CONFIG, [0, 1], tmp_path)
    proxy = RandomForgetSet(0.1).proxy(train).indices(train)
    sgd = lambda lr: LoopConfig(epochs=1, optimizer=partial(torch.optim.SGD, lr=lr))  # noqa: E731
    candidates = {lr: FineTune(sgd(lr)) for lr in (0.0, 0.05, 0.5)}
    # The "oracles" are lr = 0.05's own unlearned models: its gap and KLOM are both exactly 0.
    group = unlearn_each(candidates[0.05], originals, train, proxy, test, seeds=[0, 1])
    split = ForgetSplit.of(train, forget_request(proxy, train))
    margins = margins_of(group.models, split.forget)
    selection = select_on_proxy(
        "lr", candidates, originals, train, proxy, group.metrics, test, seeds=[0, 1],
        proxy_oracle_margins=margins,
    )  # fmt: skip
    assert selection.criterion == "gap+klom" and selection.chosen == 0.05
    assert selection.gaps[1] == 0.0 and selection.kloms[1] == 0.0 and selection.scores[1] == 0.0
    untouched = selection.untouched
    assert untouched["klom"] == klom(margins_of(originals, split.forget), margins)
    for gap, measure, score in zip(selection.gaps, selection.kloms, selection.scores, strict=True):
        assert score == pytest.approx(gap / untouched["gap"] + measure / untouched["klom"])
    record = selection.to_dict()
    assert record["criterion"] == "gap+klom" and "KLOM P95" in record["rule"]
    by_gap = select_on_proxy(
        "lr", candidates, originals, train, proxy, group.metrics, test, seeds=[0, 1]
    )
    assert by_gap.criterion == "gap" and by_gap.kloms is None and by_gap.untouched is None


def _selection(gaps, kloms, untouched):
    metrics = [None if g is None else {"UA": g, "RA": 0.0, "TA": 0.0, "MIA": 0.0} for g in gaps]
    return Selection("lr", [0.1, 0.2, 0.3], relative_sum(gaps, kloms, untouched), metrics,
                     {"UA": 1.0, "RA": 2.0, "TA": 3.0, "MIA": 4.0}, 0.1, "gap+klom", gaps,
                     kloms, untouched)  # fmt: skip


def test_selections_on_several_proxies_are_averaged_and_the_choice_remade():
    one = _selection([1.0, 2.0, 3.0], [4.0, 4.0, 4.0], {"gap": 4.0, "klom": 8.0})
    two = _selection([5.0, 1.0, None], [4.0, 2.0, None], {"gap": 2.0, "klom": 4.0})
    averaged = average_selections([one, two])
    # scores: one 0.75 / 1.0 / 1.25, two 3.5 / 1.0 / None -> the mean picks 0.2
    assert averaged.scores == pytest.approx([2.125, 1.0, None]) and averaged.chosen == 0.2
    assert averaged.gaps == [3.0, 1.5, None] and averaged.kloms == [4.0, 3.0, None]
    assert averaged.untouched == {"gap": 3.0, "klom": 6.0} and averaged.metrics[2] is None
    assert averaged.metrics[0]["UA"] == 3.0 and len(averaged.to_dict()["per_proxy"]) == 2
    with pytest.raises(ValueError, match="share their grid and criterion"):
        average_selections([one, replace(two, grid=[1, 2, 3])])
    with pytest.raises(ValueError, match="diverged on some proxy"):
        average_selections([one, _selection([None] * 3, [None] * 3, {"gap": 1.0, "klom": 1.0})])


def test_searches_of_two_variants_join_into_one_over_both_grids():
    untouched = {"gap": 4.0, "klom": 8.0}
    sgd = _selection([1.0, 2.0, 3.0], [4.0, 4.0, 4.0], untouched)  # scores 0.75 / 1.0 / 1.25
    adam = _selection([None, 1.0, 0.5], [None, 2.0, 4.0], untouched)  # None / 0.5 / 0.625
    joined = join_selections({"sgd": sgd, "adam": adam})
    assert joined.grid == [["sgd", 0.1], ["sgd", 0.2], ["sgd", 0.3]] + [
        ["adam", 0.1],
        ["adam", 0.2],
        ["adam", 0.3],
    ]
    assert joined.chosen == ["adam", 0.2] and joined.ranking()[1] == ["adam", 0.3]
    assert joined.scores == pytest.approx([0.75, 1.0, 1.25, None, 0.5, 0.625])
    assert joined.parameter == "variant, lr" and joined.kloms[3] is None
    assert Selection.from_dict(json.loads(json.dumps(joined.to_dict()))) == joined
    with pytest.raises(ValueError, match="'adam' was scored on other proxies"):
        join_selections({"sgd": sgd, "adam": replace(adam, untouched={"gap": 1.0, "klom": 8.0})})
    with pytest.raises(ValueError, match="no searches"):
        join_selections({})


def test_tuning_on_several_class_proxies_averages_them(small, tmp_path):
    train, test = small
    originals = load_or_train(FACTORY, train, CONFIG, [0], tmp_path / "models")
    sgd = lambda lr: LoopConfig(epochs=1, optimizer=partial(torch.optim.SGD, lr=lr))  # noqa: E731
    candidates = {lr: FineTune(sgd(lr)) for lr in (0.0, 0.05)}
    settings = dict(seeds=[0], model_factory=FACTORY, config=CONFIG, oracle_seeds=[7],
                    oracle_root=tmp_path / "oracles")  # fmt: skip
    forget_set = ClassForgetSet(2)
    both = tune_on_proxy(
        "lr", candidates, forget_set, originals, train, test, proxies=2, **settings
    )
    first = tune_on_proxy("lr", candidates, forget_set, originals, train, test, **settings)
    assert len(both.per_proxy) == 2 and first.per_proxy is None
    assert both.per_proxy[0]["oracle_metrics"] != both.per_proxy[1]["oracle_metrics"]
    assert both.per_proxy[0]["gaps"] == first.gaps
    assert both.gaps == pytest.approx(
        [np.mean([record["gaps"][i] for record in both.per_proxy]) for i in range(2)]
    )


def test_tuning_trains_each_proxys_oracles_and_measures_ta_without_the_proxys_class(
    small, tmp_path, monkeypatch
):
    """Tuning looks at no model trained without the real F: the oracles it asks for are the
    proxies' (disjoint from F), and a class proxy's TA is measured on the test points of the
    other classes (the proxy's, not F's, evaluation set)."""
    train, test = small
    originals = load_or_train(FACTORY, train, CONFIG, [0], tmp_path / "models")
    asked = []

    def recording(factory, data, indices, *rest):
        asked.append(np.array(indices))
        return load_or_train_oracles(factory, data, indices, *rest)

    monkeypatch.setattr(unlearn.tuning, "load_or_train_oracles", recording)
    untouched = FineTune(LoopConfig(epochs=1, optimizer=partial(torch.optim.SGD, lr=0.0)))
    forget_set = ClassForgetSet(2)
    selection = tune_on_proxy(
        "lr", {0.0: untouched}, forget_set, originals, train, test, proxies=2, seeds=[0],
        model_factory=FACTORY, config=CONFIG, oracle_seeds=[7], oracle_root=tmp_path / "oracles",
    )  # fmt: skip
    proxies = forget_set.proxies(train, 2)
    assert [proxy.label for proxy in proxies] == [3, 4] and len(asked) == 2
    real = forget_set.indices(train)
    for indices, proxy, record in zip(asked, proxies, selection.per_proxy, strict=True):
        np.testing.assert_array_equal(indices, proxy.indices(train))
        assert len(np.intersect1d(indices, real)) == 0
        others = test.subset(np.flatnonzero(test.targets.numpy() != proxy.label))
        oracle = load_or_train_oracles(
            FACTORY, train, proxy.indices(train), CONFIG, [7], tmp_path / "oracles"
        ).models[0]
        for model, measured in (
            (oracle, record["oracle_metrics"]),
            (originals[0], record["metrics"][0]),
        ):
            with torch.no_grad():
                hits = (model(others.inputs).argmax(dim=1) == others.targets).double()
            assert measured["TA"] == pytest.approx(100.0 * float(hits.mean()), rel=1e-12)


def test_relative_sum_puts_both_measures_in_units_of_the_untouched_model():
    scores = relative_sum([1.0, 2.0, None], [4.0, 1.0, None], {"gap": 2.0, "klom": 4.0})
    assert scores == [1.5, 1.25, None]
    assert relative_sum([0.5], [1.0], {"gap": 0.0, "klom": 1.0}) == [0.5 / 1e-9 + 1.0]


def test_an_unknown_tuning_criterion_is_refused(small, tmp_path):
    train, test = small
    with pytest.raises(ValueError, match="unknown tuning criterion 'klom'"):
        tune_on_proxy(
            "lr", {0.1: FineTune()}, RandomForgetSet(0.1), [], train, test, seeds=[],
            model_factory=FACTORY, config=CONFIG, oracle_seeds=[], oracle_root=tmp_path,
            criterion="klom",
        )  # fmt: skip
