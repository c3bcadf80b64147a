"""Evaluation figures (paper §3.1): FID, KID, IS, R-precision, PSNR/SSIM, bits per token.

The dVAE's codebook statistics live beside its loss (:mod:`dalle_zero.models.dvae_loss`), the image
helpers shared with training (uint8 to float, blur) in :mod:`dalle_zero.data.images`.

Each figure is computed by a maintained library where one exists: torchmetrics'
``FrechetInceptionDistance``, ``KernelInceptionDistance`` and ``InceptionScore`` with a custom
``feature=`` module, and ``torchmetrics.functional`` PSNR and SSIM. The feature module is either

- our :class:`~dalle_zero.models.evaluator.EmojiEvaluator` (in-house figures: comparable between our
  own runs only, never to published FID/IS), wrapped by :class:`EvaluatorFeatures`; or
- a user-supplied TorchScript Inception-v3
  (:class:`~dalle_zero.evaluation.inception.TorchScriptInception`) for standard FID/IS.

What torchmetrics 1.9 passes to a custom module (read from its source): FID and KID call
``feature(imgs)`` on the images exactly as given to ``update`` (``normalize`` only picks the dtype of a
dummy image used to infer the width when the module has no ``num_features`` attribute); Inception
Score with ``normalize=True`` passes ``(imgs * 255).byte()``. So every function here takes float
images in [0, 1] (or uint8 in 0..255, converted), uses ``normalize=True``, and the wrappers accept
both uint8 and float. KID and IS draw random subsets/permutations from the global RNG; they run
under ``torch.random.fork_rng`` with a fixed ``seed`` so results are repeatable and the caller's
random stream is untouched.

Images: ``float[N, 3, H, W]`` in [0, 1] (or ``uint8``), or an iterable of such batches.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Iterable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from dalle_zero.data.images import resize_pixels, to_float_images
from dalle_zero.evaluation.inception import TorchScriptInception

Images = torch.Tensor | Iterable[torch.Tensor]


# ---------------------------------------------------------------------------------------------
# feature modules in the form torchmetrics expects


class EvaluatorFeatures(nn.Module):
    """The in-house evaluator as torchmetrics' ``feature=`` module: uint8 [0, 255] or float [0, 1] images in,
    ``float[B, D]`` features (``output="features"``) or ``float[B, K]`` logits of ``head`` out.

    Runs the evaluator in eval mode without gradients and restores its mode afterwards.
    """

    def __init__(self, evaluator: nn.Module, *, output: str = "features", head: str | None = None) -> None:
        super().__init__()
        if output not in ("features", "logits"):
            raise ValueError(f"output must be 'features' or 'logits', got {output!r}")
        self.evaluator = evaluator
        self.output = output
        if output == "logits":
            cfg = evaluator.config
            self.head = head if head is not None else cfg.resolved_score_head
            self.num_features = len(cfg.head(self.head).labels)
        else:
            self.head = None
            self.num_features = int(evaluator.num_features)

    @torch.no_grad()
    def forward(self, imgs: torch.Tensor) -> torch.Tensor:
        was = self.evaluator.training
        self.evaluator.eval()
        try:
            x = to_float_images(imgs)
            out = self.evaluator.features(x) if self.output == "features" else self.evaluator(x)[self.head]
        finally:
            self.evaluator.train(was)
        return out.float()


def feature_module(model: nn.Module, *, output: str = "features", head: str | None = None) -> nn.Module:
    """The module to hand torchmetrics: the in-house evaluator is wrapped; a :class:`TorchScriptInception` (or
    any module already mapping images to ``[B, D]``) is used as it is."""
    if isinstance(model, TorchScriptInception):
        if model.output != output:
            raise ValueError(f"this Inception module returns {model.output}, but {output} are needed here")
        return model
    if hasattr(model, "features") and hasattr(model, "heads"):
        return EvaluatorFeatures(model, output=output, head=head)
    if isinstance(model, nn.Module):
        return model
    raise ValueError(f"expected the in-house evaluator or an nn.Module feature extractor, got {type(model).__name__}")


# ---------------------------------------------------------------------------------------------
# distribution metrics (torchmetrics)


def fid(real: Images, fake: Images, feature_extractor: nn.Module, *, batch_size: int = 256) -> float:
    """Fréchet distance between Gaussians fitted to the features of ``real`` and ``fake`` images
    (torchmetrics ``FrechetInceptionDistance``; needs >= 2 images per side)."""
    # torchmetrics takes about a second to import: only the figures that use it pay for it
    from torchmetrics.image.fid import FrechetInceptionDistance

    module = feature_module(feature_extractor, output="features")
    device = _device(module)
    metric = FrechetInceptionDistance(feature=module, normalize=True).to(device)
    n_real = _update(metric, real, batch_size, device, real=True)
    n_fake = _update(metric, fake, batch_size, device, real=False)
    if min(n_real, n_fake) < 2:
        raise ValueError(f"FID needs at least 2 real and 2 generated images, got {n_real} and {n_fake}")
    return float(metric.compute())


def kid(
    real: Images,
    fake: Images,
    feature_extractor: nn.Module,
    *,
    subsets: int = 100,
    subset_size: int = 1000,
    seed: int = 0,
    batch_size: int = 256,
) -> tuple[float, float]:
    """Kernel Inception Distance ``(mean, std)`` over ``subsets`` random subsets (torchmetrics
    ``KernelInceptionDistance``); ``subset_size`` shrinks to the smaller image count if needed."""
    # torchmetrics takes about a second to import: only the figures that use it pay for it
    from torchmetrics.image.kid import KernelInceptionDistance

    module = feature_module(feature_extractor, output="features")
    device = _device(module)
    real_b, fake_b = list(_batches(real, batch_size)), list(_batches(fake, batch_size))
    n_real, n_fake = sum(len(b) for b in real_b), sum(len(b) for b in fake_b)
    if min(n_real, n_fake) < 2:
        raise ValueError(f"KID needs at least 2 real and 2 generated images, got {n_real} and {n_fake}")
    size = min(subset_size, n_real, n_fake)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*will save all extracted features.*")
        metric = KernelInceptionDistance(feature=module, subsets=subsets, subset_size=size, normalize=True)
    metric = metric.to(device)
    _update(metric, real_b, batch_size, device, real=True)
    _update(metric, fake_b, batch_size, device, real=False)
    with _seeded(seed):
        mean, std = metric.compute()
    return float(mean), float(std)


def inception_score(
    fake: Images,
    classifier: nn.Module,
    *,
    head: str | None = None,
    splits: int = 10,
    seed: int = 0,
    batch_size: int = 256,
) -> tuple[float, float]:
    """Inception Score ``(mean, std)`` over ``splits`` groups: ``exp E[KL(p(y|x) || p(y))]`` from the
    classifier's logits (the evaluator's ``head``, default its score head; torchmetrics ``InceptionScore``).
    Between 1 and the number of classes."""
    # torchmetrics takes about a second to import: only the figures that use it pay for it
    from torchmetrics.image.inception import InceptionScore

    module = feature_module(classifier, output="logits", head=head)
    device = _device(module)
    batches = list(_batches(fake, batch_size))
    n = sum(len(b) for b in batches)
    if n < 2:
        raise ValueError(f"the Inception Score needs at least 2 images, got {n}")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*will save all extracted features.*")
        metric = InceptionScore(feature=module, splits=max(1, min(splits, n // 2)), normalize=True)
    metric = metric.to(device)
    _update(metric, batches, batch_size, device)
    with _seeded(seed):
        mean, std = metric.compute()
    return float(mean), float(0.0 if std.isnan() else std)


# ---------------------------------------------------------------------------------------------
# text-image agreement


@torch.no_grad()
def r_precision(
    model: nn.Module,
    images: torch.Tensor,
    caption_ids: torch.Tensor,
    distractor_ids: torch.Tensor | None = None,
    *,
    n_distractors: int = 99,
    generator: torch.Generator | None = None,
    batch_size: int = 256,
) -> float:
    """Share of images whose own caption outranks ``n_distractors`` random other captions (R = 1).

    The AttnGAN/DM-GAN protocol: ``model`` is a text-image model with ``encode_image(pixels)`` and
    ``encode_text(ids)`` (e.g. a :class:`~dalle_zero.models.clip.DalleCLIP` trained apart from the
    reranker); ``images`` ``float[N, 3, H, W]`` in [0, 1] (resized to ``model.config.image_size``);
    ``caption_ids`` ``long[N, T]``, row i the caption image i was generated from; distractors are
    drawn from ``distractor_ids`` ``long[M, T]`` (default: the other captions) excluding any row equal
    to the image's own caption.
    """
    if images.dim() != 4 or len(images) != len(caption_ids) or len(images) == 0:
        raise ValueError(
            f"images [N, 3, H, W] and caption_ids [N, T] must have the same N >= 1, got "
            f"{tuple(images.shape)} and {tuple(caption_ids.shape)}"
        )
    pool = caption_ids if distractor_ids is None else distractor_ids
    device = _device(model)
    size = getattr(getattr(model, "config", None), "image_size", None)
    was = model.training
    model.eval()
    try:
        img = torch.cat(
            [
                F.normalize(model.encode_image(_resize(to_float_images(b).to(device), size)).float(), dim=-1)
                for b in images.split(batch_size)
            ]
        )  # (N, E)
        txt = torch.cat(
            [
                F.normalize(model.encode_text(b.to(device)).float(), dim=-1)
                for b in caption_ids.split(batch_size)
            ]
        )  # (N, E)
        pool_emb = torch.cat(
            [F.normalize(model.encode_text(b.to(device)).float(), dim=-1) for b in pool.split(batch_size)]
        )  # (M, E)
    finally:
        model.train(was)
    true_sim = (img * txt).sum(-1).cpu()  # (N,)
    pool_sim = (img @ pool_emb.t()).cpu()  # (N, M)
    pool_rows = [tuple(r) for r in pool.tolist()]
    hits = 0
    for i, own in enumerate(caption_ids.tolist()):
        candidates = torch.tensor([j for j, r in enumerate(pool_rows) if r != tuple(own)], dtype=torch.long)
        if len(candidates) == 0:
            raise ValueError(
                "r_precision needs at least one distractor caption that differs from the image's own"
            )
        pick = candidates[torch.randperm(len(candidates), generator=generator)[:n_distractors]]
        hits += int(true_sim[i] > pool_sim[i, pick].max())
    return hits / len(images)


def attribute_accuracy(
    evaluator: nn.Module,
    images: torch.Tensor,
    head: str,
    asked: Sequence[str | None],
    *,
    batch_size: int = 256,
) -> tuple[float, int]:
    """``(share, n)``: share of images whose ``head`` label the evaluator reads as the one ``asked``
    (:func:`label_top_k` at k = 1).

    Images with ``asked[i]`` None, or a label outside the head's vocabulary, are not counted; ``n`` is
    the number counted (share is NaN when n = 0). Used for "does the sample carry the asked skin tone /
    style" on unseen compositions.
    """
    shares, n = label_top_k(evaluator, images, head, asked, ks=(1,), batch_size=batch_size)
    return shares[1], n


def label_top_k(
    evaluator: nn.Module,
    images: torch.Tensor,
    head: str,
    asked: Sequence[str | None],
    *,
    ks: Sequence[int] = (1, 5),
    batch_size: int = 256,
) -> tuple[dict[int, float], int]:
    """``({k: share}, n)``: share of images whose ``asked`` label is among the ``k`` labels of ``head``
    the evaluator finds most probable. Images with ``asked[i]`` None or outside the head's labels are
    not counted; shares are NaN when n = 0. Used for "does the sample show the asked concept"."""
    if len(asked) != len(images):
        raise ValueError(f"asked has {len(asked)} labels for {len(images)} images")
    labels = evaluator.config.head(head).labels
    index = {lab: i for i, lab in enumerate(labels)}
    keep = [i for i, a in enumerate(asked) if a is not None and a in index]
    if not keep:
        return {k: math.nan for k in ks}, 0
    target = torch.tensor([index[asked[i]] for i in keep])  # type: ignore[index]
    logits = evaluator.head_logits(to_float_images(images[keep]), batch_size=batch_size)[head]  # (n, L)
    rank = (logits > logits.gather(1, target[:, None])).sum(1)  # labels scored above the asked one
    return {k: float((rank < k).float().mean()) for k in ks}, len(keep)


# ---------------------------------------------------------------------------------------------
# reconstruction and token statistics


def psnr(preds: torch.Tensor, target: torch.Tensor) -> float:
    """Mean over images of the per-image PSNR (dB) for images in [0, 1] (torchmetrics); inf if identical."""
    # torchmetrics takes about a second to import: only the figures that use it pay for it
    from torchmetrics.functional.image import peak_signal_noise_ratio

    _same_shape(preds, target)
    per_image = peak_signal_noise_ratio(
        to_float_images(preds), to_float_images(target), data_range=1.0, reduction="none", dim=(1, 2, 3)
    )
    return float(per_image.mean())


def ssim(preds: torch.Tensor, target: torch.Tensor) -> float:
    """Mean SSIM (Gaussian window 11, σ 1.5) for images in [0, 1] (torchmetrics); 1 if identical."""
    # torchmetrics takes about a second to import: only the figures that use it pay for it
    from torchmetrics.functional.image import structural_similarity_index_measure

    _same_shape(preds, target)
    return float(
        structural_similarity_index_measure(to_float_images(preds), to_float_images(target), data_range=1.0)
    )


def bits_per_token(logits: torch.Tensor, targets: torch.Tensor, *, ignore_index: int | None = None) -> float:
    """Mean cross-entropy in bits of ``targets`` ``long[...]`` under ``logits`` ``float[..., V]``."""
    if logits.shape[:-1] != targets.shape:
        raise ValueError(
            f"logits [..., V] and targets [...] disagree: {tuple(logits.shape)} vs {tuple(targets.shape)}"
        )
    kw = {} if ignore_index is None else {"ignore_index": ignore_index}
    nats = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1), **kw)
    return float(nats) / math.log(2.0)


def nats_to_bits(nats: float) -> float:
    return nats / math.log(2.0)


# ---------------------------------------------------------------------------------------------
# helpers


def _batches(images: Images, batch_size: int) -> Iterator[torch.Tensor]:
    if isinstance(images, torch.Tensor):
        images = images.split(batch_size)
    for b in images:
        if len(b):
            yield to_float_images(b)


def _update(metric: nn.Module, images: Images, batch_size: int, device: torch.device, **kw: bool) -> int:
    n = 0
    for b in _batches(images, batch_size):
        metric.update(b.to(device), **kw)
        n += len(b)
    return n


def _device(module: nn.Module) -> torch.device:
    p = next(module.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def _resize(x: torch.Tensor, size: int | None) -> torch.Tensor:
    return x if size is None else resize_pixels(x, size)


def _same_shape(a: torch.Tensor, b: torch.Tensor) -> None:
    if a.shape != b.shape:
        raise ValueError(
            f"images to compare must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}"
        )


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield
