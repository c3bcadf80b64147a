"""A demo run's prior trained again with changed settings, or sampled with other settings, read with
the demo's evaluator: what a change does to the figures of the captions-and-concepts issue.

Trains ``dalle train prior`` on the run's tokens with its ``train_config.json`` and the ``--set``
changes for ``--steps`` updates (or takes ``--prior``, an existing prior model folder), puts it in a
copy of the run's model folder, and reads, for ``--samples`` captions spread over each split, one
image each (the best of ``--candidates`` by the run's reranker, guidance ``--guidance`` within the
default nucleus):

- concept top-5 for the plain name, the canonical caption and an unseen phrasing of training images
  (all templates, and each template alone);
- held-out tone/style for name + attribute captions, canonical captions and unseen phrasings of
  unseen compositions;
- bits per image with the right, a shuffled and the empty plain-name caption.

Prints one JSON row and appends it to ``--results``.

    python experiments/prior_variants.py --run demo --data DATA --name lr3e3 --steps 1412 --set lr=3e-3
    python experiments/prior_variants.py --run demo --data DATA --name c16 --prior demo/runs/prior/best_model \\
        --candidates 16
    python experiments/prior_variants.py --run demo --data DATA --name canon --steps 1249 --canonical-only
    python experiments/prior_variants.py --run demo --data DATA --name clip60 --prior demo/runs/prior/best_model \\
        --clip demo60/model/clip

``--eval-every N`` evaluates the trained prior every N updates and reads the one kept at the lowest
validation loss, as the demo does (the run's ``select_by``); without it the prior is evaluated once,
at the end, and read as it ends.

``--canonical-only`` trains on a copy of the run's tokens that keeps only each image's first caption
(the canonical one); ``--clip`` reranks with another CLIP folder (same tokenizer) than the run's;
``--dvae`` takes another dVAE run trained on the same dataset: the data is encoded with it, the prior
trains on those tokens with its image vocabulary, and it replaces the run's dVAE in the model read.

    dalle train dvae --data DATA --out dvae128 --config dvae128.json  # the run's dVAE config, vocab_size 128
    python experiments/prior_variants.py --run demo --data DATA --name v128 --steps 1936 --dvae dvae128 \\
        --set model.n_embd=128 model.n_head=4 loop.batch_size=48 lr=1.4e-3
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

from dalle_zero.data.metadata import read_dataset_splits, read_metadata
from dalle_zero.evaluation import metrics
from dalle_zero.evaluation.caption_kinds import kind_captions, unseen_template
from dalle_zero.evaluation.evaluate import EvalConfig, caption_use_bits
from dalle_zero.evaluation.readouts import asked_labels
from dalle_zero.evaluation.samples import generate_for_captions, load_real_images, pick_evenly
from dalle_zero.models.evaluator import EmojiEvaluator
from dalle_zero.pipelines.text_to_image import TextToImagePipeline

READS = (
    ("train", "name"), ("train", "canonical"), ("train", "unseen_phrasing"),
    ("unseen_compositions", "name_attributes"), ("unseen_compositions", "canonical"),
    ("unseen_compositions", "unseen_phrasing"),
)  # fmt: skip


def changed_config(run: Path, changes: list[str], steps: int, eval_every: int = 0) -> dict:
    """The run's prior train config with ``key=json`` changes (``lr=3e-3``, ``model.n_embd=128``),
    evaluated every ``eval_every`` updates (0: at the end only)."""
    cfg = json.loads((run / "runs" / "prior" / "train_config.json").read_text())
    for change in changes:
        key, value = change.split("=", 1)
        *path, last = key.split(".")
        target = cfg
        for part in path:
            target = target[part]
        target[last] = json.loads(value)
    cfg["loop"].update(steps=steps, eval_every=eval_every or steps, checkpoint_every=steps)
    return cfg


def canonical_tokens(tokens: Path, out: Path) -> Path:
    """A copy of the token folder ``tokens`` whose shards keep only each image's first caption."""
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(tokens, out)
    for shard in sorted(out.glob("shard_*.json")):
        meta = json.loads(shard.read_text())
        meta["captions"] = [lines[:1] for lines in meta["captions"]]
        shard.write_text(json.dumps(meta) + "\n")
    return out


def encoded_tokens(dvae: Path, data: Path, out: Path) -> Path:
    """The dataset ``data`` encoded by the dVAE run ``dvae`` into the token folder ``out``."""
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "dalle_zero.cli.main", "encode", "--no-progress",
           "--dvae", str(dvae), "--data", str(data), "--out", str(out)]
    subprocess.run(cmd, check=True)
    return out


