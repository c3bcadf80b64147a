"""One entry point for ``--data``: an image folder, WebDataset tar shards or a manifest, told apart by the path.

``--data`` names tar shards (:class:`~dalle_zero.data.webdataset.ImageTextShards`) when it is a
``.tar`` file, a brace pattern such as ``shards/{00000..00009}.tar``, or a folder holding ``.tar``
files and no images; a manifest (:class:`~dalle_zero.data.manifest.ImageTextManifest`) when it is a
``.csv`` or ``.jsonl`` file of ``image,caption`` rows; anything else is an image folder
(:class:`~dalle_zero.data.folder.ImageTextFolder`). All give the same items, so the trainers,
``dalle encode`` and the tokenizer take any of them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dalle_zero.data.folder import ImageTextFolder
from dalle_zero.data.manifest import ImageTextManifest, is_manifest
from dalle_zero.data.pairs import ImageTextPairs, Transform
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
