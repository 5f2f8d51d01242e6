"""A journaled proxy search resumes: finished evaluations are read back, not recomputed."""

from dataclasses import dataclass
from functools import partial
from typing import ClassVar

import pytest
import torch

from tda.models import MLP
from tda.training import TrainConfig
from unlearn import FineTune, LoopConfig, RandomForgetSet, load_or_train, select_on_proxy
from unlearn.journal import SearchJournal

FACTORY = partial(MLP, 40, (16,), 10)


@pytest.fixture(scope="module")
def small(mnist):
    return mnist.train.subset(range(120)), mnist.test.subset(range(60))


@dataclass(frozen=True)
class CountedFineTune(FineTune):
    """FT that counts how often it unlearns."""

    calls: ClassVar[list[float]] = []

    def unlearn(self, model, split, *, seed, mask=None):
        CountedFineTune.calls.append(self.loop.optimizer.keywords["lr"])
        return super().unlearn(model, split, seed=seed, mask=mask)


def _search(small, tmp_path, journal, proxy_number=0):
    train, test = small
    originals = load_or_train(FACTORY, train, TrainConfig(epochs=2, batch_size=32), [0], tmp_path)
    proxy = RandomForgetSet(0.1).proxies(train, 2)[proxy_number].indices(train)
    sgd = lambda lr: LoopConfig(epochs=1, optimizer=partial(torch.optim.SGD, lr=lr))  # noqa: E731
    candidates = {lr: CountedFineTune(sgd(lr)) for lr in (1e30, 0.05, 0.5)}  # 1e30 diverges
    target = [{"UA": 10.0, "RA": 90.0, "TA": 50.0, "MIA": 10.0}]
    return select_on_proxy(
        "lr", candidates, originals, train, proxy, target, test, seeds=[0], journal=journal
    )


def test_a_rerun_reads_every_finished_evaluation_back(small, tmp_path):
    CountedFineTune.calls.clear()
    plain = _search(small, tmp_path, None)
    journal = SearchJournal(tmp_path / "journal", context="run-a")
    first = _search(small, tmp_path, journal)
    assert first.to_dict() == plain.to_dict() and first.scores[0] is None
    assert len(journal) == 3  # the diverged value is recorded too
    CountedFineTune.calls.clear()
    again = _search(small, tmp_path, journal)
    assert CountedFineTune.calls == [] and again.to_dict() == first.to_dict()


def test_another_context_or_setting_misses(small, tmp_path):
    journal = SearchJournal(tmp_path / "journal", context="run-a")
    _search(small, tmp_path, journal)
    CountedFineTune.calls.clear()
    _search(small, tmp_path, SearchJournal(tmp_path / "journal", context="run-b"))
    assert sorted(CountedFineTune.calls) == [0.05, 0.5, 1e30]
    assert len(journal) == 6
    assert journal.key(method="x", seeds=[0]) != journal.key(method="x", seeds=[1])
    journal.clear()
    assert len(journal) == 0 and journal.get(journal.key(method="x")) is None


def test_a_search_on_another_proxy_misses_and_matches_its_own_plain_search(small, tmp_path):
    """The outcomes of one proxy forget set are never read back for another."""
    CountedFineTune.calls.clear()
    plain = _search(small, tmp_path, None, proxy_number=1)
    journal = SearchJournal(tmp_path / "journal", context="run-a")
    _search(small, tmp_path, journal, proxy_number=0)
    CountedFineTune.calls.clear()
    other = _search(small, tmp_path, journal, proxy_number=1)
    assert sorted(CountedFineTune.calls) == [0.05, 0.5, 1e30] and len(journal) == 6
    assert other.to_dict() == plain.to_dict()
