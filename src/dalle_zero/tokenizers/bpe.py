"""Byte-level BPE text tokenizer for captions (paper §2.2).

The paper lower-cases each caption, BPE-encodes it with a 16,384-token vocabulary (BPE dropout
p = 0.1 during training only) and keeps at most 256 tokens; positions after the caption hold a
learned per-position pad. :class:`BPETokenizer` does the same on top of Hugging Face ``tokenizers``:

- normalisation: ``ftfy.fix_text`` (mojibake, HTML entities, control characters), Unicode NFC,
  lower case, runs of whitespace collapsed to one space and stripped (a blank caption is all pads);
- byte-level BPE, so any Unicode string (emoji, CJK, control characters) encodes without an
  unknown token;
- id 0 is the pad id (the transformer swaps each 0 for its position's learned pad); no text ever
  encodes to 0, not even the literal string ``"<pad>"``;
- ``encode`` returns ``LongTensor[B, text_seq_len]`` padded with 0 and truncated, warning once per
  tokenizer with the count of truncated captions;
- BPE dropout is implemented here (not with the library's unseedable dropout) from the trained
  merge table, so it is reproducible from a ``torch.Generator`` or seed. With dropout p = 0 it
  yields exactly the library's tokens (tested).

A tokenizer saves as a folder holding ``tokenizer.json`` (the library's format) and
``config.json`` (``model_type`` "tokenizer", ``format_version``, ``vocab_size``, ``text_seq_len``,
``dropout_p``). A tokenizer from :meth:`BPETokenizer.train` also records the words of its training
captions (:func:`caption_words`) in ``words.json``, a sorted JSON list: byte-level BPE encodes any
word, so only this list tells which words a model trained with it has ever read
(:meth:`BPETokenizer.unknown_words`). A folder without it leaves ``known_words`` None.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import random
import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import ftfy
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from dalle_zero.config import Config, check_float, check_int, read_json_file
from dalle_zero.io import CONFIG_NAME, FORMAT_VERSION, atomic_directory, read_config_json
from dalle_zero.nn.embeddings import PAD_ID

logger = logging.getLogger(__name__)
_T = TypeVar("_T")

TOKENIZER_FILE = "tokenizer.json"
WORDS_FILE = "words.json"
PAD_TOKEN = "<pad>"  # at PAD_ID, the id the prior's text embedding learns a pad per position for
SPECIAL_TOKENS = (PAD_TOKEN,)  # id i = SPECIAL_TOKENS[i]
N_BYTES = 256  # byte-level alphabet: every string is representable without an unknown token
MIN_VOCAB_SIZE = len(SPECIAL_TOKENS) + N_BYTES
SPACE_MARK = "\u0120"  # how byte-level BPE writes the space before a word ("Ġ")
WORD = re.compile(r"\w+")  # a word of a normalised caption: letters of any script, digits, underscores


@dataclass(frozen=True, kw_only=True)
class TokenizerConfig(Config):
    """What ``config.json`` of a tokenizer folder records."""

    vocab_size: int  # special tokens + 256 bytes + merges, as trained
    text_seq_len: int = 256  # paper: 256 text positions
    dropout_p: float = 0.1  # BPE dropout used by encode(..., dropout=True); paper: 0.1

    def __post_init__(self) -> None:
        check_int(self, "vocab_size", min_value=MIN_VOCAB_SIZE)
        check_int(self, "text_seq_len", min_value=1)
        check_float(self, "dropout_p", min_value=0.0, max_value=1.0)
        if self.dropout_p >= 1.0:
            raise ValueError(f"TokenizerConfig.dropout_p must be < 1, got {self.dropout_p}")


def normalize_caption(text: str) -> str:
    """ftfy.fix_text, NFC, lower case, whitespace runs collapsed: the form every caption is tokenized in."""
    return " ".join(unicodedata.normalize("NFC", ftfy.fix_text(text)).lower().split())


def caption_words(text: str) -> list[str]:
    """The words of a caption in order, as :func:`normalize_caption` leaves them: runs of letters
    (any script), digits and underscores; punctuation, symbols and emoji are not words."""
    return WORD.findall(normalize_caption(text))


class BPETokenizer:
    """Byte-level BPE with fixed-length output; build with :meth:`train` or :meth:`from_pretrained`."""

    def __init__(self, tokenizer: object, config: TokenizerConfig, *, known_words: Iterable[str] | None = None) -> None:
        """Wrap a trained ``tokenizers.Tokenizer``; prefer :meth:`train` / :meth:`from_pretrained`.

        ``known_words``: the words of the training captions (:func:`caption_words`), or None if unknown.
        """
        self._tok = tokenizer
        self.config = config
        self.known_words: frozenset[str] | None = None if known_words is None else frozenset(known_words)
        self.truncated_count = 0  # captions longer than text_seq_len seen by encode() so far
        self._warned_truncation = False
        self._merge_ranks: dict[tuple[str, str], int] | None = None  # built lazily for dropout
        self._vocab: dict[str, int] | None = None
        # Dropout is encoded in Python per sample, so what does not depend on the draw is kept: a
        # caption's pre-tokens, a keep_whole list's words and a whole word's ids (bounded memos).
        self._pre_token_memo: dict[str, tuple[str, ...]] = {}
        self._whole_memo: dict[tuple[str, ...], frozenset[str]] = {}
        self._word_ids_memo: dict[str, list[int]] = {}
        actual = tokenizer.get_vocab_size(with_added_tokens=True)  # type: ignore[attr-defined]
        if actual != config.vocab_size:
            raise ValueError(f"tokenizer has {actual} tokens but its config says vocab_size={config.vocab_size}")
        if tokenizer.id_to_token(PAD_ID) != PAD_TOKEN:  # type: ignore[attr-defined]
            raise ValueError(f"tokenizer id {PAD_ID} must be {PAD_TOKEN!r}, got {tokenizer.id_to_token(PAD_ID)!r}")

    # ---- construction ----

    @classmethod
    def train(
        cls,
        captions: Iterable[str],
        vocab_size: int,
        text_seq_len: int = 256,
        min_frequency: int = 2,
        *,
        dropout_p: float = 0.1,
    ) -> BPETokenizer:
        """Learn a byte-level BPE of at most ``vocab_size`` tokens (pad + 256 bytes + merges).

        Fewer tokens result if the captions support fewer merges at ``min_frequency``; the actual
        size is ``tokenizer.vocab_size`` (logged when smaller than asked).
        """
        if not isinstance(vocab_size, int) or isinstance(vocab_size, bool) or vocab_size < MIN_VOCAB_SIZE:
            raise ValueError(f"vocab_size must be an integer >= {MIN_VOCAB_SIZE} (pad + 256 bytes), got {vocab_size!r}")
        if not isinstance(min_frequency, int) or min_frequency < 1:
            raise ValueError(f"min_frequency must be an integer >= 1, got {min_frequency!r}")
        # validate the other arguments before the (slow) training
        TokenizerConfig(vocab_size=vocab_size, text_seq_len=text_seq_len, dropout_p=dropout_p)

        n_captions = 0
        words: set[str] = set()

        def normalized() -> Iterable[str]:
            nonlocal n_captions
            for c in captions:
                if not isinstance(c, str):
                    raise ValueError(f"captions must be strings, got {type(c).__name__}")
                n_captions += 1
                text = normalize_caption(c)
                words.update(WORD.findall(text))  # caption_words(c), without normalising twice
                yield text

        tok = Tokenizer(models.BPE())
        tok.normalizer = None  # normalize_caption runs in Python (ftfy has no Rust equivalent)
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            special_tokens=list(SPECIAL_TOKENS),
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tok.train_from_iterator(normalized(), trainer)
        if n_captions == 0:
            raise ValueError("cannot train a tokenizer on zero captions")
        # The trainer registers "<pad>" as an added token, which would make the literal text "<pad>"
        # encode to id 0. Keep it in the vocabulary only, so 0 never comes from text.
        data = json.loads(tok.to_str())
        data["added_tokens"] = []
        tok = Tokenizer.from_str(json.dumps(data))
        actual = tok.get_vocab_size(with_added_tokens=True)
        if actual < vocab_size:
            logger.info(
                "captions support %d tokens at min_frequency=%d (asked for %d)",
                actual,
                min_frequency,
                vocab_size,
            )
        logger.info("trained BPE tokenizer: %d tokens from %d captions", actual, n_captions)
        config = TokenizerConfig(vocab_size=actual, text_seq_len=text_seq_len, dropout_p=dropout_p)
        return cls(tok, config, known_words=words)

    # ---- properties ----

    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size

    @property
    def text_seq_len(self) -> int:
        return self.config.text_seq_len

    @property
    def pad_id(self) -> int:
        return PAD_ID

    def with_text_seq_len(self, text_seq_len: int) -> BPETokenizer:
        """A copy that pads/truncates to another length (same vocabulary)."""
        config = dataclasses.replace(self.config, text_seq_len=text_seq_len)
        return BPETokenizer(self._tok, config, known_words=self.known_words)

    def with_dropout(self, p: float) -> BPETokenizer:
        """This tokenizer (when ``p`` is already its dropout) or a copy with BPE dropout probability ``p``
        for ``encode(..., dropout=True)`` (same vocabulary)."""
        if self.config.dropout_p == p:
            return self
        return BPETokenizer(self._tok, dataclasses.replace(self.config, dropout_p=p), known_words=self.known_words)

    def unknown_words(self, text: str) -> list[str]:
        """The words of ``text`` (:func:`caption_words`) absent from the training captions, each once,
        in caption order; empty when this tokenizer has no word list (``known_words`` is None)."""
        if self.known_words is None:
            return []
        return list(dict.fromkeys(w for w in caption_words(text) if w not in self.known_words))

    # ---- encoding ----

    def tokenize(
        self,
        texts: Sequence[str],
        *,
        dropout: bool = False,
        generator: torch.Generator | None = None,
        seed: int | None = None,
        keep_whole: Iterable[str] = (),
    ) -> list[list[int]]:
        """Variable-length token ids per caption (no padding, no truncation). ``keep_whole``: words
        (:func:`caption_words`) that BPE dropout leaves as plain BPE spells them."""
        texts = _as_list(texts)
        normed = [normalize_caption(t) for t in texts]
        if dropout and self.config.dropout_p > 0.0:
            rng = random.Random(_python_seed(generator, seed))
            whole = self._whole_words(tuple(keep_whole))
            return [self._encode_with_dropout(t, rng, whole) for t in normed]
        return [e.ids for e in self._tok.encode_batch(normed, add_special_tokens=False)]  # type: ignore[attr-defined]

    def encode(
        self,
        text: str | Sequence[str],
        *,
        dropout: bool = False,
        generator: torch.Generator | None = None,
        seed: int | None = None,
        keep_whole: Iterable[str] = (),
    ) -> torch.Tensor:
        """Captions -> ``LongTensor[B, text_seq_len]``, 0-padded and truncated (B = 1 for a str).

        ``dropout=True`` applies BPE dropout with ``config.dropout_p`` (training only), to every word
        but those of ``keep_whole``. Its random choices come from ``generator`` (a ``torch.Generator``,
        advanced by one draw) or ``seed``; with neither, from torch's global generator. Captions
        longer than ``text_seq_len`` tokens keep their first tokens; the first time that happens a
        warning gives the count so far.
        """
        ids = self.tokenize(
            _as_list(text), dropout=dropout, generator=generator, seed=seed, keep_whole=keep_whole
        )
        T = self.text_seq_len
        out = torch.zeros(len(ids), T, dtype=torch.long)  # (B, Tt), 0 = pad
        n_truncated = 0
        for i, row in enumerate(ids):
            if len(row) > T:
                n_truncated += 1
                row = row[:T]
            if row:
                out[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        if n_truncated:
            self.truncated_count += n_truncated
            if not self._warned_truncation:
                self._warned_truncation = True
                logger.warning(
                    "%d caption(s) so far were longer than text_seq_len=%d tokens and were truncated "
                    "(this warning is shown once; see tokenizer.truncated_count)",
                    self.truncated_count,
                    T,
                )
        return out

    def __call__(self, text: str | Sequence[str], **kwargs: object) -> torch.Tensor:
        return self.encode(text, **kwargs)  # type: ignore[arg-type]

    def decode(self, ids: torch.Tensor | Sequence[int]) -> str | list[str]:
        """Ids -> text, skipping pads. A 1-D input gives a str, a 2-D ``[B, T]`` input a list of str."""
        if isinstance(ids, torch.Tensor):
            if ids.dim() == 2:
                return [self._decode_row(r.tolist()) for r in ids]
            if ids.dim() != 1:
                raise ValueError(f"decode expects ids of shape [T] or [B, T], got {tuple(ids.shape)}")
            ids = ids.tolist()
        ids = list(ids)
        if ids and isinstance(ids[0], (list, tuple)):
            return [self._decode_row(list(r)) for r in ids]
        return self._decode_row(ids)

    def _decode_row(self, ids: list[int]) -> str:
        bad = [i for i in ids if not 0 <= int(i) < self.vocab_size]
        if bad:
            raise ValueError(f"token id(s) {bad[:5]} outside the vocabulary [0, {self.vocab_size})")
        text = self._tok.decode([int(i) for i in ids if i != PAD_ID], skip_special_tokens=False)  # type: ignore
        return text[1:] if text.startswith(" ") else text  # undo add_prefix_space

    # ---- BPE dropout (Provilkov et al. 2020), seeded ----

    def _pre_token_words(self, normed: str) -> tuple[str, ...]:
        """The pre-tokenizer's words of the normalised caption ``normed`` (with the space mark ``Ġ``)."""
        words = self._pre_token_memo.get(normed)
        if words is None:
            pre = self._tok.pre_tokenizer.pre_tokenize_str(normed)  # type: ignore[attr-defined]
            words = _remember(self._pre_token_memo, normed, tuple(word for word, _ in pre))
        return words

    def _whole_words(self, keep_whole: tuple[str, ...]) -> frozenset[str]:
        """The pre-tokenizer's words of ``keep_whole``, without the byte-level space mark (``Ġ``)."""
        whole = self._whole_memo.get(keep_whole)
        if whole is None:
            words = self._pre_token_words(normalize_caption(" ".join(keep_whole)))
            whole = _remember(self._whole_memo, keep_whole, frozenset(w.removeprefix(SPACE_MARK) for w in words))
        return whole

    def _encode_with_dropout(self, normed: str, rng: random.Random, whole: frozenset[str] = frozenset()) -> list[int]:
        if self._merge_ranks is None:
            model = json.loads(self._tok.to_str())["model"]  # type: ignore[attr-defined]
            merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in model["merges"]]
            self._merge_ranks = {(a, b): r for r, (a, b) in enumerate(merges)}
            self._vocab = model["vocab"]
        vocab, ranks = self._vocab, self._merge_ranks
        assert vocab is not None
        p = self.config.dropout_p
        ids: list[int] = []
        for word in self._pre_token_words(normed):
            if word.removeprefix(SPACE_MARK) in whole:  # plain BPE draws nothing: the same ids every time
                kept = self._word_ids_memo.get(word)
                if kept is None:
                    pieces = _merge_word(list(word), ranks, 0.0, rng)
                    kept = _remember(self._word_ids_memo, word, [vocab[s] for s in pieces])
                ids.extend(kept)
            else:
                ids.extend(vocab[s] for s in _merge_word(list(word), ranks, p, rng))
        return ids

    # ---- save / load ----

    def save_pretrained(self, folder: str | Path) -> Path:
        """Write ``tokenizer.json`` + ``config.json`` (+ ``words.json`` if known) to ``folder`` atomically."""
        folder = Path(folder)
        meta = {"model_type": "tokenizer", "format_version": FORMAT_VERSION}
        with atomic_directory(folder) as tmp:
            (tmp / TOKENIZER_FILE).write_text(self._tok.to_str(pretty=True))  # type: ignore[attr-defined]
            cfg = json.loads(self.config.to_json())
            (tmp / CONFIG_NAME).write_text(json.dumps({**meta, **cfg}, indent=2) + "\n")
            if self.known_words is not None:
                # one word per line; ASCII escapes, so reading it back never depends on the locale
                (tmp / WORDS_FILE).write_text(json.dumps(sorted(self.known_words), indent=0) + "\n")
        return folder

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> BPETokenizer:
        folder = Path(folder)
        data = read_config_json(folder, expected_model_type="tokenizer")
        data = {k: v for k, v in data.items() if k not in ("config_class", "model_type", "format_version")}
        config = TokenizerConfig.from_dict(data, source=str(folder / CONFIG_NAME))
        path = folder / TOKENIZER_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{folder}: no {TOKENIZER_FILE} (is this a tokenizer folder?)")
        try:
            tok = Tokenizer.from_file(str(path))
        except Exception as e:  # the library raises a bare Exception on malformed files
            raise ValueError(f"{path}: not a readable tokenizers file ({e})") from None
        known_words = read_words_file(folder / WORDS_FILE)
        try:
            return cls(tok, config, known_words=known_words)
        except ValueError as e:
            raise ValueError(f"{folder}: {e}") from None

    def __repr__(self) -> str:
        return f"BPETokenizer(vocab_size={self.vocab_size}, text_seq_len={self.text_seq_len})"


