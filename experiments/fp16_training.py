"""fp16 with per-resblock gradient scales (paper App. D): zero gradients, and loss against fp32.

Two measurements, one JSON row each, printed:

1. ``underflow``: on a 4-layer prior and one random batch, the share of the early layers' parameter
   gradients (layers 0-1, where fp32 has none) that fp16 flushes to zero, under the best single scale
   (the largest power of two at which no resblock overflows) and under per-resblock scales (each
   resblock's own largest, within the paper's clamp [2^7, 2^24]). A small model has no spread of
   gradient sizes across resblocks, so the gradient reaching layers 0-1 from above is multiplied by
   2^-k (k = 0: none) and the loss by 2^11 (a summed loss: the late blocks then overflow above 2^7).
2. ``curves``: the prior trained with fp32 and with fp16 on the same token shards, seed and schedule;
   the training loss of both every ``--log-every`` updates, and the mean gap over the last quarter.

    python experiments/fp16_training.py --tokens demo/tokens --tokenizer demo/tokenizer --steps 300
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

from dalle_zero.models.transformer import DalleTransformer, TransformerConfig
from dalle_zero.tokenizers.bpe import BPETokenizer
from dalle_zero.training.loop import LoopConfig, train
from dalle_zero.training.prior import PriorTask, PriorTrainConfig, build_model, data_model_fields
from dalle_zero.training.underflow import fp16_resblock_gradients, largest_finite_log2, zero_fraction


def underflow(shrink_log2: int) -> dict:
    torch.manual_seed(0)
    config = TransformerConfig(
        n_layer=4, n_head=2, n_embd=32, text_vocab_size=50, text_seq_len=6, image_vocab_size=16, image_grid=4
    )
    model = DalleTransformer(config)
    for head in (model.text_head, model.image_head):  # zero at init: nothing would reach the blocks
        torch.nn.init.normal_(head.weight, std=0.02)

    def shrink(module, inputs, out):
        out.register_hook(lambda g: g * 2.0**-shrink_log2)

    model.blocks[1].register_forward_hook(shrink)
    g = torch.Generator().manual_seed(1)
    text, image = torch.randint(1, 50, (8, 6), generator=g), torch.randint(0, 16, (8, 16), generator=g)

    def loss_fn(m):
        return m.loss(text, image)[0] * 2.0**11

    model.zero_grad()
    loss_fn(model).backward()
    fp32 = [g.clone() for group in model.resblock_parameters()[:4] for g in (p.grad for p in group)]
    best, best_global = largest_finite_log2(model, loss_fn, low=0, high=40)
    one, _ = fp16_resblock_gradients(model, loss_fn, torch.full((8,), 2.0 ** (best_global or 0)))
    own, _ = fp16_resblock_gradients(model, loss_fn, (2.0 ** best.clamp(7, 24)).float())
    return {
        "measure": "underflow",
        "shrink_log2": shrink_log2,
        "best_log2_per_resblock": best.tolist(),
        "global_log2": best_global,
        "zero_fraction_layers_0_1_global": round(zero_fraction([g for b in one[:4] for g in b], fp32), 4),
        "zero_fraction_layers_0_1_per_resblock": round(zero_fraction([g for b in own[:4] for g in b], fp32), 4),
    }


def curves(args: argparse.Namespace) -> dict:
    tokenizer = BPETokenizer.from_pretrained(args.tokenizer)
    fields = {k: v for k, (v, _) in data_model_fields(args.tokens, tokenizer, args.tokenizer).items()}
    model = TransformerConfig(n_layer=args.n_layer, n_head=args.n_head, n_embd=args.n_embd, **fields)
    losses = {}
    with tempfile.TemporaryDirectory() as tmp:
        for precision in ("fp32", "fp16"):
            loop = LoopConfig(steps=args.steps, batch_size=args.batch_size, precision=precision, seed=0,
                              clip_grad_norm=4.0, log_every=args.log_every, checkpoint_every=args.steps)
            cfg = PriorTrainConfig(model=model, loop=loop, tokens=args.tokens, tokenizer=args.tokenizer,
                                   lr=args.lr, lr_schedule="cosine", warmup_steps=args.steps // 20, eval_samples=0)
            run = Path(tmp) / precision
            train(build_model(cfg, seed=0), PriorTask(cfg, tokenizer=tokenizer), loop, run, train_config=cfg,
                  progress=False)
            rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
            rows = [r for r in rows if "loss" in r]
            losses[precision] = [round(r["loss"], 4) for r in rows]
            if precision == "fp16":
                scales = {k: rows[-1][k] for k in rows[-1] if k.startswith("grad_scale")}
                skipped = sum(r["skipped"] * args.log_every for r in rows)
    tail = max(1, len(losses["fp32"]) // 4)
    gap = sum(abs(a - b) for a, b in zip(losses["fp32"][-tail:], losses["fp16"][-tail:])) / tail
    return {"measure": "curves", "steps": args.steps, "log_every": args.log_every, **losses,
            "mean_abs_gap_last_quarter": round(gap, 4), "fp16_final_scales": scales, "fp16_skipped_updates": skipped}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", help="token shards (`dalle encode`); without them only the underflow rows")
    p.add_argument("--tokenizer")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--log-every", type=int, default=25)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--n-layer", type=int, default=4)
    p.add_argument("--n-head", type=int, default=4)
    p.add_argument("--n-embd", type=int, default=128)
    args = p.parse_args()
    torch.set_num_threads(1)
    for k in (0, 20, 26, 30):
        print(json.dumps(underflow(k)), flush=True)
    if args.tokens:
        print(json.dumps(curves(args)), flush=True)


if __name__ == "__main__":
    main()
