"""bench_methods: a row says the threads its seconds were timed with, cached or not."""

import numpy as np
import torch

from benchmarks.bench_methods import Bench, table


def test_rows_carry_the_threads_their_cached_seconds_were_timed_with(tmp_path):
    """Cached rows kept the seconds of the run that computed them, at its thread count, beside
    rows timed now: the table mixed one- and two-thread times without saying so."""
    masks = np.random.default_rng(0).random((6, 4)) < 0.5
    outputs = np.random.default_rng(1).normal(size=(6, 1, 3))
    bench = Bench("toy", (masks, outputs), tmp_path, fresh=False, first={})
    older = tmp_path / "scores" / "toy" / "old" / "model-0.npz"
    older.parent.mkdir(parents=True)
    np.savez(older, scores=np.ones((3, 4)), seconds=7.0, info="{}")  # before threads were kept

    def score(member):
        return np.full((3, 4), float(member))

    rows = bench.ensemble("old", [1, 2], score, [1, 2]) + bench.ensemble("new", [1], score, [1])
    current = torch.get_num_threads()
    assert [row["threads"] for row in rows] == [None, [current, None], current]
    assert rows[0]["seconds"] == 7.0
    again = Bench("toy", (masks, outputs), tmp_path, fresh=False, first={})
    assert again.ensemble("new", [1], score, [1])[0]["threads"] == current  # read back
    lines = table(rows).splitlines()
    assert lines[0].endswith("| time (s) | threads |") and lines[2].endswith("| 7.0 | ? |")