def read(pipe: TextToImagePipeline, evaluator: EmojiEvaluator, data: Path, config: EvalConfig, samples: int) -> dict:
    meta, splits = read_metadata(data), read_dataset_splits(data)
    out: dict[str, float] = {}
    for split, kind in READS:
        rows = [meta[s] for s in pick_evenly(splits[split], samples)]
        idx, caps = kind_captions(rows, kind)
        rows = [rows[i] for i in idx]
        images, _ = generate_for_captions(pipe, caps, config, generator=torch.Generator().manual_seed(config.seed))
        acc, _ = metrics.label_top_k(evaluator, images, "concept", asked_labels(rows, "concept"), ks=(5,))
        out[f"{split}/{kind}/concept_top5"] = round(acc[5], 3)
        if kind == "unseen_phrasing" and split == "train":  # each template alone (kind_captions takes them in turn)
            template = [unseen_template(i, rows[j]) for j, i in enumerate(idx)]
            for t in sorted(set(template)):
                keep = [j for j, tj in enumerate(template) if tj == t]
                labels = asked_labels([rows[j] for j in keep], "concept")
                acc_t, _ = metrics.label_top_k(evaluator, images[keep], "concept", labels, ks=(5,))
                out[f"{split}/unseen template {t + 1}/concept_top5"] = round(acc_t[5], 3)
        if split == "unseen_compositions":
            right = total = 0.0
            for head in ("tone", "style"):
                a, n = metrics.attribute_accuracy(evaluator, images, head, asked_labels(rows, head, holdout_only=True))
                right, total = right + a * n, total + n
            out[f"{split}/{kind}/heldout_attribute"] = round(right / total, 3)
        if kind == "name":
            real = load_real_images(data, [r["stem"] for r in rows], pipe.dvae.config.image_size)
            out.update({k: round(v, 1) for k, v in caption_use_bits(pipe, caps, real).items()})
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True, help="a `dalle demo` output folder")
    p.add_argument("--data", required=True, help="its dataset folder")
    p.add_argument("--name", required=True, help="name of this variant (folder under --out)")
    p.add_argument("--set", nargs="*", default=[], help="train config changes, key=json (model.x, loop.x, x)")
    p.add_argument("--steps", type=int, default=0, help="updates to train (with --set)")
    p.add_argument("--eval-every", type=int, default=0,
                   help="evaluate every N updates and read the prior kept at the lowest validation loss "
                        "(0: evaluate at the end only, read the last)")
    p.add_argument("--prior", help="read this prior model folder instead of training one")
    p.add_argument("--canonical-only", action="store_true", help="train on each image's canonical caption only")
    p.add_argument("--clip", help="rerank with this CLIP folder instead of the run's")
    p.add_argument("--dvae", help="a dVAE run folder trained on --data, in place of the run's dVAE")
    p.add_argument("--samples", type=int, default=160)
    p.add_argument("--candidates", type=int, default=6)
    p.add_argument("--guidance", type=float, default=3.0)
    p.add_argument("--out", default="prior_variants")
    p.add_argument("--results", default="prior_variants.jsonl")
    p.add_argument("--threads", type=int, default=2, help="threads for the read (1 when variants run side by side)")
    args = p.parse_args()
    run, out = Path(args.run), Path(args.out) / args.name
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    prior = Path(args.prior) if args.prior else out / "run" / ("best_model" if args.eval_every else "model")
    if not args.prior:
        cfg = changed_config(run, args.set, args.steps, args.eval_every)
        if args.dvae:
            cfg["tokens"] = str(encoded_tokens(Path(args.dvae), Path(args.data), out / "dvae_tokens").resolve())
            dvae_model = json.loads((Path(args.dvae) / "model" / "config.json").read_text())
            cfg["model"]["image_vocab_size"] = dvae_model["vocab_size"]
        if args.canonical_only:
            cfg["tokens"] = str(canonical_tokens(Path(cfg["tokens"]), out / "tokens").resolve())
        (out / "train_config.json").write_text(json.dumps(cfg, indent=1))
        shutil.rmtree(out / "run", ignore_errors=True)
        cmd = [sys.executable, "-m", "dalle_zero.cli.main", "train", "prior", "--no-progress",
               "--config", str(out / "train_config.json"), "--tokens", cfg["tokens"], "--tokenizer", cfg["tokenizer"],
               "--out", str(out / "run")]
        subprocess.run(cmd, check=True)
    train_seconds = time.time() - t0
    model = out / "model"
    shutil.rmtree(model, ignore_errors=True)
    shutil.copytree(run / "model", model, ignore=shutil.ignore_patterns("transformer"))
    shutil.copytree(prior, model / "transformer")
    if args.dvae:
        shutil.rmtree(model / "dvae")
        shutil.copytree(Path(args.dvae) / "model", model / "dvae")
    if args.clip:
        shutil.rmtree(model / "clip", ignore_errors=True)
        shutil.copytree(args.clip, model / "clip")
    torch.set_num_threads(args.threads)
    pipe = TextToImagePipeline.from_pretrained(model)
    evaluator = EmojiEvaluator.from_pretrained(run / "runs" / "evaluator" / "model").eval()
    config = EvalConfig(candidates=args.candidates, guidance_scale=args.guidance, batch_size=128)
    row = {"name": args.name, "set": args.set, "steps": args.steps, "prior": args.prior, "clip": args.clip,
           "dvae": args.dvae, "canonical_only": args.canonical_only,
           "candidates": args.candidates, "guidance_scale": args.guidance, "train_seconds": round(train_seconds, 1)}
    row.update(read(pipe, evaluator, Path(args.data), config, args.samples))
    print(json.dumps(row), flush=True)
    with open(args.results, "a") as f:
        f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
