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


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_kth_smallest_is_kthvalue_in_every_float_dtype(dtype):
    scores = torch.randn(33, 70, generator=torch.Generator().manual_seed(3)).to(dtype)
    scores[0, :50] = scores[0, 7]  # ties at the k-th value
    scores[1, 3] = torch.nan  # NaN ranks last, in both
    columns = scores[:, ::2]  # not contiguous
    for matrix in (scores, columns):
        for k in (1, 17, matrix.shape[1]):
            expected = matrix.kthvalue(k, dim=1, keepdim=True).values
            torch.testing.assert_close(masks.kth_smallest(matrix, k), expected, rtol=0, atol=0,
                                       equal_nan=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_zero_where_is_masked_fill_bit_for_bit(dtype):
    generator = torch.Generator().manual_seed(5)
    weight = torch.randn(12, 40, generator=generator).to(dtype)
    mask = torch.rand(12, 40, generator=generator) < 0.5
    expected = weight.masked_fill(mask, 0)
    assert masks.zero_where(weight, mask).view(torch.uint8).equal(expected.view(torch.uint8))
    assert not weight[mask].eq(0).all()  # the input is left alone
    columns = weight[:, 8:24]  # a view into a wider matrix, changed in place
    masks.zero_where_(columns, mask[:, 8:24])
    assert torch.equal(weight, weight.masked_fill(torch.zeros_like(mask).index_fill_(
        1, torch.arange(8, 24), True) & mask, 0))
    assert weight[:, 8:24][mask[:, 8:24]].view(torch.uint8).eq(0).all()  # +0.0, no sign bit


def test_row_counts_count_true_per_row():
    mask = torch.rand(7, 300) < 0.3
    assert torch.equal(masks.row_counts(mask), mask.sum(dim=1, keepdim=True).to(torch.int32))


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


@pytest.mark.parametrize("n,m,groups", [(2, 4, 40), (1, 4, 1), (3, 4, 3), (4, 8, 16), (4, 8, 1),
                                          (1, 8, 9), (6, 16, 4)])
def test_n_of_m_is_the_first_of_a_stable_sort_in_every_group(n, m, groups):
    generator = torch.Generator().manual_seed(n * m + groups)
    scores = torch.randint(0, 3, (12, groups * m), generator=generator).float()  # many ties
    scores[0, 1] = scores[3, : m] = torch.nan  # NaN sorts last
    grouped = scores.view(12, groups, m)
    expected = torch.zeros_like(grouped, dtype=torch.bool)
    expected.scatter_(-1, torch.sort(grouped, dim=-1, stable=True).indices[..., : m - n], True)
    assert torch.equal(masks.lowest_n_of_m(scores, masks.NMPattern(n, m)), expected.view(12, -1))


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
