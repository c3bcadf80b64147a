"""Training the contrastive reranker (paper §2.6) with the shared loop.

:class:`CLIPTask` trains a :class:`~dalle_zero.models.clip.DalleCLIP` with CLIP's symmetric
contrastive loss over in-batch pairs (per process: with DDP each rank contrasts its own batch),
AdamW with linear warm-up then cosine decay, optional light augmentation (a random shift of a few
pixels; no flips, since "left arrow" must stay left; a Gaussian blur of some images) and BPE dropout
off unless asked for.

Hard negatives (``siblings``): a reranker's job is to tell apart candidates for *one* caption, which
differ in details such as a skin tone or a drawing style, yet a random batch of 64 pairs almost never
holds two images of the same subject, so in-batch contrast teaches the subject and little else. With
``siblings = k`` every drawn pair brings up to ``k`` other images of the same concept
(``metadata.jsonl``'s ``concept`` field: the same emoji in other tones and styles) into the batch, so
the loss has to read exactly the attributes the reranker must rank by. The per-step cost is that of a
batch of ``batch_size · (1 + k)`` pairs at most; pairs whose caption already is in the batch are dropped.
A hard negative must be one: a caption that leaves out what the siblings differ in ("waving hand",
"thumbs up, noto style" for a dark thumbs up) is as true of a sibling as of its image, and the loss
would push the two apart anyway. With ``sibling_captions = "naming"`` each image is shown only with
its captions that name its style and skin tone (``metadata.jsonl``'s ``style`` and ``tone``;
:func:`~dalle_zero.data.emoji_captions.names_attributes`), the canonical one among them.
The blur (``blur_prob``, ``max_blur``) is the evaluator's: generated images come out of the dVAE
softer than the real ones the reranker is trained on.

The dVAE's view (``dvae``, ``recon_prob``): the reranker only ever ranks images the dVAE decoded, so
with a dVAE given, that share of the training images is shown as their round trip through its hard
codes (:class:`ReconstructedImages`, computed once and kept in memory as uint8), the look every
candidate will have.
``evaluate`` reports retrieval accuracy on held-out pairs: image→text and text→image, top-1 and
top-5, among ``eval_max_pairs`` candidates (a hit is any candidate with the true caption, so
duplicate captions are not counted as misses).

A second CLIP trained with another ``loop.seed`` (initialisation and data order) serves as an
independent evaluator of generated images: never evaluate with the reranker itself.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from dalle_zero.config import Config, check_choice, check_float, check_int
from dalle_zero.data.emoji_captions import names_attributes
from dalle_zero.data.images import random_blur, resize_pixels
from dalle_zero.data.metadata import read_metadata
from dalle_zero.data.sources import data_folder, open_image_text_dataset
from dalle_zero.io import resolve_model_dir
from dalle_zero.models.clip import CLIPConfig, DalleCLIP, contrastive_loss
from dalle_zero.models.dvae import DiscreteVAE, round_trip
from dalle_zero.tokenizers.bpe import BPETokenizer
from dalle_zero.training.loop import LoopConfig, TrainTask
from dalle_zero.training.optim import adamw
from dalle_zero.training.schedules import warmup_cosine

logger = logging.getLogger(__name__)


def _default_loop() -> LoopConfig:
    return LoopConfig(steps=3000, batch_size=64, log_every=50, eval_every=500, checkpoint_every=500)


@dataclass(frozen=True, kw_only=True)
class CLIPTrainConfig(Config):
    """Everything a CLIP run needs; saved as the run's ``train_config.json``."""

    model: CLIPConfig
    loop: LoopConfig = field(default_factory=_default_loop)
    data: str = ""  # image-caption folder (ImageTextFolder layout) or WebDataset shards
    tokenizer: str = ""  # tokenizer folder
    train_split: str = "train"
    eval_splits: tuple[str, ...] = ("validation",)  # splits of splits.json to report retrieval on
    eval_max_pairs: int = 512  # retrieval among this many held-out pairs (accuracy depends on it)
    lr: float = 5e-4
    min_lr_ratio: float = 0.1  # cosine decay to lr * min_lr_ratio at loop.steps
    warmup_steps: int = 200
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-6
    augment_shift: int = 2  # random shift of up to this many pixels (0 = no augmentation)
    blur_prob: float = 0.0  # share of training images blurred (0: never)
    max_blur: float = 1.5  # largest blur radius, pixels
    siblings: int = 0  # hard negatives: other images of each drawn item's concept added to the batch
    sibling_captions: str = "all"  # "naming": only the captions that name the style and tone (see above)
    dvae: str | None = None  # dVAE run or model folder for recon_prob
    recon_prob: float = 0.0  # share of training images shown as their dVAE reconstruction
    bpe_dropout: bool = False

    def __post_init__(self) -> None:
        check_float(self, "lr", min_value=0.0, strict_min=True)
        check_float(self, "min_lr_ratio", min_value=0.0, max_value=1.0)
        check_int(self, "warmup_steps", min_value=0)
        check_float(self, "weight_decay", min_value=0.0)
        check_float(self, "eps", min_value=0.0, strict_min=True)
        check_int(self, "eval_max_pairs", min_value=2)
        check_int(self, "augment_shift", min_value=0)
        check_float(self, "blur_prob", min_value=0.0, max_value=1.0)
        check_float(self, "max_blur", min_value=0.0)
        check_int(self, "siblings", min_value=0)
        check_choice(self, "sibling_captions", ("all", "naming"))
        if self.sibling_captions == "naming" and self.siblings == 0:
            raise ValueError("CLIPTrainConfig.sibling_captions 'naming' is for hard negatives: set siblings > 0")
        check_float(self, "recon_prob", min_value=0.0, max_value=1.0)
        if self.recon_prob > 0 and not self.dvae:
            raise ValueError("CLIPTrainConfig.recon_prob > 0 needs a dvae (run or model folder)")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"CLIPTrainConfig.betas must be two numbers in [0, 1), got {self.betas!r}")


