"""The prior's training data: token shards as ``(text_ids, image_ids)`` pairs, and their checks.

The image side comes from the token shards written once by ``dalle encode`` (their grid, code vocabulary
and splits); the text side is the caption tokenised with BPE dropout, or the empty caption with
probability ``null_caption_prob`` (see :mod:`~dalle_zero.training.prior` for why). An item is a pure
function of its key, so a resumed run draws the same tokens as an uninterrupted one.

BPE dropout can spare the words of one metadata field (``bpe_dropout_spares``, e.g. the emoji's
``name``) and a list of words (``bpe_dropout_spared_words``, e.g. those of tone and style): a short
run learns those words as plain BPE spells them at sampling time, while every other word of its
captions (the words before the name, keywords, categories) comes in pieces now and then. A word the
prior never saw, spelled in pieces before the name ("a p·ic·t·ure of"), then reads as such a word
instead of as part of a name.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from dalle_zero.data.metadata import read_metadata
from dalle_zero.data.tokens import read_token_index
from dalle_zero.errors import DataError
from dalle_zero.models.transformer import TransformerConfig
from dalle_zero.tokenizers.bpe import BPETokenizer

logger = logging.getLogger(__name__)


def check_compatible(
    model: TransformerConfig,
    tokenizer: BPETokenizer,
    image_grid: int,
    image_vocab_size: int,
    *,
    tokens: str = "token shards",
    tokenizer_name: str = "tokenizer",
) -> None:
    """Raise a ValueError naming both values if the model cannot read this tokenizer's or shards' ids."""
    problems = []
    if model.text_vocab_size != tokenizer.vocab_size:
        problems.append(
            f"text_vocab_size {model.text_vocab_size} in the transformer config but {tokenizer.vocab_size} "
            f"in {tokenizer_name}"
        )
    if model.text_seq_len != tokenizer.text_seq_len:
        problems.append(
            f"text_seq_len {model.text_seq_len} in the transformer config but {tokenizer.text_seq_len} "
            f"in {tokenizer_name}"
        )
    if model.image_grid != image_grid:
        problems.append(
            f"image_grid {model.image_grid} in the transformer config but {image_grid} in {tokens}"
        )
    if model.image_vocab_size != image_vocab_size:
        problems.append(
            f"image_vocab_size {model.image_vocab_size} in the transformer config "
            f"but {image_vocab_size} in {tokens}"
        )
    if problems:
        raise ValueError("; ".join(problems))


def data_model_fields(tokens_dir: str, tokenizer: BPETokenizer, tokenizer_dir: str) -> dict[str, tuple[int, str]]:
    """The model fields the data decides, ``{field: (value, where it comes from)}``: the image side from the
    token shards' ``index.json``, the text side from the tokenizer."""
    index = read_token_index(tokens_dir)
    h, w = index["grid"]
    if h != w:
        raise ValueError(f"{tokens_dir}: token grid is {h}x{w}; the transformer needs a square grid")
    shards, tok_src = f"token shards {tokens_dir}", f"tokenizer {tokenizer_dir}"
    return {
        "image_grid": (int(h), shards),
        "image_vocab_size": (int(index["image_vocab_size"]), shards),
        "text_vocab_size": (tokenizer.vocab_size, tok_src),
        "text_seq_len": (tokenizer.text_seq_len, tok_src),
    }


class PriorDataset(Dataset):
    """Token-shard items as training pairs: ``{"text": LongTensor[Tt], "image": LongTensor[Ti]}``.

    ``indices`` selects items of ``tokens`` (default: all). Keys are ``(index, sample_seed)`` from the
    loop's sampler (a plain index means seed 0). The seed decides both the null-caption coin and the
    BPE-dropout choices, so an item is a pure function of its key.
    """

    def __init__(
        self,
        tokens: Dataset,
        tokenizer: BPETokenizer,
        *,
        bpe_dropout: float,
        null_caption_prob: float,
        indices: list[int] | None = None,
        spared_words: dict[str, tuple[str, ...]] | None = None,
        always_whole: tuple[str, ...] = (),
    ) -> None:
        self.tokens = tokens
        self.indices = list(range(len(tokens))) if indices is None else list(indices)
        self.tokenizer = tokenizer.with_dropout(bpe_dropout)
        self.dropout = bpe_dropout > 0.0
        self.null_caption_prob = null_caption_prob
        self.spared_words = spared_words or {}
        self.always_whole = tuple(always_whole)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, torch.Tensor]:
        index, seed = key if isinstance(key, tuple) else (key, 0)
        # the token folder uses the seed to pick one of several caption lines; draw our own coins
        # (null caption, BPE dropout) from a different stream of the same seed
        item = self.tokens[(self.indices[index], seed)]
        g = torch.Generator().manual_seed((seed * 0x9E3779B97F4A7C15 + 1) % 2**63)
        caption = item["caption"]
        if self.null_caption_prob > 0.0 and float(torch.rand((), generator=g)) < self.null_caption_prob:
            caption = ""
        keep = self.spared_words.get(item.get("stem", ""), ()) + self.always_whole
        text = self.tokenizer.encode(caption, dropout=self.dropout, generator=g, keep_whole=keep)[0]  # (Tt,)
        return {"text": text, "image": item["image_codes"].long()}


def spared_words(tokens_dir: Path, stems: list[str], field: str | None) -> dict[str, tuple[str, ...]]:
    """``{stem: words}`` of metadata ``field`` for the token folder's items (``bpe_dropout_spares``);
    empty for no field. A clear error when the folder has no ``metadata.jsonl`` or no item has the field."""
    if field is None:
        return {}
    try:
        rows = read_metadata(tokens_dir)
    except FileNotFoundError as e:
        raise DataError(f"bpe_dropout_spares {field!r} needs the metadata of every image: {e}") from None
    out = {s: tuple(str(rows[s][field]).split()) for s in stems if s in rows and rows[s].get(field)}
    if not out:
        raise DataError(f"{tokens_dir / 'metadata.jsonl'}: no item has the field {field!r} (bpe_dropout_spares)")
    return out


def split_indices(
    tokens: Any, train_split: str | None, val_split: str | None, *, source: str
) -> tuple[list[int], list[int]]:
    """Item indices of the training and validation splits recorded in the token folder's index.

    A folder without splits trains on everything (no validation); a folder with splits must hold
    ``train_split``; a missing ``val_split`` just means no validation.
    """
    splits = tokens.index.get("splits") or {}
    everything = list(range(len(tokens)))
    if not splits:
        if train_split is not None:
            logger.warning(
                "%s records no splits: training on all %d items, no validation", source, len(tokens)
            )
        return everything, []
    position = {stem: i for i, stem in enumerate(tokens.stems)}

    def pick(name: str) -> list[int]:
        return sorted(position[s] for s in splits[name] if s in position)

    if train_split is None:
        train = everything
    elif train_split not in splits:
        raise ValueError(f"{source}: token folder has no split {train_split!r}; it has {sorted(splits)}")
    else:
        train = pick(train_split)
    val = pick(val_split) if val_split is not None and val_split in splits else []
    if val_split is not None and val_split not in splits:
        logger.warning("%s has no split %r: no validation", source, val_split)
    if not train:
        raise ValueError(f"{source}: split {train_split!r} holds no items")
    return train, val


def token_shape(tokens: Any) -> tuple[int, int]:
    """(image_grid, image_vocab_size) recorded by the token shards."""
    return int(tokens.image_grid), int(tokens.image_vocab_size)
