"""What a pipeline checks of a caption before it draws: that some text is left after normalisation,
that it fits the tokenizer's ``text_seq_len`` (a longer one keeps its first tokens, with a warning),
and whether the training captions contained most of its words.

A model only draws what its training captions taught it, and nothing in a free-text box says what
that is: :func:`caption_warning` flags a caption most of whose words the training captions never
contained (the tokenizer's word list, :meth:`~dalle_zero.tokenizers.bpe.BPETokenizer.unknown_words`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from torch import Tensor

from dalle_zero.tokenizers.bpe import BPETokenizer, caption_words

logger = logging.getLogger(__name__)

MAX_WORDS_NAMED = 10  # a caption warning names at most this many unseen words


def no_text_message(caption: str) -> str:
    """The one-line error for a caption that leaves no text to condition on."""
    if not caption.strip():
        return f"caption {caption!r} is empty: give some text to draw"
    return (
        f"caption {caption[:60]!r} has no text to draw: normalisation drops all of its characters "
        "(control or formatting characters); give some words"
    )


def check_caption(tokenizer: BPETokenizer, caption: str) -> None:
    """Raise ValueError (one line) if ``caption`` leaves no text to condition on: blank, or made only
    of characters the normalisation drops (:func:`~dalle_zero.tokenizers.bpe.normalize_caption`)."""
    if not isinstance(caption, str):
        raise ValueError(f"a caption must be a string, got {type(caption).__name__}")
    if not tokenizer.tokenize([caption])[0]:
        raise ValueError(no_text_message(caption))


def caption_warning(tokenizer: BPETokenizer, caption: str) -> str | None:
    """One line if more than half of the words of ``caption`` never appeared in training, else None.

    The prior has never seen those words (byte-level BPE encodes them anyway), so the images follow
    the few words it knows, or none. None as well without the tokenizer's word list.
    """
    unknown = tokenizer.unknown_words(caption)
    if not unknown:
        return None
    words, unseen = caption_words(caption), set(unknown)
    n_unknown = sum(w in unseen for w in words)  # with repeats: "zebra zebra" counts twice
    if 2 * n_unknown <= len(words):
        return None
    named = ", ".join(f'"{w}"' for w in unknown[:MAX_WORDS_NAMED])
    if len(unknown) > MAX_WORDS_NAMED:
        named += f" and {len(unknown) - MAX_WORDS_NAMED} more"
    return (
        f"most words of this caption never appeared in training: {named}; "
        "the model draws only what its captions taught it"
    )


def encode_captions(tokenizer: BPETokenizer, prompts: Sequence[str], *, warn: bool = True) -> Tensor:
    """Captions -> LongTensor[B, Tt]; captions without text are refused, over-long ones keep their first
    ``text_seq_len`` tokens: with ``warn`` a warning each, else one line at INFO level for them all (the
    many captions of an evaluation are cut as the prior's training captions were, on purpose)."""
    prompts = list(prompts)
    limit = tokenizer.text_seq_len
    over = 0
    for prompt, ids in zip(prompts, tokenizer.tokenize(prompts)):
        if not ids:
            raise ValueError(no_text_message(prompt))
        if len(ids) > limit:
            over += 1
            if warn:
                logger.warning(
                    "caption %r has %d tokens; only the first %d (text_seq_len) are used", prompt[:60], len(ids), limit
                )
    if over and not warn:
        logger.info("%d of %d captions have over %d tokens; only their first %d (text_seq_len) are used",
                    over, len(prompts), limit, limit)
    return tokenizer.encode(prompts)
