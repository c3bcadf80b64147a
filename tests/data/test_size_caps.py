"""Files that lie about their size: a pixel cap in every image reader (checked from the image header,
before decoding) and a size cap for tar members (checked from the tar header, before reading).

An image over the cap is skipped and counted like a corrupt one; at load time it is replaced like one.
"""

from __future__ import annotations

import io
import json
import os
import struct
import tarfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dalle_zero.data.folder import ImageTextFolder
from dalle_zero.data.manifest import ImageTextManifest
from dalle_zero.data.pairs import MAX_PIXELS, OVERSIZED, open_image
from dalle_zero.data.webdataset import MAX_MEMBER_BYTES, OVERSIZED_MEMBER, ImageTextShards
from tests.factories.folders import good_folder, write_image

BOMB_SIDE = 12_000  # 144 megapixels in a PNG of about 140 kB


def write_bomb_png(path: Path, side: int = BOMB_SIDE) -> Path:
    """A valid, all-black greyscale PNG of ``side`` x ``side`` pixels, written without holding its pixels."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    packer = zlib.compressobj(9)
    row = bytes(side + 1)  # filter byte + one byte a pixel
    idat = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


@pytest.fixture(scope="module")
def bomb(tmp_path_factory) -> Path:
    path = write_bomb_png(tmp_path_factory.mktemp("bomb") / "bomb.png")
    assert path.stat().st_size < 500_000
    with open_image(path) as im:
        assert im.size[0] * im.size[1] > MAX_PIXELS
    return path


def _folder_with_bomb(root: Path, bomb: Path) -> Path:
    good_folder(root, n=3)
    (root / "bomb.png").write_bytes(bomb.read_bytes())
    (root / "bomb.txt").write_text("a black square\n")
    return root


def _tar(path: Path, members: list[tuple[str, bytes]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def _open(kind: str, folder: Path, work: Path, **kw):
    """The pairs of ``folder`` through reader ``kind``; every file is copied as it is (no reader filters them)."""
    pairs = sorted(p for p in folder.iterdir() if p.suffix == ".png")
    if kind == "folder":
        return ImageTextFolder(folder, **kw)
    if kind == "shards":
        members = []
        for p in pairs:
            members += [(f"{p.stem}.png", p.read_bytes()), (f"{p.stem}.txt", p.with_suffix(".txt").read_bytes())]
        return ImageTextShards(_tar(work / "shards" / "00000.tar", members), **kw)
    rows = [{"image": str(p), "caption": p.with_suffix(".txt").read_text()} for p in pairs]
    (work / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return ImageTextManifest(work / "pairs.jsonl", **kw)


@pytest.mark.parametrize("kind", ["folder", "shards", "manifest"])
def test_an_image_over_the_pixel_cap_is_skipped_and_counted_without_decoding_it(bomb, tmp_path, kind):
    """A 140 kB PNG of 144 megapixels used to be decoded (a gigabyte and more of memory) and kept."""
    data = _open(kind, _folder_with_bomb(tmp_path / "images", bomb), tmp_path)
    assert sorted(data.stems) == ["img0", "img1", "img2"]
    assert data.skipped[OVERSIZED] == 1
    assert OVERSIZED in data.report_skipped()


@pytest.mark.parametrize("kind", ["folder", "shards", "manifest"])
def test_the_pixel_cap_is_configurable(tmp_path, kind):
    folder = tmp_path / "images"
    write_image(folder / "small.png", size=(8, 8))
    (folder / "small.txt").write_text("small\n")
    write_image(folder / "large.png", size=(20, 16))
    (folder / "large.txt").write_text("large\n")
    data = _open(kind, folder, tmp_path, max_pixels=100)
    assert data.stems == ["small"] and data.skipped[OVERSIZED] == 1


def test_a_pixel_cap_that_is_not_a_positive_integer_is_a_clear_error(tmp_path):
    good_folder(tmp_path / "images", n=1)
    with pytest.raises(ValueError, match="max_pixels must be a positive integer, got 0"):
        ImageTextFolder(tmp_path / "images", max_pixels=0)


def test_an_image_over_the_cap_found_at_load_time_is_replaced_and_counted(bomb, tmp_path):
    """With check="none" nothing is opened at index time: the cap still holds when an item is read."""
    data = ImageTextFolder(_folder_with_bomb(tmp_path / "images", bomb), check="none")
    index = data.stems.index("bomb")
    item = data[index]
    assert item["stem"] != "bomb" and item["pixels"].shape == (3, 16, 20)
    assert data.skipped["load error"] == 1


def _noise_png(n_bytes_at_least: int) -> bytes:
    rng = np.random.default_rng(0)
    side = int(np.sqrt(n_bytes_at_least / 3)) + 8
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (side, side, 3), dtype=np.uint8)).save(buf, format="PNG")
    assert len(buf.getvalue()) >= n_bytes_at_least
    return buf.getvalue()


def test_a_tar_member_over_the_size_cap_is_skipped_unread_and_counted(tmp_path):
    buf = io.BytesIO()
    Image.new("RGB", (6, 6), (1, 2, 3)).save(buf, format="PNG")
    small = buf.getvalue()
    members = [
        ("big.png", _noise_png(5000)), ("big.txt", b"a noisy square\n"),
        ("wordy.png", small), ("wordy.txt", b"a caption " * 200),
        ("ok.png", small), ("ok.txt", b"a small square\n"),
    ]
    shards = ImageTextShards(_tar(tmp_path / "00000.tar", members), max_member_bytes=1000)
    assert shards.stems == ["ok"] and shards.skipped[OVERSIZED_MEMBER] == 2


def test_a_3_gib_tar_member_is_skipped_from_its_header(tmp_path):
    """The member's data is a hole in a sparse file: reading it would cost 3 GiB of memory (it used to be
    read whole at index time; with less memory, MemoryError aborted the dataset's construction)."""
    path = tmp_path / "00000.tar"
    size = 3 << 30
    assert size > MAX_MEMBER_BYTES
    buf = io.BytesIO()
    Image.new("RGB", (6, 6), (1, 2, 3)).save(buf, format="PNG")
    with open(path, "wb") as f:
        info = tarfile.TarInfo("huge.png")
        info.size = size
        f.write(info.tobuf())
        f.seek(-(-size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE, os.SEEK_CUR)  # a hole: no disk, no memory
        for name, data in [("huge.txt", b"a huge image\n"), ("ok.png", buf.getvalue()), ("ok.txt", b"fine\n")]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            f.write(info.tobuf() + data + bytes(-len(data) % tarfile.BLOCKSIZE))
        f.write(bytes(2 * tarfile.BLOCKSIZE))
    assert path.stat().st_blocks * 512 < 10 << 20  # sparse indeed
    shards = ImageTextShards(path)
    assert shards.stems == ["ok"] and shards.skipped[OVERSIZED_MEMBER] == 1 and not shards.damaged


def test_a_prime_image_over_the_pixel_cap_is_refused_before_decoding(bomb):
    from dalle_zero.data.images import load_square_image

    with pytest.raises(ValueError, match=f"{bomb}: 12000x12000 pixels, over the cap of 67,108,864"):
        load_square_image(bomb, 16)
