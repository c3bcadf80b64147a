"""Self-attention kernels (SDPA dense mask vs flex_attention BlockMask) and the key/value cache."""

import pytest
import torch

from dalle_zero.nn import attention
from dalle_zero.nn.attention import LayerCache, SelfAttention, build_block_mask
from dalle_zero.nn.masks import KINDS, AttentionPattern


def make_attention(seed: int = 0) -> SelfAttention:
    torch.manual_seed(seed)
    attn = SelfAttention(16, 2)
    for p in attn.parameters():
        torch.nn.init.normal_(p, std=0.3)
    return attn.eval()


@pytest.mark.parametrize("kind", KINDS)
def test_flex_block_mask_gives_the_sdpa_outputs(kind):
    pattern = AttentionPattern(kind, 3, 5, 3)
    attn = make_attention()
    x = torch.randn(2, pattern.length, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        dense = attn(x, pattern.dense(), kernel="sdpa")
        flex = attn(x, build_block_mask(pattern, pattern.length, "cpu"), kernel="flex")
    torch.testing.assert_close(flex, dense, rtol=1e-5, atol=1e-5)


def test_flex_kernel_refuses_a_cpu_backward_with_a_clear_error():
    pattern = AttentionPattern("row", 3, 4, 3)
    attn = make_attention()
    x = torch.randn(1, pattern.length, 16)
    with pytest.raises(ValueError, match="sdpa"):
        attn(x, build_block_mask(pattern, pattern.length, "cpu"), kernel="flex")


@pytest.mark.parametrize("kind", ["full", "row"])
def test_a_bf16_train_step_on_cpu_computes_attention_in_fp32_and_a_no_grad_pass_in_bf16(kind, monkeypatch):

    seen: list[torch.dtype] = []
    sdpa = attention.F.scaled_dot_product_attention

    def recording(q, k, v, **kw):
        seen.append(q.dtype)
        return sdpa(q, k, v, **kw)

    monkeypatch.setattr(attention.F, "scaled_dot_product_attention", recording)
    pattern = AttentionPattern(kind, 3, 5, 3)
    mask = None if kind == "full" else pattern.dense()
    attn = make_attention().train()
    x = torch.randn(2, pattern.length, 16, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = attn(x, mask)
        assert y.dtype == torch.bfloat16 and seen == [torch.float32]
        y.float().sum().backward()
        with torch.no_grad():
            attn(x, mask)
    assert seen == [torch.float32, torch.bfloat16]
    assert torch.isfinite(x.grad).all() and all(torch.isfinite(p.grad).all() for p in attn.parameters())
    monkeypatch.setattr(attention, "CPU_BF16_ATTENTION_IN_FP32", False)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        attn(x, mask)
    assert seen[-1] == torch.bfloat16


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("layout", ["default", "stream_order"])
def test_cached_steps_equal_the_masked_full_pass(kind, layout):
    pattern = AttentionPattern(kind, 3, 5, 3)
    attn = make_attention()
    length = pattern.length - 1
    x = torch.randn(3, length, 16, generator=torch.Generator().manual_seed(2))
    default = layout == "default"  # row: ring of grid + 1 slots; column: column-major slots
    cache = LayerCache(pattern, 3, 2, 8, length, column_major=default, ring=default)
    with torch.no_grad():
        full = attn(x, pattern.dense(length))
        prefix = attn.forward_cached(x[:, :5], cache, 0)  # text + 2 image positions in one call
        steps = [attn.forward_cached(x[:, s : s + 1], cache, s) for s in range(5, length)]
    torch.testing.assert_close(torch.cat([prefix, *steps], dim=1), full, rtol=1e-5, atol=1e-5)


def test_row_cache_is_a_ring_of_one_row_plus_one_after_the_text():
    pattern = AttentionPattern("row", 3, 5, 3)
    cache = LayerCache(pattern, 1, 1, 4, pattern.length)
    assert cache.k.shape[2] == 3 + 5 + 1
    keys = torch.arange(pattern.length, dtype=torch.float32).view(1, 1, -1, 1).expand(1, 1, -1, 4)
    cache.write(0, keys[:, :, :12], keys[:, :, :12])  # text + image positions 0..8: the ring keeps 3..8
    got, _, visible = cache.decode_keys(11)
    assert visible is None  # the ring holds exactly the window
    assert sorted(got[0, 0, :, 0].tolist()) == [0, 1, 2, *range(6, 12)]
    with pytest.raises(ValueError, match="ring"):
        cache.prefix(12)


def test_cache_rejects_writes_past_its_end():
    pattern = AttentionPattern("row", 2, 2)
    cache = LayerCache(pattern, 1, 1, 4, 4)
    with pytest.raises(ValueError, match="cache holds 4"):
        cache.write(3, torch.zeros(1, 1, 2, 4), torch.zeros(1, 1, 2, 4))


@pytest.mark.parametrize("kind", ["column", "conv"])
def test_a_decode_step_reads_its_window_as_a_view_of_the_cache_with_a_mask(kind):
    pattern = AttentionPattern(kind, 3, 5, 3)
    cache = LayerCache(pattern, 32, 2, 4, pattern.length)  # 64 (stream, head) rows
    keys, values, visible = cache.decode_keys(3 + 12)  # image token 12: row 2, column 2
    assert keys.data_ptr() == cache.k.data_ptr() and values.data_ptr() == cache.v.data_ptr()  # no copy
    assert LayerCache(pattern, 1, 2, 4, pattern.length).decode_keys(3 + 12)[2] is None  # one stream: gathered
    read = visible[0].nonzero().flatten().tolist()
    slots = torch.arange(pattern.length) if cache.slots is None else cache.slots
    stream_of_slot = {int(s): p for p, s in enumerate(slots.tolist())}
    want = [p for p in range(3 + 12 + 1) if pattern.allowed(torch.tensor(15), torch.tensor(p))]
    assert sorted(stream_of_slot[s] for s in read) == want and len(want) < 3 + 12 + 1


@pytest.mark.parametrize("kind", ["column", "conv"])
def test_a_long_cache_gathers_a_short_window_and_agrees_with_the_full_pass(kind):
    pattern = AttentionPattern(kind, 2, 10, 3)  # late in the image the slice is far longer than the window
    attn = make_attention()
    length = pattern.length
    x = torch.randn(32, length, 16, generator=torch.Generator().manual_seed(3))
    cache = LayerCache(pattern, 32, 2, 8, length)  # enough rows for the slice to be worth it
    with torch.no_grad():
        full = attn(x, pattern.dense(length))
        steps = [attn.forward_cached(x[:, :3], cache, 0)]
        steps += [attn.forward_cached(x[:, s : s + 1], cache, s) for s in range(3, length)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=1e-5, atol=1e-5)
    gathered = [cache.decode_keys(p)[2] is None for p in range(2 + 1, length)]  # no mask: gathered
    assert any(gathered) and not all(gathered)  # both ways were taken


@pytest.mark.parametrize("kind", KINDS)
def test_a_large_batch_decodes_with_matmuls_and_agrees_with_the_full_pass(kind, monkeypatch):
    pattern = AttentionPattern(kind, 3, 5, 3)
    attn = make_attention()  # 2 heads
    length = pattern.length - 1
    streams = attention.DECODE_MATMUL_MIN_ROWS // 2
    x = torch.randn(streams, length, 16, generator=torch.Generator().manual_seed(4))
    sdpa_calls = []
    sdpa = attention.F.scaled_dot_product_attention
    counted = lambda *a, **k: sdpa_calls.append(1) or sdpa(*a, **k)  # noqa: E731
    monkeypatch.setattr(attention.F, "scaled_dot_product_attention", counted)
    cache = LayerCache(pattern, streams, 2, 8, length)
    with torch.no_grad():
        full = attn(x, pattern.dense(length))
        n_before = len(sdpa_calls)
        steps = [attn.forward_cached(x[:, :3], cache, 0)]
        steps += [attn.forward_cached(x[:, s : s + 1], cache, s) for s in range(3, length)]
    assert len(sdpa_calls) - n_before == 1  # the text prefix only: every image step took the matmul path
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=1e-5, atol=1e-5)
