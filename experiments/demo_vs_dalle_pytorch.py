#!/usr/bin/env python
"""Our demo prior vs a DALLE-pytorch prior trained on the same tokens for the same minutes (issue 5).

    python experiments/demo_vs_dalle_pytorch.py --demo demo [--out DIR]

Reads a finished ``dalle demo`` folder and:

1. exports the training pairs of our token shards (our BPE ids, our dVAE codes) and the held-out
   captions the demo's evaluation used, as plain tensors;
2. in the DALLE-pytorch venv (``--venv``: default ``$DALLE_PYTORCH_VENV`` or ``~/.venv-dalle-pytorch``) trains a
   ``dalle_pytorch.DALLE`` of the same width/depth/heads and attention pattern (row, column, row,
   conv -> axial_row, axial_col, axial_row, conv_like) with its own defaults (Adam 3e-4, grad clip
   0.5, as its train_dalle.py) at our batch size for the same wall-clock seconds our prior trained
   (``stages/prior.json``), feeding image token ids directly; its ``vae`` is a DiscreteVAE of the
   same grid and vocabulary whose weights are never used. Then it samples the same number of
   candidates per caption (temperature 1, no top-k, its public cached ``forward(..., cache=)``);
3. back here, decodes both sets of codes with OUR dVAE, keeps the best candidate by OUR reranker,
   and computes the same in-house figures with OUR evaluator and R-precision CLIP
   (:func:`dalle_zero.evaluation.evaluate.split_figures`) for both, on the same captions.

Each side picks its faster torch thread count (1 or all cores) under the current load. Prints one
JSON row per figure and writes ``OUT/results.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

HELD_OUT = ("validation", "unseen_compositions", "unseen_concepts")
DALLE_PYTORCH_ATTN = {"row": "axial_row", "column": "axial_col", "conv": "conv_like", "full": "full"}


def emit(metric: str, value=None, **extra) -> None:
    row = {"section": "demo_vs_dalle_pytorch", "metric": metric}
    if value is not None:
        row["value"] = value
    row.update(extra)
    print(json.dumps(row), flush=True)


def faster_threads(torch) -> int:
    """All cores, or 1 thread if that is >= 1.2x faster on a small matmul workload right now (the rule
    of dalle_zero.runtime.fastest_thread_count, repeated here because this also runs in the other venv)."""
    cores = os.cpu_count() or 1
    x, w = torch.randn(1024, 256), torch.randn(256, 1024, requires_grad=True)
    times = {}
    for n in sorted({1, cores}):
        torch.set_num_threads(n)
        t = math.inf
        for _ in range(5):
            t0 = time.perf_counter()
            (x @ w).relu().sum().backward()
            with torch.no_grad():
                for _ in range(20):
                    torch.softmax(x[:16] @ w, -1)
            t = min(t, time.perf_counter() - t0)
        times[n] = t
    best = 1 if times[1] * 1.2 <= times[cores] else cores
    torch.set_num_threads(best)
    return best


# ---------------------------------------------------------------------------------------------
# the DALLE-pytorch side (runs in its own venv)


def worker(args: argparse.Namespace) -> None:
    import warnings

    warnings.filterwarnings("ignore")
    import torch
    from dalle_pytorch import DALLE, DiscreteVAE
    from dalle_pytorch.dalle_pytorch import gumbel_sample

    spec = json.loads(Path(args.spec).read_text())
    train = torch.load(args.train, weights_only=True)
    evals = torch.load(args.eval, weights_only=True)
    threads = faster_threads(torch)
    torch.manual_seed(0)
    grid, size = spec["image_grid"], spec["image_size"]
    vae = DiscreteVAE(
        image_size=size,
        num_layers=int(round(math.log2(size // grid))),
        num_tokens=spec["image_vocab_size"],
        codebook_dim=16,
        hidden_dim=8,
    )
    dalle = DALLE(
        dim=spec["n_embd"],
        vae=vae,
        num_text_tokens=spec["text_vocab_size"],
        text_seq_len=spec["text_seq_len"],
        depth=spec["n_layer"],
        heads=spec["n_head"],
        dim_head=spec["n_embd"] // spec["n_head"],
        attn_types=tuple(DALLE_PYTORCH_ATTN[k] for k in spec["attn_pattern"]),
    )
    params = [p for n, p in dalle.named_parameters() if p.requires_grad and not n.startswith("vae.")]
    opt = torch.optim.Adam(params, lr=3e-4)
    text, image = train["text"], train["image"]
    n, bsz = len(text), spec["batch_size"]
    g = torch.Generator().manual_seed(0)
    dalle.train()
    steps, losses, t0 = 0, [], time.perf_counter()
    while time.perf_counter() - t0 < args.seconds:
        idx = torch.randint(n, (bsz,), generator=g)
        loss = dalle(text[idx], image[idx], return_loss=True)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 0.5)
        opt.step()
        steps += 1
        losses.append(float(loss))
    train_s = time.perf_counter() - t0

    # sampling: temperature 1, no top-k, the public cached forward (as the reference harness does)
    dalle.eval()
    tsl, isl, ntt = dalle.text_seq_len, dalle.image_seq_len, dalle.num_text_tokens
    codes = {}
    t1 = time.perf_counter()
    gen = torch.Generator().manual_seed(args.seed)
    with torch.no_grad():
        for split, ids in evals.items():
            rows = ids.repeat_interleave(args.candidates, dim=0)
            outs = []
            for lo in range(0, len(rows), 64):
                out = rows[lo : lo + 64]
                cache: dict = {}
                for _ in range(isl):
                    logits = dalle(out[:, :tsl], out[:, tsl:], cache=cache)[:, -1, :]
                    torch.manual_seed(int(torch.randint(2**31 - 1, (), generator=gen)))
                    sample = gumbel_sample(logits, temperature=1.0, dim=-1) - ntt
                    out = torch.cat((out, sample[:, None]), dim=-1)
                outs.append(out[:, tsl:])
            codes[split] = torch.cat(outs)
    torch.save(
        {
            "codes": codes,
            "steps": steps,
            "train_seconds": train_s,
            "sample_seconds": time.perf_counter() - t1,
            "loss_first": losses[0] if losses else None,
            "loss_last": sum(losses[-20:]) / max(len(losses[-20:]), 1),
            "threads": threads,
            "parameters": sum(p.numel() for p in params),
        },
        args.out,
    )


# ---------------------------------------------------------------------------------------------
# our side


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--demo", default="demo", help="a finished `dalle demo` folder")
    parser.add_argument("--out", default=None, help="output folder (default DEMO/bench_dalle_pytorch)")
    parser.add_argument("--seconds", type=float, default=None, help="DALLE-pytorch training time (default: ours)")
    parser.add_argument("--samples", type=int, default=None, help="captions per split (default: the demo's eval)")
    parser.add_argument("--candidates", type=int, default=None, help="samples per caption (default: the demo's)")
    parser.add_argument(
        "--guidance-scale",
        type=float,
        default=1.0,
        help="our classifier-free guidance (default 1 = none, as their sampling; the demo's own eval may use more)",
    )
    parser.add_argument(
        "--evaluator", help="evaluator run/model folder to score with (default: the demo's runs/evaluator)"
    )
    parser.add_argument(
        "--venv",
        default=os.environ.get("DALLE_PYTORCH_VENV") or os.path.expanduser("~/.venv-dalle-pytorch"),
        help="venv with DALLE-pytorch installed (default: $DALLE_PYTORCH_VENV or ~/.venv-dalle-pytorch)",
    )
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    parser.add_argument("--train", help=argparse.SUPPRESS)
    parser.add_argument("--eval", help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    compare(args)


def compare(args: argparse.Namespace) -> None:
    import torch

    from dalle_zero.data.metadata import read_dataset_splits, read_metadata
    from dalle_zero.data.tokens import TokenDataset
    from dalle_zero.demo import DemoConfig
    from dalle_zero.evaluation.evaluate import json_ready, split_figures
    from dalle_zero.evaluation.readouts import SplitSamples
    from dalle_zero.evaluation.samples import generate_for_captions, load_real_images, pick_evenly
    from dalle_zero.models.clip import DalleCLIP
    from dalle_zero.models.evaluator import EmojiEvaluator
    from dalle_zero.pipelines.text_to_image import TextToImagePipeline
    from dalle_zero.runtime import fastest_thread_count
    from dalle_zero.sampling.rerank import rerank

    demo = Path(args.demo)
    out = Path(args.out) if args.out else demo / "bench_dalle_pytorch"
    out.mkdir(parents=True, exist_ok=True)
    saved = json.loads((demo / "demo_config.json").read_text())
    config = DemoConfig.from_dict(saved["config"])
    eval_cfg = config.eval.replace(
        splits=HELD_OUT,
        samples=args.samples or config.eval.samples,
        candidates=args.candidates or config.eval.candidates,
        guidance_scale=args.guidance_scale,  # theirs samples unguided: like-for-like by default
    )
    data = Path(json.loads((demo / "stages" / "data.json").read_text())["data"])
    prior_stage = json.loads((demo / "stages" / "prior.json").read_text())
    seconds = args.seconds or float(prior_stage["train_seconds"])
    prior_cfg = json.loads((demo / "runs" / "prior" / "train_config.json").read_text())
    pipeline = TextToImagePipeline.from_pretrained(demo / "model")
    evaluator_dir = Path(args.evaluator) if args.evaluator else demo / "runs" / "evaluator"
    evaluator = EmojiEvaluator.from_pretrained(
        evaluator_dir / "model" if (evaluator_dir / "model").is_dir() else evaluator_dir
    )
    rclip = DalleCLIP.from_pretrained(demo / "runs" / "eval_clip" / "model")
    tok = pipeline.tokenizer
    m = pipeline.transformer.config

    # 1. export our tokens and the evaluation captions
    shards = TokenDataset(demo / "tokens", split="train")
    items = [shards[i] for i in range(len(shards))]
    train = {
        "text": tok.encode([it["caption"] for it in items]),
        "image": torch.stack([it["image_codes"].long() for it in items]),
    }
    torch.save(train, out / "train_tokens.pt")
    meta, splits = read_metadata(data), read_dataset_splits(data)
    picks = {s: pick_evenly(splits[s], eval_cfg.samples) for s in HELD_OUT if splits.get(s)}
    captions = {s: [meta[x]["caption"] for x in stems] for s, stems in picks.items()}
    torch.save({s: tok.encode(c) for s, c in captions.items()}, out / "eval_text.pt")
    spec = {
        "n_embd": m.n_embd,
        "n_layer": m.n_layer,
        "n_head": m.n_head,
        "attn_pattern": list(m.attn_pattern),
        "text_vocab_size": m.text_vocab_size,
        "text_seq_len": m.text_seq_len,
        "image_grid": m.image_grid,
        "image_vocab_size": m.image_vocab_size,
        "image_size": pipeline.dvae.config.image_size,
        "batch_size": prior_cfg["loop"]["batch_size"],
    }
    (out / "spec.json").write_text(json.dumps(spec, indent=2))
    emit(
        "setup",
        seconds=round(seconds, 1),
        train_pairs=len(items),
        evaluator=str(evaluator_dir),
        **spec,
        load=os.getloadavg(),
    )

    # 2. DALLE-pytorch: train for the same seconds, sample
    cmd = [
        str(Path(args.venv) / "bin" / "python"), __file__, "--worker", "--spec", str(out / "spec.json"),
        "--train", str(out / "train_tokens.pt"), "--eval", str(out / "eval_text.pt"), "--seconds", str(seconds),
        "--candidates", str(eval_cfg.candidates), "--seed", str(eval_cfg.seed), "--out", str(out / "dp_codes.pt"),
    ]  # fmt: skip
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    theirs = torch.load(out / "dp_codes.pt", weights_only=True)
    emit(
        "dalle_pytorch.train",
        theirs["steps"],
        unit="steps",
        seconds=round(theirs["train_seconds"], 1),
        loss_first=theirs["loss_first"],
        loss_last=theirs["loss_last"],
        threads=theirs["threads"],
        parameters=theirs["parameters"],
        sample_seconds=round(theirs["sample_seconds"], 1),
        wall_seconds=round(time.perf_counter() - t0, 1),
    )
    emit(
        "ours.train",
        prior_stage["steps"],
        unit="steps",
        seconds=round(seconds, 1),
        parameters=pipeline.transformer.num_parameters(),
        threads=prior_stage.get("threads"),
        validation=prior_stage.get("validation"),
    )

    # 3. decode, rerank and score both on the same captions with our models
    fastest_thread_count()
    size = pipeline.dvae.config.image_size
    grid, c = m.image_grid, eval_cfg.candidates
    results: dict = {"settings": {**eval_cfg.to_dict(), "seconds": seconds}, "ours": {}, "dalle_pytorch": {}}
    gen = torch.Generator().manual_seed(eval_cfg.seed)
    for split, caps in captions.items():
        rows = [meta[x] for x in picks[split]]
        real = load_real_images(data, picks[split], size)
        fake_ours, scores_ours = generate_for_captions(pipeline, caps, eval_cfg, generator=gen)
        pixels = pipeline.decode(theirs["codes"][split].view(-1, grid, grid))  # (N*c, 3, S, S)
        best, best_scores = [], []
        for i, caption in enumerate(caps):
            cand = pixels[i * c : (i + 1) * c]
            s, order = rerank(pipeline.clip, tok, caption, cand, top=1)
            best.append(cand[order[0]])
            best_scores.append(s[order[0]])
        fake_theirs = torch.stack(best)
        for name, fake, sc in (
            ("ours", fake_ours, scores_ours),
            ("dalle_pytorch", fake_theirs, torch.stack(best_scores)),
        ):
            s = SplitSamples(split, picks[split], caps, rows, real, fake, sc)
            f = split_figures(s, evaluator, eval_cfg, r_precision_clip=rclip, tokenizer=tok)
            results[name][split] = f
            for key in ("fid", "kid_mean", "is_mean", "r_precision", "heldout_attribute_accuracy", "tone_accuracy"):
                if key in f:
                    emit(f"{name}.{split}.{key}", f[key])
        from dalle_zero.evaluation.report import save_image_grid

        save_image_grid(fake_ours[:32], out / f"{split}_ours.png", nrow=8, scale=2)
        save_image_grid(fake_theirs[:32], out / f"{split}_dalle_pytorch.png", nrow=8, scale=2)
    results["dalle_pytorch_train"] = {k: v for k, v in theirs.items() if k != "codes"}
    results["ours_train"] = {"steps": prior_stage["steps"], "seconds": seconds}
    (out / "results.json").write_text(json.dumps(json_ready(results), indent=2) + "\n")
    print(f"wrote {out / 'results.json'}", file=sys.stderr)


if __name__ == "__main__":
    main()
