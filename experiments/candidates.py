#!/usr/bin/env python
"""How often the candidates for an unseen composition carry the asked tone/style, and how often reranking finds one.

    python experiments/candidates.py --model MODEL --evaluator RUN_OR_MODEL --data DATASET \
        [--clip RUN_OR_MODEL ...] [--ensemble] [--contrast K ...] [--samples 200] [--candidates 16] [--guidance-scale 3]

For ``--samples`` captions of the unseen-composition split (picked as ``dalle eval`` picks them), the
model draws ``--candidates`` images each, and the evaluator reads the held-out attribute of every
candidate (the skin tone of a held-out (concept, tone) pair, the style of a held-out (concept, style)
pair). For the first k candidates (k = 1, 2, 4, ... up to ``--candidates``) it reports

- ``random``: the share of candidates read as asked (what keeping any one of them scores),
- ``oracle``: the share of captions with at least one of the k read as asked (the most a reranker can reach),
- ``rerank``: the share whose best-scoring candidate under the reranker is read as asked, for the
  model's own CLIP, every ``--clip`` and two rerankers that need no training, the prior's own
  log-likelihood of the candidate's tokens and their pointwise mutual information with the caption
  (:func:`prior_scores`); with ``--contrast K``, also each CLIP's posterior log p(caption | candidate)
  among the caption and the K training captions nearest it by text embedding (0: all of them;
  :func:`posterior_scores`); with ``--ensemble``, also every pair of CLIPs and all of them together,
  scored by the mean of their cosine similarities.

``--cache FILE`` keeps the candidates (tokens and uint8 images), so rerankers trained later are
compared on exactly the same ones.

So it separates what the prior draws from what the reranker picks. Prints one JSON row per (reranker, k).
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import torch


@torch.no_grad()
def main() -> None:
    from tqdm.auto import tqdm

    from dalle_zero.data.images import to_float_images
    from dalle_zero.data.metadata import read_dataset_splits, read_metadata
    from dalle_zero.evaluation.evaluate import EvalConfig
    from dalle_zero.evaluation.readouts import asked_labels
    from dalle_zero.evaluation.samples import pick_evenly, sampling_options
    from dalle_zero.io import resolve_model_dir
    from dalle_zero.models.clip import DalleCLIP
    from dalle_zero.models.evaluator import EmojiEvaluator
    from dalle_zero.pipelines.text_to_image import TextToImagePipeline
    from dalle_zero.sampling.rerank import rerank

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="pipeline folder (`dalle assemble`, or a demo's model/)")
    ap.add_argument("--evaluator", required=True, help="evaluator run or model folder")
    ap.add_argument("--data", required=True, help="dataset folder from `dalle data emoji`")
    ap.add_argument("--clip", action="append", default=[], help="another reranker, run or model folder (repeatable)")
    ap.add_argument("--samples", type=int, default=200)
    ap.add_argument("--candidates", type=int, default=16)
    ap.add_argument("--guidance-scale", type=float, default=3.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache", default=None, help="file to keep the candidates in and read them from next time")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--ensemble", action="store_true",
                    help="also rerank by the mean cosine of every pair of CLIPs and of all of them")
    ap.add_argument("--contrast", type=int, action="append", default=[],
                    help="also rerank by the posterior against the K training captions nearest the asked one "
                         "(0: all of them; repeatable)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    data = Path(args.data)
    meta, splits = read_metadata(data), read_dataset_splits(data)
    stems = pick_evenly(splits["unseen_compositions"], args.samples)
    rows = [meta[s] for s in stems]
    captions = [str(r["caption"]) for r in rows]
    m = args.candidates
    pipeline = TextToImagePipeline.from_pretrained(args.model)
    config = EvalConfig(candidates=1, guidance_scale=args.guidance_scale, seed=args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    repeated = [c for c in captions for _ in range(m)]  # candidates of a caption are adjacent
    cache = Path(args.cache) if args.cache else None
    key = {"model": str(Path(args.model).resolve()), "captions": repeated, "seed": args.seed,
           "guidance_scale": args.guidance_scale}
    if cache is not None and cache.is_file():
        saved = torch.load(cache)
        if saved["key"] != key:
            raise SystemExit(f"{cache} holds candidates of another model, captions or settings")
        pixels, tokens = saved["pixels"].float() / 255, saved["tokens"]
    else:
        with tqdm(total=len(repeated), desc="sampling candidates", unit="img", dynamic_ncols=True) as bar:
            out = pipeline.generate_batch(captions, m, candidates=m, generator=generator, progress=bar.update,
                                          **sampling_options(config))
            tokens, pixels = out.codes.flatten(2).flatten(0, 1), out.images.flatten(0, 1)
        as_uint8 = (pixels * 255).round().to(torch.uint8)
        pixels = as_uint8.float() / 255  # as a PNG or the cache holds them, whether cached or not
        if cache is not None:
            torch.save({"key": key, "pixels": as_uint8, "tokens": tokens}, cache)

    evaluator = EmojiEvaluator.from_pretrained(resolve_model_dir(args.evaluator)).eval()
    right = torch.zeros(len(captions), m, dtype=torch.bool)
    counted = torch.zeros(len(captions), dtype=torch.bool)
    for head in ("tone", "style"):
        asked = asked_labels(rows, head, holdout_only=True)
        keep = [i for i, a in enumerate(asked) if a is not None and a in evaluator.config.head(head).labels]
        if not keep:
            continue
        idx = torch.tensor(keep)
        cand = pixels.view(len(captions), m, *pixels.shape[1:])[idx].flatten(0, 1)
        pred = evaluator.predict(to_float_images(cand), head)
        for j, i in enumerate(keep):
            right[i] = torch.tensor([p == asked[i] for p in pred[j * m : (j + 1) * m]])
            counted[i] = True
    right, n = right[counted], int(counted.sum())
    order = torch.arange(len(captions))[counted]

    rerankers = {"model": pipeline.clip} if pipeline.clip is not None else {}
    rerankers.update({p: DalleCLIP.from_pretrained(resolve_model_dir(p)).eval() for p in args.clip})
    scores = {
        name: torch.stack([rerank(clip, pipeline.tokenizer, captions[i], pixels[i * m : (i + 1) * m])[0]
                           for i in order])
        for name, clip in rerankers.items()
    }  # name -> (n, m)
    if args.ensemble:
        names = list(rerankers)
        groups = [list(g) for g in itertools.combinations(names, 2)] + ([names] if len(names) > 2 else [])
        for g in groups:
            scores[f"ensemble[{' + '.join(g)}]"] = sum(scores[c] for c in g) / len(g)
    train_captions = sorted({str(meta[s]["caption"]) for s in splits["train"]})
    for name, clip in rerankers.items():
        for contrast in args.contrast:
            scores[f"{name}|posterior@{contrast}"] = torch.stack([
                posterior_scores(clip, pipeline.tokenizer, captions[i], pixels[i * m : (i + 1) * m],
                                 train_captions, nearest=contrast)
                for i in order])
    text = pipeline.tokenizer.encode(captions).repeat_interleave(m, dim=0)  # (N*m, Tt), as sampled
    for mode in ("pmi", "likelihood"):
        s_all = prior_scores(pipeline.transformer, text, tokens, mode=mode)
        scores[f"prior_{mode}"] = s_all.view(len(captions), m)[order]
    ks = sorted({k for k in (1, 2, 4, 8, 16, 32, 64, m) if k <= m})
    for k in ks:
        row = {"k": k, "captions": n, "random": right[:, :k].float().mean().item(),
               "oracle": right[:, :k].any(dim=1).float().mean().item()}
        for name, s in scores.items():
            pick = s[:, :k].argmax(dim=1)
            row[f"rerank[{name}]"] = right[torch.arange(n), pick].float().mean().item()
        print(json.dumps(row), flush=True)


_TEXT_CACHE: dict[int, torch.Tensor] = {}  # id(clip) -> unit embeddings of the contrast captions


@torch.no_grad()
def posterior_scores(clip, tokenizer, caption, images, contrast, *, nearest=0):
    """log p(caption | image) over ``{caption} ∪ contrast`` (or its ``nearest`` captions by text embedding).

    With the CLIP's temperature: ``s·cos(image, caption) − logsumexp`` over the caption and the
    contrast set, ``float[N]`` for ``images`` ``float[N, 3, H, W]``; higher is better.
    """
    from dalle_zero.data.images import resize_pixels

    tok = tokenizer if tokenizer.text_seq_len == clip.config.text_seq_len else tokenizer.with_text_seq_len(
        clip.config.text_seq_len)
    key = id(clip)
    if key not in _TEXT_CACHE:
        _TEXT_CACHE[key] = torch.cat([clip.encode_text(tok.encode(list(contrast[lo : lo + 512])))
                                      for lo in range(0, len(contrast), 512)])
    others = _TEXT_CACHE[key]
    asked = clip.encode_text(tok.encode(caption))  # (1, E)
    if nearest:
        others = others[(others @ asked[0]).topk(min(nearest, len(others))).indices]
    img = clip.encode_image(resize_pixels(images.float(), clip.config.image_size))
    scale = clip.temperature_scale()
    s_asked = scale * (img @ asked[0])
    s_all = torch.cat([s_asked[:, None], scale * img @ others.t()], dim=1)
    return s_asked - torch.logsumexp(s_all, dim=1)


@torch.no_grad()
def prior_scores(
    transformer: torch.nn.Module,
    text_ids: torch.Tensor,
    image_tokens: torch.Tensor,
    *,
    mode: str = "pmi",
    batch_size: int = 128,
) -> torch.Tensor:
    """Score image tokens against their captions with the prior itself: ``float[N]``, higher is better.

    ``text_ids``: ``long[N, Tt]`` (0 = pad), ``image_tokens``: ``long[N, Ti]`` or ``long[N, h, w]``.
    ``mode="likelihood"``: log p(image | caption), in nats, summed over the image tokens.
    ``mode="pmi"``: log p(image | caption) - log p(image | empty caption), the pointwise mutual
    information of caption and image under the prior: how much the caption explains the image beyond
    what any image is likely to be (the quantity classifier-free guidance raises while sampling).
    """
    if mode not in ("pmi", "likelihood"):
        raise ValueError(f"mode must be 'pmi' or 'likelihood', got {mode!r}")
    codes = image_tokens.flatten(1)
    if text_ids.dim() != 2 or codes.dim() != 2 or len(text_ids) != len(codes):
        raise ValueError(f"need text_ids [N, Tt] and image_tokens [N, Ti] with the same N, "
                         f"got {tuple(text_ids.shape)} and {tuple(image_tokens.shape)}")
    device = next(transformer.parameters()).device
    was_training = transformer.training
    transformer.eval()

    def loglik(text: torch.Tensor, img: torch.Tensor) -> torch.Tensor:
        _, logits = transformer(text, img)  # (b, Ti, Vi): position i predicts image token i
        logp = torch.log_softmax(logits.float(), dim=-1)
        return logp.gather(-1, img.unsqueeze(-1)).squeeze(-1).sum(-1)  # (b,)

    out = []
    try:
        for lo in range(0, len(codes), batch_size):
            t = text_ids[lo : lo + batch_size].to(device)
            img = codes[lo : lo + batch_size].to(device)
            s = loglik(t, img)
            if mode == "pmi":
                s = s - loglik(torch.zeros_like(t), img)
            out.append(s.cpu())
    finally:
        transformer.train(was_training)
    return torch.cat(out)


if __name__ == "__main__":
    main()
