import numpy as np
import pytest
import torch

from tda.data import Examples
from tda.plots import plot_top_examples
from tda.ranking import top_examples, top_indices


def test_top_examples_match_a_full_sort_in_any_chunking():
    scores = torch.randn(9, 30, generator=torch.Generator().manual_seed(0))
    order = scores.argsort(dim=1, descending=True)
    for chunk_size in (1, 4, 100):
        top = top_examples(scores, k=3, chunk_size=chunk_size)
        assert torch.equal(top.helpful, order[:, :3])
        assert torch.equal(top.harmful, order.flip(1)[:, :3])
        assert torch.equal(top.helpful_scores, scores.gather(1, order[:, :3]))
        assert torch.equal(top.harmful_scores, scores.gather(1, order.flip(1)[:, :3]))
    with pytest.raises(ValueError, match="k must be"):
        top_examples(scores, k=31)


def test_ties_go_to_the_lower_index_on_both_ends():
    scores = torch.zeros(1, 40, dtype=torch.float64)
    scores[0, [31, 3, 25, 17]] = 1.0  # four tied helpful examples, 36 tied harmful ones
    top = top_examples(scores, k=3)
    assert top.helpful.tolist() == [[3, 17, 25]]
    assert top.harmful.tolist() == [[0, 1, 2]]
    assert top_indices(scores[0], 5).tolist() == [3, 17, 25, 31, 0]
    assert top_indices(scores[0], 5, largest=False).tolist() == [0, 1, 2, 4, 5]


def test_nan_scores_are_refused_naming_the_query_instead_of_ranked_most_helpful():
    scores = np.zeros((5, 4), dtype=np.float32)
    scores[3, 1] = np.nan
    with pytest.raises(ValueError, match="scores of query 3 contain NaN"):
        top_examples(scores, k=1, chunk_size=2)


@pytest.mark.parametrize(
    ("scores", "options", "message"),
    [
        (torch.zeros(4), {}, r"scores must be \[n_query >= 1, n_train\], got \[4\]"),
        (torch.zeros(0, 4), {}, r"got \[0, 4\]"),
        (torch.zeros(2, 4), {"chunk_size": 0}, "chunk_size must be at least 1, got 0"),
    ],
)
def test_bad_score_matrices_and_chunk_sizes_are_refused(scores, options, message):
    with pytest.raises(ValueError, match=message):
        top_examples(scores, k=1, **options)


def test_figure_is_written(tmp_path):
    train = Examples(torch.randn(12, 40), torch.arange(12) % 3)
    queries = Examples(torch.randn(2, 40), torch.tensor([0, 1]))
    top = top_examples(torch.randn(2, 12), k=2)
    path = tmp_path / "top.png"
    plot_top_examples(queries, train, top, rows=[0, 1], path=path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
