"""Attention patterns against brute-force references written from the paper's Fig. 11 (App. B.1)."""

import pytest
import torch

from dalle_zero.nn.masks import (
    KINDS,
    AttentionPattern,
    attention_mask,
    image_key_window,
    paper_layer_pattern,
)


def reference_mask(kind: str, text_len: int, grid: int, kernel: int) -> torch.Tensor:
    """Loop-by-loop reading of Fig. 11 (conv: the reading in docs/faithfulness.md)."""
    n = grid * grid
    size = text_len + n
    mask = torch.zeros(size, size, dtype=torch.bool)
    for q in range(size):
        for k in range(size):
            if q < text_len:
                mask[q, k] = k <= q  # text: causal over text
            elif k < text_len:
                mask[q, k] = True  # image sees all text
            else:
                p, j = q - text_len, k - text_len
                if kind == "full":
                    ok = j <= p
                elif kind == "row":  # keys p-W ... p
                    ok = p - grid <= j <= p
                elif kind == "column":
                    ok = j <= p and (p - j) % grid == 0
                else:  # k = p + W*dr + dc, dr, dc in [-r, r], k <= p
                    r = kernel // 2
                    ok = any(j == p + grid * dr + dc and j <= p for dr in range(-r, r + 1) for dc in range(-r, r + 1))
                mask[q, k] = ok
    return mask


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("grid,kernel", [(4, 3), (5, 3), (5, 5), (3, 5)])
def test_mask_equals_brute_force_reference(kind, grid, kernel):
    got = attention_mask(kind, 3, grid, kernel)
    assert got.dtype == torch.bool and got.shape == (3 + grid * grid,) * 2
    assert torch.equal(got, reference_mask(kind, 3, grid, kernel))


@pytest.mark.parametrize("kind", KINDS)
def test_masks_are_causal_and_allow_self(kind):
    m = attention_mask(kind, 5, 6, 5)
    assert not torch.triu(m, diagonal=1).any()
    assert m.diagonal().all()
    assert m[5:, :5].all()  # every image query sees all text


def test_paper_sized_windows_have_the_documented_key_counts():
    assert len(image_key_window("row", 32)) == 33
    assert len(image_key_window("column", 32)) == 32
    conv = image_key_window("conv", 32, 11)
    assert len(conv) == 61
    expected = set(range(6)) | {32 * a + c for a in range(1, 6) for c in range(-5, 6)}
    assert set(conv.tolist()) == expected


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("grid,kernel", [(4, 3), (5, 5)])
def test_key_window_describes_every_image_query(kind, grid, kernel):
    text_len = 2
    mask = attention_mask(kind, text_len, grid, kernel)
    window = image_key_window(kind, grid, kernel)
    assert torch.equal(window, window.sort().values)
    for p in range(grid * grid):
        allowed = set((mask[text_len + p, text_len:].nonzero().flatten()).tolist())
        assert allowed == {p - d for d in window.tolist() if p - d >= 0}


def test_pattern_dense_is_a_crop_of_the_full_mask():
    pattern = AttentionPattern("conv", 3, 4, 3)
    full = attention_mask("conv", 3, 4, 3)
    assert torch.equal(pattern.dense(), full)
    assert torch.equal(pattern.dense(10), full[:10, :10])


def test_paper_layer_pattern_matches_appendix_b1():
    kinds = paper_layer_pattern(64)
    assert kinds[:4] == ("row", "column", "row", "row")
    assert kinds[-1] == "conv"
    assert kinds.count("column") == 16 and kinds.count("row") == 47
    assert [j for j, k in enumerate(kinds) if k == "column"] == list(range(1, 62, 4))
    assert paper_layer_pattern(1) == ("conv",)
    assert paper_layer_pattern(3, last=None) == ("row", "column", "row")


def test_bad_arguments_are_value_errors():
    with pytest.raises(ValueError, match="kind"):
        attention_mask("diagonal", 2, 4)
    with pytest.raises(ValueError, match="odd"):
        attention_mask("conv", 2, 4, 4)
    with pytest.raises(ValueError, match="n_layer"):
        paper_layer_pattern(0)
