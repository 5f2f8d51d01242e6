import numpy as np
import pytest
import torch

from tda.ranking import top_examples
from tda.scores import open_scores, write_scores


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
