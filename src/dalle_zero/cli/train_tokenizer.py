"""``dalle train tokenizer``: learn the byte-level BPE caption tokenizer from a folder (paper §2.2).

Captions are the ``.txt`` files beside images of the same stem, found recursively. If the folder
has a ``splits.json`` (``{"train": [stems], "validation": [...], ...}``), only the training split is
read, so held-out captions never shape the vocabulary. ``--data`` may also name WebDataset shards
(:mod:`dalle_zero.data.webdataset`): their ``KEY.txt`` captions are read, split the same way
(:func:`dalle_zero.data.sources.read_captions`).
"""

from __future__ import annotations

import argparse

from dalle_zero.cli.options import add_data_argument

HELP = "train the BPE text tokenizer on the captions of an image-caption folder"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_data_argument(parser)
    parser.add_argument("--out", required=True, help="tokenizer folder to write (tokenizer.json + config.json)")
    parser.add_argument("--vocab-size", type=int, required=True, help="tokens including pad (paper: 16384)")
    parser.add_argument("--text-seq-len", type=int, default=256, help="text positions (default 256, the paper's)")
    parser.add_argument("--min-frequency", type=int, default=2, help="minimum pair count for a merge")
    parser.add_argument("--split", default="train", help="split of splits.json to read, if present (default train)")


def run(args: argparse.Namespace) -> int:
    # imported here, not at the top: `dalle --help` imports every command module
    from dalle_zero.data.sources import read_captions
    from dalle_zero.tokenizers.bpe import BPETokenizer

    captions, note = read_captions(args.data, args.split)
    print(f"read {len(captions)} captions from {args.data} ({note})")
    tok = BPETokenizer.train(
        captions, vocab_size=args.vocab_size, text_seq_len=args.text_seq_len, min_frequency=args.min_frequency
    )
    lengths = [len(ids) for ids in tok.tokenize(captions)]
    truncated = sum(n > tok.text_seq_len for n in lengths)
    tok.save_pretrained(args.out)
    print(f"vocab size: {tok.vocab_size} (asked for {args.vocab_size})")
    print(f"tokens per caption: mean {sum(lengths) / len(lengths):.2f}, max {max(lengths)}")
    print(f"truncated at text_seq_len={tok.text_seq_len}: {truncated} of {len(captions)} captions")
    print(f"wrote {args.out}")
    return 0
