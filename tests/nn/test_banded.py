"""Banded attention for row/column/conv layers equals dense masked attention, values and gradients."""

import pytest
import torch
import torch.nn.functional as F

from dalle_zero.nn.banded import BandedLayout, banded_attention
from dalle_zero.nn.masks import AttentionPattern

SPARSE = ("row", "column", "conv")


@pytest.mark.parametrize("kind", SPARSE)
@pytest.mark.parametrize(
    "text_len,grid,n_image",
    [(5, 4, 15), (5, 4, 16), (3, 5, 7), (2, 6, 1), (9, 8, 63)],  # training streams lack the last token
)
def test_banded_attention_equals_the_dense_mask_with_gradients(kind, text_len, grid, n_image):
    pattern = AttentionPattern(kind, text_len, grid, 3 if grid < 8 else 5)
    length = text_len + n_image
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, length, 4, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(3))
    dense = F.scaled_dot_product_attention(q, k, v, attn_mask=pattern.dense(length))
    banded = banded_attention(q, k, v, BandedLayout.build(pattern, length))
    torch.testing.assert_close(banded, dense)
    weights = torch.randn(dense.shape, generator=g, dtype=torch.float64)
    expected = torch.autograd.grad((dense * weights).sum(), (q, k, v))
    for got, want in zip(torch.autograd.grad((banded * weights).sum(), (q, k, v)), expected):
        torch.testing.assert_close(got, want)


def test_windows_match_the_paper_patterns_at_32x32():
    row, column, conv = (BandedLayout.build(AttentionPattern(k, 65, 32, 11), 65 + 1023) for k in SPARSE)
    assert (row.back, column.back, conv.back) == (1, 0, 6)  # previous row; own column; 5 rows + wrap
    assert row.window == 64 and column.window == 32 and column.order is not None and row.order is None
    assert row.worthwhile() and column.worthwhile() and not conv.worthwhile()
    # each query's allowed keys in its window: row 33 (once past the first row), column = its row index + 1
    allowed = torch.isfinite(row.bias[5, :, 65:]).sum(-1)
    assert torch.equal(allowed, torch.full((32,), 33))
    assert torch.equal(torch.isfinite(column.bias[3, :, 65:]).sum(-1), torch.arange(1, 33))


def test_full_pattern_and_wrong_lengths_are_refused():
    with pytest.raises(ValueError, match="full attention"):
        BandedLayout.build(AttentionPattern("full", 3, 4), 10)
    with pytest.raises(ValueError, match="image positions"):
        BandedLayout.build(AttentionPattern("row", 3, 4), 3)
    layout = BandedLayout.build(AttentionPattern("row", 3, 4), 10)
    q = torch.zeros(1, 1, 11, 4)
    with pytest.raises(ValueError, match="10 positions"):
        banded_attention(q, q, q, layout)


def test_bf16_inputs_give_bf16_outputs_close_to_fp32():
    pattern = AttentionPattern("row", 9, 8, 5)
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(1, 2, 72, 8, generator=g) for _ in range(3))
    layout = BandedLayout.build(pattern, 72)
    ref = banded_attention(q, k, v, layout)
    out = banded_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), layout)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref, rtol=0.05, atol=0.05)
