"""Bytes on the wire under the paper's PowerSGD hook, for tests/training/test_powersgd.py.

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/training/powersgd_worker.py OUT.json \
        --n-embd 32 --n-head 2 --n-layer 2 --rank 8 --shards 2 [--steps 2]

Each process builds a transformer of that width (tiny vocabularies and grid), wraps it in DDP with the
hook, and counts the bytes of every tensor handed to ``torch.distributed.all_reduce`` during each
training step's backward pass, which is all gradient traffic: DDP sends nothing of its own once a
communication hook is registered. Rank 0 writes ``{"bytes": [per step], "numel": {...}}`` to OUT.json.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository, for `tests.training`


class _Loss(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, text: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        return self.model.loss(text, image)[0]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    for name in ("--n-embd", "--n-head", "--n-layer", "--rank", "--shards"):
        parser.add_argument(name, type=int, required=True)
    parser.add_argument("--steps", type=int, default=2)
    args = parser.parse_args()

    from dalle_zero.models.transformer import DalleTransformer, TransformerConfig
    from dalle_zero.training import distributed

    ctx = distributed.setup("cpu")
    torch.manual_seed(0)  # the same weights on every rank (DDP also broadcasts rank 0's)
    config = TransformerConfig(
        n_layer=args.n_layer, n_head=args.n_head, n_embd=args.n_embd, text_vocab_size=16, text_seq_len=4,
        image_vocab_size=16, image_grid=2, attn_pattern=("full",) * args.n_layer,
    )
    model = DalleTransformer(config)
    for head in (model.text_head, model.image_head):  # zero-initialised: no gradient would reach the blocks
        nn.init.normal_(head.weight, std=0.02)
    ddp = distributed.wrap(_Loss(model), ctx, powersgd_rank=args.rank, powersgd="paper",
                           powersgd_shards=args.shards, blocks=model.repeated_blocks())

    sent = [0]
    all_reduce = dist.all_reduce

    def counting_all_reduce(tensor: torch.Tensor, *a, **kw):
        sent[0] += tensor.numel() * tensor.element_size()
        return all_reduce(tensor, *a, **kw)

    dist.all_reduce = counting_all_reduce
    per_step = []
    g = torch.Generator().manual_seed(ctx.rank)
    for _ in range(args.steps):
        sent[0] = 0
        text = torch.randint(0, 16, (2, 4), generator=g)
        image = torch.randint(0, 16, (2, 4), generator=g)
        ddp(text, image).backward()
        per_step.append(sent[0])
        model.zero_grad(set_to_none=True)
    dist.all_reduce = all_reduce

    matrices = sum(p.numel() for b in model.repeated_blocks() for p in b.parameters() if p.ndim == 2)
    if ctx.is_main:
        numel = {"total": model.num_parameters(), "block_matrices": matrices}
        Path(args.out).write_text(json.dumps({"bytes": per_step, "numel": numel}))
    # DDP's reducer holds gloo work objects; left to interpreter shutdown, after the group is destroyed,
    # freeing them can abort the process ("terminate called without an active exception")
    del ddp
    gc.collect()
    distributed.finish(ctx)  # no rank leaves while another may still talk to it, then the group goes


if __name__ == "__main__":
    main()
