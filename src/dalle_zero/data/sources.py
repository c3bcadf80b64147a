"""One entry point for ``--data``: an image folder, WebDataset tar shards or a manifest, told apart by the path.

``--data`` names tar shards (:class:`~dalle_zero.data.webdataset.ImageTextShards`) when it is a
``.tar`` file, a brace pattern such as ``shards/{00000..00009}.tar``, or a folder holding ``.tar``
files and no images; a manifest (:class:`~dalle_zero.data.manifest.ImageTextManifest`) when it is a
``.csv`` or ``.jsonl`` file of ``image,caption`` rows; anything else is an image folder
(:class:`~dalle_zero.data.folder.ImageTextFolder`). All give the same items, so the trainers,
``dalle encode`` and the tokenizer take any of them; :func:`read_captions` reads the captions alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dalle_zero.data.folder import ImageTextFolder
from dalle_zero.data.manifest import ImageTextManifest, is_manifest
from dalle_zero.data.pairs import IMAGE_SUFFIXES, ImageTextPairs, Transform, caption_lines, split_stems
from dalle_zero.data.webdataset import ImageTextShards, is_shard_source, shard_folder, shard_paths


def open_image_text_dataset(
    data: str | Path, transform: Transform | None = None, *, split: str | None = None, **options: Any
) -> ImageTextPairs:
    """The image–caption dataset ``data`` names (folder, shards or manifest), restricted to ``split`` if given.

    ``options`` (``splits_file``, ``check``, ``filter_aspect``, ``seed``) are passed to the reader.
    """
    reader: type[ImageTextPairs]
    if is_manifest(data):
        reader = ImageTextManifest
    else:
        reader = ImageTextShards if is_shard_source(data) else ImageTextFolder
    return reader(data, transform, split=split, **options)


def data_folder(data: str | Path) -> Path:
    """The folder of ``data`` that holds its ``splits.json`` and ``metadata.jsonl``, if any."""
    if is_manifest(data):
        return Path(data).parent
    return shard_folder(data) if is_shard_source(data) else Path(data)


def has_splits(data: str | Path) -> bool:
    """True if ``data`` comes with a ``splits.json``."""
    return (data_folder(data) / "splits.json").is_file()


def check_data_source(data: str | Path) -> None:
    """A one-line error (FileNotFoundError) if ``data`` is no image folder, existing shards or manifest."""
    if is_manifest(data):
        if not Path(data).is_file():
            raise FileNotFoundError(f"manifest not found: {data}")
    elif is_shard_source(data):
        shard_paths(data)
    elif not Path(data).is_dir():
        raise FileNotFoundError(f"data folder not found: {data}")


def read_captions(root: str | Path, split: str = "train") -> tuple[list[str], str]:
    """Caption texts under ``root`` (restricted to ``split`` if ``root/splits.json`` exists), every line
    of a caption file a caption of its own, and a note saying which captions they are.

    For an image folder, captions are the ``.txt`` files beside images of the same stem, found
    recursively; for shards or a manifest, the captions of every sample (:func:`open_image_text_dataset`).
    """
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
    splits_path = data_folder(source) / "splits.json"
    has_splits = splits_path.is_file()
    pairs = open_image_text_dataset(source, split=split if has_splits or not is_manifest(source) else None,
                                    check="none")
    note = f"split {split!r} of {splits_path}" if has_splits else "all captions (no splits.json)"
    return [line for i in range(len(pairs)) for line in pairs.captions(i)], note