def shift_augment(pixels: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Translate ``float[3, H, W]`` by up to ``max_shift`` pixels each way, repeating the border."""
    if max_shift == 0:
        return pixels
    dx, dy = (torch.randint(-max_shift, max_shift + 1, (2,), generator=generator)).tolist()
    padded = F.pad(pixels[None], (max_shift,) * 4, mode="replicate")[0]  # (3, H+2s, W+2s)
    H, W = pixels.shape[-2:]
    return padded[:, max_shift + dy : max_shift + dy + H, max_shift + dx : max_shift + dx + W]


class CLIPPairs(Dataset):
    """Wraps an image-caption dataset into CLIP training items ``{ids: [Tt], pixels: [3, S, S]}``.

    The base dataset yields dicts with ``pixels`` (float [3, H, W] in [0, 1]) and ``caption``, and
    accepts ``(index, sample_seed)`` keys. Augmentation and BPE dropout draw from the sample seed.
    """

    def __init__(
        self,
        base: Dataset,
        tokenizer: BPETokenizer,
        image_size: int,
        *,
        augment_shift: int = 0,
        blur_prob: float = 0.0,
        max_blur: float = 0.0,
        bpe_dropout: bool = False,
    ) -> None:
        self.base, self.tokenizer, self.image_size = base, tokenizer, image_size
        self.augment_shift, self.bpe_dropout = augment_shift, bpe_dropout
        self.blur_prob, self.max_blur = blur_prob, max_blur

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, torch.Tensor]:
        index, seed = key if isinstance(key, tuple) else (key, 0)
        item = self.base[(index, seed)]
        g = torch.Generator().manual_seed(seed)
        pixels = resize_pixels(item["pixels"][None].float(), self.image_size)[0]  # (3, S, S)
        pixels = shift_augment(pixels, self.augment_shift, g)
        pixels = random_blur(pixels, self.blur_prob, self.max_blur, g)
        ids = self.tokenizer.encode(item["caption"], dropout=self.bpe_dropout, generator=g)[0]  # (Tt,)
        return {"ids": ids, "pixels": pixels, "caption": item["caption"], "stem": item.get("stem", "")}


class ReconstructedImages(Dataset):
    """``base`` with a share ``p`` of its items' pixels replaced by their dVAE round trip.

    Which items are replaced is drawn from the sample seed. The reconstructions of all items (of their
    seed-0 view, which is every view for a folder without a random transform) are computed once at
    construction (in batches, hard codes, ``uint8[N, 3, S, S]`` in memory, S the dVAE's image size), so
    training pays nothing per step.
    """

    def __init__(self, base: Dataset, dvae: nn.Module, p: float, *, batch_size: int = 256) -> None:
        self.base, self.p = base, p
        size = dvae.config.image_size  # type: ignore[union-attr]
        n = len(base)  # type: ignore[arg-type]
        recons = []
        with torch.no_grad():
            for lo in range(0, n, batch_size):
                chunk = range(lo, min(n, lo + batch_size))
                pixels = torch.stack([resize_pixels(base[(i, 0)]["pixels"][None].float(), size)[0] for i in chunk])
                recons.append((round_trip(dvae, pixels)[1] * 255).round().to(torch.uint8))
        self.recons = torch.cat(recons) if recons else torch.empty(0, 3, size, size, dtype=torch.uint8)

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        index, seed = key if isinstance(key, tuple) else (key, 0)
        item = dict(self.base[(index, seed)])
        g = torch.Generator().manual_seed((int(seed) * 0x9E3779B1 + 7) % (2**63))
        if bool(torch.rand((), generator=g) < self.p):
            item["pixels"] = self.recons[index].float() / 255
        return item


class WithSiblings(Dataset):
    """Item ``i`` of ``pairs`` followed by up to ``k`` other items of its group: a list of items.

    ``groups[i]`` is item ``i``'s group key (None: a group of its own). The siblings are drawn without
    replacement from the sample seed, so a key ``(i, seed)`` always gives the same list.
    """

    def __init__(self, pairs: Dataset, groups: list[str | None], k: int) -> None:
        if len(groups) != len(pairs):  # type: ignore[arg-type]
            raise ValueError(f"{len(groups)} group keys for {len(pairs)} items")  # type: ignore[arg-type]
        self.pairs, self.groups, self.k = pairs, groups, k
        members: dict[str, list[int]] = {}
        for i, key in enumerate(groups):
            if key is not None:
                members.setdefault(key, []).append(i)
        self.members = members

    def __len__(self) -> int:
        return len(self.pairs)  # type: ignore[arg-type]

    def __getitem__(self, key: int | tuple[int, int]) -> list[dict[str, Any]]:
        index, seed = key if isinstance(key, tuple) else (key, 0)
        group = self.groups[index]
        others = [j for j in self.members.get(group, []) if j != index] if group is not None else []
        g = torch.Generator().manual_seed(seed)
        picks = [others[int(j)] for j in torch.randperm(len(others), generator=g)[: self.k]]
        sibling_seeds = torch.randint(0, 2**62, (len(picks),), generator=g).tolist()
        return [self.pairs[(index, seed)]] + [self.pairs[(j, s)] for j, s in zip(picks, sibling_seeds)]


def sibling_metadata(data: str | Path, need: str) -> dict[str, dict[str, Any]]:
    """``metadata.jsonl`` beside the images or shards of ``data``. Without it, a clear error that starts
    with ``CLIPTrainConfig.`` and ``need`` (the option that needs it, and what for)."""
    try:
        return read_metadata(data_folder(data))  # a shard pattern or a single .tar: the folder holding them
    except FileNotFoundError as e:
        raise FileNotFoundError(f"CLIPTrainConfig.{need}: {e}") from None


def concept_groups(
    data: str | Path, stems: Sequence[str], meta: dict[str, dict[str, Any]] | None = None
) -> list[str | None]:
    """The ``concept`` of each stem from ``metadata.jsonl`` beside the images or shards (None where it
    has none); ``meta``: that file already read."""
    if meta is None:
        meta = sibling_metadata(data, "siblings needs the concept of every image")
    groups = [meta.get(stem, {}).get("concept") for stem in stems]
    if not any(groups):
        path = data_folder(data) / "metadata.jsonl"
        raise ValueError(f"{path}: no 'concept' field for any image (CLIPTrainConfig.siblings)")
    return [None if c is None else str(c) for c in groups]


def captions_naming_attributes(base: Dataset, meta: dict[str, dict[str, Any]]) -> Dataset:
    """``base`` with each image's captions cut to those naming its style and tone (``sibling_captions``),
    read from its ``metadata.jsonl`` rows ``meta``."""
    with_captions = getattr(base, "with_captions", None)
    if with_captions is None:
        kind = type(base).__name__
        raise ValueError(f"CLIPTrainConfig.sibling_captions 'naming': a {kind} cannot choose among captions")

    def naming(stem: str, lines: list[str]) -> list[str]:
        row = meta.get(stem, {})
        return [c for c in lines if names_attributes(c, row.get("style"), row.get("tone"))]

    return with_captions(naming)


def collate_pairs(items: list[Any]) -> dict[str, torch.Tensor]:
    """Stack CLIP items (or lists of them, from :class:`WithSiblings`) into ``{ids, pixels}``, keeping
    the first item of every caption: a repeated caption would be a false negative of the contrastive loss."""
    flat = [x for it in items for x in (it if isinstance(it, list) else [it])]
    seen: set[str] = set()
    keep = []
    for x in flat:
        if x["caption"] not in seen:
            seen.add(x["caption"])
            keep.append(x)
    return {"ids": torch.stack([x["ids"] for x in keep]), "pixels": torch.stack([x["pixels"] for x in keep])}


def _split_dataset(data: str, split: str) -> Dataset:
    return open_image_text_dataset(data, split=split)


class CLIPTask(TrainTask):
    """The CLIP stage for :func:`dalle_zero.training.loop.train`.

    ``train_data`` / ``eval_data`` (base datasets of ``{pixels, caption}`` dicts) default to the
    splits of ``config.data`` (an image folder or shards); tests pass in-memory datasets instead, and with
    ``config.siblings`` the ``groups`` of their items (default: the concepts in ``metadata.jsonl``).
    """

    def __init__(
        self,
        config: CLIPTrainConfig,
        tokenizer: BPETokenizer,
        *,
        train_data: Dataset | None = None,
        eval_data: Mapping[str, Dataset] | None = None,
        groups: list[str | None] | None = None,
    ) -> None:
        self.config = config
        self._groups = groups  # group key of each train_data item for ``siblings`` (default: concepts)
        self.tokenizer = tokenizer.with_text_seq_len(config.model.text_seq_len)
        if self.tokenizer.vocab_size > config.model.text_vocab_size:
            raise ValueError(
                f"tokenizer vocab_size {tokenizer.vocab_size} exceeds the CLIP's text_vocab_size "
                f"{config.model.text_vocab_size}"
            )
        self._train_data = train_data
        self._eval_data = dict(eval_data) if eval_data is not None else None

    # ---- data ----

    def train_dataset(self) -> Dataset:
        c = self.config
        base = self._train_data if self._train_data is not None else _split_dataset(c.data, c.train_split)
        stems = getattr(base, "stems", None)
        meta = None  # read once for both uses
        if c.sibling_captions == "naming":
            meta = sibling_metadata(c.data, "sibling_captions 'naming' needs each image's style and tone")
            base = captions_naming_attributes(base, meta)
        if c.recon_prob > 0:
            assert c.dvae is not None  # CLIPTrainConfig checks it
            dvae = DiscreteVAE.from_pretrained(resolve_model_dir(c.dvae)).eval()
            base = ReconstructedImages(base, dvae, c.recon_prob)
        pairs = CLIPPairs(
            base,
            self.tokenizer,
            c.model.image_size,
            augment_shift=c.augment_shift,
            blur_prob=c.blur_prob,
            max_blur=c.max_blur,
            bpe_dropout=c.bpe_dropout,
        )
        if c.siblings == 0:
            return pairs
        groups = self._groups
        if groups is None:
            if stems is None:
                raise ValueError("CLIPTrainConfig.siblings: pass the group of every training item (groups=)")
            groups = concept_groups(c.data, stems, meta)
        return WithSiblings(pairs, groups, c.siblings)

    def collate(self, items: list[Any]) -> dict[str, torch.Tensor]:
        return collate_pairs(items)

    def eval_datasets(self) -> dict[str, Dataset]:
        if self._eval_data is None:
            self._eval_data = {}
            for split in self.config.eval_splits:
                try:
                    self._eval_data[split] = _split_dataset(self.config.data, split)
                except (ValueError, KeyError, FileNotFoundError) as e:
                    logger.warning("no retrieval evaluation on split %r: %s", split, e)
        return self._eval_data

    # ---- optimisation ----

    def make_optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        c = self.config
        return adamw(
            model, lr=c.lr, betas=c.betas, eps=c.eps, weight_decay=c.weight_decay, no_decay=("emb", "logit_scale")
        )

    def lr_at(self, step: int) -> float:
        c = self.config
        return warmup_cosine(
            step, peak=c.lr, end=c.lr * c.min_lr_ratio, warmup_steps=c.warmup_steps, total_steps=c.loop.steps
        )

    def loss(self, model: nn.Module, batch: Any, step: int) -> tuple[torch.Tensor, dict[str, float]]:
        logits = model(batch["ids"], batch["pixels"])  # (B, B) per image
        loss = contrastive_loss(logits)
        with torch.no_grad():
            target = torch.arange(len(logits), device=logits.device)
            acc = (logits.argmax(1) == target).float().mean().item()
            scale = logits.new_tensor(0.0)
            inner = model.module if hasattr(model, "module") else model
            if isinstance(inner, DalleCLIP):
                scale = inner.temperature_scale()
        return loss, {"batch_i2t_acc": acc, "logit_scale": float(scale)}

    # ---- evaluation ----

    def evaluate(self, model: nn.Module, step: int, run_dir: Path) -> dict[str, float]:
        out: dict[str, float] = {}
        for split, data in self.eval_datasets().items():
            if len(data) < 2:  # type: ignore[arg-type]
                continue
            metrics = retrieval_accuracy(model, self.tokenizer, data, max_pairs=self.config.eval_max_pairs)
            out.update({f"{split}_{k}": v for k, v in metrics.items()})
        return out


@torch.no_grad()
def retrieval_accuracy(
    model: nn.Module, tokenizer: BPETokenizer, data: Dataset, *, max_pairs: int = 512, batch_size: int = 256
) -> dict[str, float]:
    """Top-1/top-5 image→text and text→image retrieval among up to ``max_pairs`` pairs of ``data``.

    Pairs are evenly spaced over the dataset (deterministic); images are not augmented. A retrieved
    candidate counts as correct if its caption equals the true one.
    """
    clip = model.module if hasattr(model, "module") else model
    n = len(data)  # type: ignore[arg-type]
    idx = torch.linspace(0, n - 1, min(n, max_pairs)).round().long().unique().tolist()
    device = next(clip.parameters()).device
    was_training = clip.training
    clip.eval()
    images, texts, captions = [], [], []
    for start in range(0, len(idx), batch_size):
        items = [data[(i, 0)] for i in idx[start : start + batch_size]]
        caps = [it["caption"] for it in items]
        pixels = torch.stack([it["pixels"].float() for it in items])
        pixels = resize_pixels(pixels, clip.config.image_size).to(device)
        images.append(clip.encode_image(pixels))
        texts.append(clip.encode_text(tokenizer.encode(caps).to(device)))
        captions.extend(caps)
    clip.train(was_training)
    sim = torch.cat(images) @ torch.cat(texts).t()  # (N images, N texts)
    group = {c: k for k, c in enumerate(dict.fromkeys(captions))}
    gid = torch.tensor([group[c] for c in captions], device=sim.device)  # caption identity
    N = len(captions)
    out: dict[str, float] = {"pairs": float(N)}
    for k in (1, 5):
        kk = min(k, N)
        i2t = gid[sim.topk(kk, dim=1).indices]  # (N, k) caption ids of retrieved texts
        t2i = gid[sim.t().topk(kk, dim=1).indices]
        out[f"i2t_top{k}"] = (i2t == gid[:, None]).any(1).float().mean().item()
        out[f"t2i_top{k}"] = (t2i == gid[:, None]).any(1).float().mean().item()
    return out


def build_model(config: CLIPTrainConfig) -> DalleCLIP:
    """A freshly initialised CLIP, seeded by ``loop.seed`` (a second seed gives an independent CLIP)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.loop.seed)
        return DalleCLIP(config.model)