def read_words_file(path: Path) -> list[str] | None:
    """The word list of a tokenizer folder's ``words.json``; None if the file is absent."""
    if not path.is_file():
        return None
    words = read_json_file(path)
    if not isinstance(words, list):
        raise ValueError(f"{path}: must be a JSON list of words (strings), got a {type(words).__name__}")
    bad = [w for w in words if not isinstance(w, str)]
    if bad:
        raise ValueError(f"{path}: must be a JSON list of words (strings), found {bad[0]!r}")
    return words


def _merge_word(symbols: list[str], ranks: dict[tuple[str, str], int], p: float, rng: random.Random) -> list[str]:
    """Greedy BPE on one pre-token, skipping each candidate merge with probability ``p`` per step.

    With p = 0 this is standard BPE: repeatedly merge the lowest-rank adjacent pair (leftmost on ties).
    """
    while len(symbols) > 1:
        best_rank, best_i = None, -1
        for i in range(len(symbols) - 1):
            r = ranks.get((symbols[i], symbols[i + 1]))
            if r is None or (p > 0.0 and rng.random() < p):
                continue
            if best_rank is None or r < best_rank:
                best_rank, best_i = r, i
        if best_rank is None:
            break
        symbols = symbols[:best_i] + [symbols[best_i] + symbols[best_i + 1]] + symbols[best_i + 2 :]
    return symbols


_MEMO_SIZE = 1 << 16  # entries per memo; a full memo starts over rather than grow with the dataset


def _remember(memo: dict, key: object, value: _T) -> _T:
    if len(memo) >= _MEMO_SIZE:
        memo.clear()
    memo[key] = value
    return value


def _as_list(text: str | Sequence[str]) -> list[str]:
    if isinstance(text, str):
        return [text]
    if isinstance(text, torch.Tensor) or not isinstance(text, Sequence):
        raise ValueError(f"expected a caption string or a list of strings, got {type(text).__name__}")
    bad = [type(t).__name__ for t in text if not isinstance(t, str)]
    if bad:
        raise ValueError(f"expected a list of strings, found item(s) of type {sorted(set(bad))}")
    return list(text)


def _python_seed(generator: torch.Generator | None, seed: int | None) -> int:
    if generator is not None and seed is not None:
        raise ValueError("pass either generator or seed, not both")
    if seed is not None:
        return int(seed)
    return int(torch.randint(0, 2**62, (), generator=generator).item())
