import json

import numpy as np
import pytest
import torch

from tda.atomic import file_digest
from tda.ranking import top_examples
from tda.scores import open_scores, read_scores, save_scores, write_scores


def test_blocks_written_to_disk_equal_the_in_memory_matrix(tmp_path):
    full = torch.randn(23, 17, generator=torch.Generator().manual_seed(0))
    calls = []

    def score(rows):
        calls.append(len(rows))
        return full[rows]

    matrix = write_scores(score, 23, tmp_path / "s.npy", query_chunk=5, progress=False)
    assert calls == [5, 5, 5, 5, 3]
    np.testing.assert_array_equal(np.asarray(matrix), full.numpy())
    assert not matrix.flags.writeable
    top = top_examples(open_scores(tmp_path / "s.npy"), k=2, chunk_size=4)
    assert torch.equal(top.helpful, full.topk(2, dim=1).indices)


def test_a_failed_run_leaves_no_file(tmp_path):
    def score(rows):
        if rows[0] >= 4:
            raise RuntimeError("killed")
        return torch.zeros(len(rows), 3)

    with pytest.raises(RuntimeError, match="killed"):
        write_scores(score, 10, tmp_path / "s.npy", query_chunk=4, progress=False)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="positive"):
        write_scores(score, 0, tmp_path / "s.npy")


@pytest.mark.parametrize(
    ("shape", "message"),
    [((1, 3), r"shape \[1, 3\] for queries \[0, 4\); expected \[4, 3\]"), ((4,), r"\[4\]")],
)
def test_a_block_of_the_wrong_shape_is_refused_not_broadcast(tmp_path, shape, message):
    with pytest.raises(ValueError, match=message):
        write_scores(
            lambda rows: torch.zeros(shape), 6, tmp_path / "s.npy", query_chunk=4, progress=False
        )
    assert list(tmp_path.iterdir()) == []


def test_a_later_block_with_another_number_of_training_columns_is_refused(tmp_path):
    def score(rows):
        return torch.zeros(len(rows), 3 if rows[0] == 0 else 2)

    with pytest.raises(ValueError, match=r"for queries \[4, 6\); expected \[2, 3\]"):
        write_scores(score, 6, tmp_path / "s.npy", query_chunk=4, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_saved_scores_carry_their_record_and_digest_and_an_old_record_goes_first(
    tmp_path, monkeypatch
):
    scores = np.arange(6, dtype=np.float32).reshape(2, 3)
    path = save_scores(tmp_path / "s", scores, {"attributor": "trak"})
    record = json.loads(path.with_suffix(".json").read_text())
    assert record == {"attributor": "trak", "sha256": file_digest(path)}
    np.testing.assert_array_equal(np.load(path, allow_pickle=False), scores)

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("tda.scores.write_bytes_atomic", killed)  # killed before the record
    with pytest.raises(KeyboardInterrupt):
        save_scores(path, scores + 1, {"attributor": "if"})
    # new scores may stand, but never beside the old record, which described the old ones
    assert not path.with_suffix(".json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.npy"]


def test_read_scores_refuses_scores_without_their_record_or_changed_since(tmp_path):
    scores = np.arange(6, dtype=np.float64).reshape(2, 3)
    path = save_scores(tmp_path / "s", scores, {"attributor": "trak"})
    read, record = read_scores(path)
    np.testing.assert_array_equal(read, scores)
    assert record["attributor"] == "trak"
    assert isinstance(read_scores(path, mmap=True)[0], np.memmap)
    np.save(path, scores + 1)  # replaced behind the record's back
    with pytest.raises(ValueError, match="differs from the scores its record"):
        read_scores(path)
    path.with_suffix(".json").unlink()
    with pytest.raises(FileNotFoundError, match=r"s\.json is missing"):
        read_scores(path)


def test_a_dotted_name_keeps_its_dots_and_gains_the_npy_suffix(tmp_path):
    first = save_scores(tmp_path / "trak-damping0.1", np.ones((2, 3)), {"damping": 0.1})
    second = save_scores(tmp_path / "trak-damping0.01", np.zeros((2, 3)), {"damping": 0.01})
    assert (first.name, second.name) == ("trak-damping0.1.npy", "trak-damping0.01.npy")
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "trak-damping0.01.json",
        "trak-damping0.01.npy",
        "trak-damping0.1.json",
        "trak-damping0.1.npy",
    ]
    scores, record = read_scores(tmp_path / "trak-damping0.1")
    assert record["damping"] == 0.1
    np.testing.assert_array_equal(scores, np.ones((2, 3)))
    assert read_scores(first)[1]["damping"] == 0.1  # the .npy path reads the same pair
