import pytest
import torch

from prunelab.errors import PrunelabError
from prunelab.methods import masks


def test_lowest_per_row_prunes_exact_count_even_with_ties():
    scores = torch.tensor([[1.0, 1.0, 1.0, 1.0, 2.0, 2.0], [3.0, 0.0, 3.0, 3.0, 0.0, 1.0]])
    mask = masks.lowest_per_row(scores, 0.5)
    assert mask.sum(dim=1).tolist() == [3, 3]
    # Ties are broken by position: the first three of the equal ones go.
    assert mask[0].tolist() == [True, True, True, False, False, False]
    assert mask[1].tolist() == [False, True, False, False, True, True]


@pytest.mark.parametrize("k", [0, 1, 7, 20, 39, 40])
def test_lowest_k_equals_the_first_k_of_a_stable_sort(k):
    # Few distinct values, as in dequantized 4-bit weights: ties everywhere.
    scores = torch.randint(0, 5, (6, 40), generator=torch.Generator().manual_seed(k)).float()
    expected = torch.zeros_like(scores, dtype=torch.bool)
    expected.scatter_(1, torch.sort(scores, dim=1, stable=True).indices[:, :k], True)
    assert torch.equal(masks.lowest_k_per_row(scores, k), expected)


def test_lowest_in_matrix_counts_int_numel_times_s():
    scores = torch.arange(30, dtype=torch.float32).view(5, 6)
    mask = masks.lowest_in_matrix(scores, 0.37)
    assert int(mask.sum()) == int(30 * 0.37)
    assert mask.flatten()[: int(30 * 0.37)].all()


@pytest.mark.parametrize("n,m", [(2, 4), (4, 8), (1, 8), (7, 8), (3, 4)])
def test_n_of_m_keeps_n_in_every_group(n, m):
    scores = torch.randn(16, 32)
    mask = masks.lowest_n_of_m(scores, masks.NMPattern(n, m))
    kept = (~mask).view(16, 32 // m, m).sum(-1)
    assert (kept == n).all()
    # The kept ones are the largest of their group.
    grouped = scores.view(16, -1, m)
    kept_min = torch.where((~mask).view(16, -1, m), grouped, torch.inf).amin(-1)
    pruned_max = torch.where(mask.view(16, -1, m), grouped, -torch.inf).amax(-1)
    assert (kept_min >= pruned_max).all()


@pytest.mark.parametrize("text", ["4:4", "5:4", "0:4", "2-4", "a:b", "2:"])
def test_bad_patterns_are_user_errors(text):
    with pytest.raises(PrunelabError):
        masks.parse_pattern(text)


def test_pattern_must_divide_width():
    with pytest.raises(PrunelabError, match="does not divide"):
        masks.lowest_n_of_m(torch.randn(4, 10), masks.NMPattern(2, 4))


@pytest.mark.parametrize("value", [-0.1, 1.0, 1.5])
def test_sparsity_range(value):
    with pytest.raises(PrunelabError, match=r"outside \[0, 1\)"):
        masks.check_sparsity(value)
