"""``dalle train tokenizer``: learn the byte-level BPE caption tokenizer from a folder (paper_spec §2).

Captions are the ``.txt`` files beside images of the same stem, found recursively. If the folder
has a ``splits.json`` (``{"train": [stems], "validation": [...], ...}``), only the training split is
read, so held-out captions never shape the vocabulary. ``--data`` may also name WebDataset shards
(:mod:`dalle_zero.data.webdataset`): their ``KEY.txt`` captions are read, split the same way.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from dalle_zero.data.pairs import IMAGE_SUFFIXES, caption_lines, split_stems

HELP = "train the BPE text tokenizer on the captions of an image-caption folder"



def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data",
        required=True,
        help="folder of images with same-stem .txt captions, or WebDataset shards "
        "(.tar, folder of .tar, shards/{00000..00009}.tar), or a .csv/.jsonl manifest of image,caption",
    )
    parser.add_argument("--out", required=True, help="tokenizer folder to write (tokenizer.json + config.json)")
    parser.add_argument("--vocab-size", type=int, required=True, help="tokens including pad (paper: 16384)")
    parser.add_argument("--text-seq-len", type=int, default=256, help="text positions (default 256, the paper's)")
    parser.add_argument("--min-frequency", type=int, default=2, help="minimum pair count for a merge")
    parser.add_argument("--split", default="train", help="split of splits.json to read, if present (default train)")


def read_captions(root: str | Path, split: str = "train") -> tuple[list[str], str]:
    """Caption texts under ``root`` (restricted to ``split`` if ``root/splits.json`` exists), every line
    of a caption file a caption of its own, and a note."""
    from dalle_zero.data.manifest import is_manifest
    from dalle_zero.data.webdataset import is_shard_source

    if is_shard_source(root) or is_manifest(root):
        return _indexed_captions(root, split)
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"data folder not found: {root}")
    wanted: set[str] | None = None
    note = "all captions (no splits.json)"
    splits_path = root / "splits.json"
    if splits_path.is_file():
        wanted = split_stems(splits_path, split)
        note = f"split {split!r} of {splits_path}"
    captions = []
    for txt in sorted(root.rglob("*.txt")):
        if not any(txt.with_suffix(s).is_file() for s in IMAGE_SUFFIXES):
            continue  # not a caption (README.txt, NOTICE.txt, ...)
        rel = str(txt.relative_to(root).with_suffix(""))
        if wanted is not None and txt.stem not in wanted and rel not in wanted:
            continue
        captions += caption_lines(txt.read_text(encoding="utf-8", errors="replace"))
    if not captions:
        raise ValueError(f"{root}: no captions found (.txt files beside same-stem images; {note})")
    return captions, note


def _indexed_captions(source: str | Path, split: str) -> tuple[list[str], str]:
    """The captions of WebDataset shards or a manifest (every caption line of every sample), restricted to
    ``split`` by a ``splits.json`` beside them; without one, they are all the train split (shards) or
    all read (a manifest)."""
    from dalle_zero.data.manifest import is_manifest
    from dalle_zero.data.sources import data_folder, open_image_text_dataset

    splits_path = data_folder(source) / "splits.json"
    has_splits = splits_path.is_file()
    pairs = open_image_text_dataset(source, split=split if has_splits or not is_manifest(source) else None,
                                    check="none")
    note = f"split {split!r} of {splits_path}" if has_splits else "all captions (no splits.json)"
    return [line for i in range(len(pairs)) for line in pairs.captions(i)], note


def run(args: argparse.Namespace) -> int:
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
