#!/usr/bin/env python
"""Forward + backward time of one attention layer's kernel at a bench configuration: dense mask vs banded vs causal.

    python benchmarks/bench_attention.py                       # large32 shapes: batch 4, 8 heads × 64, 65 + 1023
    python benchmarks/bench_attention.py --grid 16 --text 33 --batch 8 --head-dim 32    # dalle_full shapes

For each sparse kind (row, column, conv) and precision (fp32, bf16) it times, on the same random q, k, v
(Tensor[B, nh, L, hs] with requires_grad), ``F.scaled_dot_product_attention`` with the pattern's dense
boolean mask, :func:`dalle_zero.nn.banded.banded_attention` with its layout, and plain causal SDPA (what a
"full" layer costs), each followed by ``backward``. Medians of ``--reps`` after 2 warm-ups, 2 threads.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--grid", type=int, default=32)
    ap.add_argument("--text", type=int, default=65, help="text positions incl. BOS")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--kernel-size", type=int, default=11)
    ap.add_argument("--reps", type=int, default=7)
    args = ap.parse_args()

    import torch
    import torch.nn.functional as F

    from dalle_zero.nn.banded import BandedLayout, banded_attention
    from dalle_zero.nn.masks import AttentionPattern

    common.set_threads()
    length = args.text + args.grid * args.grid - 1  # a training stream: the last image token is not an input
    for dtype in (torch.float32, torch.bfloat16):
        g = torch.Generator().manual_seed(0)
        shape = (args.batch, args.heads, length, args.head_dim)
        q, k, v = (torch.randn(shape, generator=g).to(dtype).requires_grad_() for _ in range(3))

        def timed(attend, *inputs, **options) -> float:
            def step() -> None:
                out = attend(*inputs, **options)
                out.backward(torch.ones_like(out))

            return statistics.median(common.timeit(step, warmup=2, reps=args.reps)) * 1000

        sdpa = F.scaled_dot_product_attention
        causal = timed(sdpa, q, k, v, is_causal=True)
        for kind in ("row", "column", "conv"):
            pattern = AttentionPattern(kind, args.text, args.grid, args.kernel_size)
            mask, layout = pattern.dense(length), BandedLayout.build(pattern, length)
            dense = timed(sdpa, q, k, v, attn_mask=mask)
            banded = timed(banded_attention, q, k, v, layout)
            common.emit(
                "attention",
                f"{kind}.{str(dtype).removeprefix('torch.')}.fwd_bwd",
                round(banded, 2),
                "ms_banded",
                dense_ms=round(dense, 2),
                causal_ms=round(causal, 2),
                banded_over_dense=round(banded / dense, 3),
                keys_per_query_banded=args.text + layout.window,
                stream_len=length,
                worthwhile=layout.worthwhile(),
                shape=list(shape),
                torch=torch.__version__,
            )


if __name__ == "__main__":
    main()
