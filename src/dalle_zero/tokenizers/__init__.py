"""Text tokenizers: byte-level BPE for captions (paper §2.2)."""

from dalle_zero.tokenizers.bpe import BPETokenizer, TokenizerConfig

__all__ = ["BPETokenizer", "TokenizerConfig"]
