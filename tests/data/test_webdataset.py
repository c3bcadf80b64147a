"""WebDataset tar shards: the same items as the image folder, skips counted, damaged shards named, ranks disjoint."""

from __future__ import annotations

import gzip
import io
import json
import logging
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dalle_zero.cli.main import main
from dalle_zero.data.folder import ImageTextFolder
from dalle_zero.data.shard_writer import shard_keys, write_shards
from dalle_zero.data.sources import open_image_text_dataset, read_captions
from dalle_zero.data.tokens import TokenDataset
from dalle_zero.data.transforms import DVAETransform
from dalle_zero.data.webdataset import ImageTextShards, expand_braces, is_shard_source
from dalle_zero.errors import DataError
from dalle_zero.training.sampler import ResumableBatchSampler
from tests.factories.folders import good_folder, noise_folder, write_image


def png_bytes(size=(12, 10), colour=(10, 200, 30), mode="RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, colour).save(buf, format="PNG")
    return buf.getvalue()


def write_tar(path: Path, members: list[tuple[str, bytes | None]]) -> Path:
    """A tar file of ``(name, data)`` members; ``data`` None adds a directory entry."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            if data is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


def test_shards_give_exactly_the_items_of_the_image_folder(tmp_path):
    root = noise_folder(tmp_path / "images")
    summary = write_shards(root, tmp_path / "shards", per_shard=4)
    assert (summary.shards, summary.samples, summary.skipped) == (2, 6, {})
    assert sorted(p.name for p in (tmp_path / "shards").iterdir()) == ["00000.tar", "00001.tar"]
    with tarfile.open(tmp_path / "shards" / "00001.tar") as tar:
        assert tar.getnames() == ["img4.png", "img4.txt", "img4.json", "img5.png", "img5.txt", "img5.json"]

    view = DVAETransform(resolution=16)
    folder, shards = ImageTextFolder(root, view), ImageTextShards(tmp_path / "shards", view)
    assert shards.stems == folder.stems and len(shards) == 6
    for i in range(len(folder)):
        assert shards.captions(i) == folder.captions(i)
        for key in (i, (i, 7), (i, 12345)):
            a, b = folder[key], shards[key]
            assert a.keys() == b.keys() == {"pixels", "caption", "stem"}
            assert (a["caption"], a["stem"]) == (b["caption"], b["stem"])
            assert torch.equal(a["pixels"], b["pixels"])
    plain_folder, plain_shards = ImageTextFolder(root), ImageTextShards(tmp_path / "shards")
    assert plain_shards[4]["pixels"].shape == (3, 20, 24)  # own size; alpha composited onto white
    assert all(torch.equal(plain_folder[i]["pixels"], plain_shards[i]["pixels"]) for i in range(6))


def test_brace_patterns_expand_like_the_shell():
    assert expand_braces("s/{00000..00002}.tar") == ["s/00000.tar", "s/00001.tar", "s/00002.tar"]
    assert expand_braces("{a,b}-{8..10}") == ["a-8", "a-9", "a-10", "b-8", "b-9", "b-10"]
    assert expand_braces("x{3..1}") == ["x3", "x2", "x1"]
    assert expand_braces("{7..7}.tar") == ["7.tar"] and expand_braces("plain.tar") == ["plain.tar"]
    with pytest.raises(ValueError, match="unbalanced"):
        expand_braces("s/{0..2.tar")


def test_a_pattern_a_single_shard_and_a_folder_name_shards(tmp_path):
    root = good_folder(tmp_path / "images", n=6)
    out = tmp_path / "shards"
    write_shards(root, out, per_shard=2)
    assert ImageTextShards(str(out / "{00000..00002}.tar")).stems == [f"img{i}" for i in range(6)]
    assert ImageTextShards(str(out / "{00000,00002}.tar")).stems == ["img0", "img1", "img4", "img5"]
    assert ImageTextShards(out / "00001.tar").stems == ["img2", "img3"]
    with pytest.raises(FileNotFoundError, match="00003.tar"):
        ImageTextShards(str(out / "{00000..00003}.tar"))

    assert all(is_shard_source(s) for s in (out, out / "00000.tar", str(out / "{00000..00002}.tar")))
    assert not is_shard_source(root)
    assert isinstance(open_image_text_dataset(out), ImageTextShards)
    assert isinstance(open_image_text_dataset(root), ImageTextFolder)
    (root / "old.tar").write_bytes(b"")  # a folder with images is an image folder, whatever else it holds
    assert not is_shard_source(root)


def test_missing_parts_and_corrupt_images_are_skipped_and_counted(tmp_path, caplog):
    good = png_bytes()
    jpeg = io.BytesIO()
    Image.new("RGB", (12, 10), (5, 6, 7)).save(jpeg, format="JPEG")
    big = png_bytes((64, 64), (1, 2, 3))
    shard = write_tar(tmp_path / "shards" / "00000.tar", [
        ("good0.png", good), ("good0.txt", b"a green square\n"),
        ("sub", None),
        ("sub/good1.jpg", jpeg.getvalue()), ("sub/good1.txt", b"a dark square"), ("sub/good1.json", b"{}"),
        ("truncated.png", big[: len(big) // 2]), ("truncated.txt", b"cut short"),
        ("noise.webp", np.random.default_rng(0).bytes(300)), ("noise.txt", b"random bytes"),
        ("zero.png", b""), ("zero.txt", b"nothing here"),
        ("silent.png", good), ("silent.txt", b"  \n\n"),
        ("orphan.png", good),
        ("lonely.txt", b"a caption without its image"),
    ])  # fmt: skip
    with caplog.at_level(logging.WARNING):
        ds = ImageTextShards(shard)
    assert ds.stems == ["good0", "sub/good1"]
    assert ds.skipped == {
        "unreadable image": 2, "zero-byte image": 1, "empty caption": 1, "no caption file": 1, "no image file": 1,
    }  # fmt: skip
    line = ds.report_skipped()
    assert line.startswith(f"{shard}: 2 pairs,") and "1 no image file" in line and "\n" not in line
    assert "skipped" in caplog.text
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=2)))
    assert batch["pixels"].shape == (2, 3, 10, 12) and batch["caption"] == ["a green square", "a dark square"]


def test_a_damaged_shard_keeps_the_samples_before_the_damage_and_is_named(tmp_path, caplog):
    out = tmp_path / "shards"
    write_shards(good_folder(tmp_path / "images", n=4), out, per_shard=2)
    bad = out / "00001.tar"
    with tarfile.open(bad) as tar:
        cut = tar.getmember("img3.png").offset_data + 10  # inside the last image
    bad.write_bytes(bad.read_bytes()[:cut])
    with caplog.at_level(logging.WARNING):
        ds = ImageTextShards(out)
    assert ds.stems == ["img0", "img1", "img2"] and ds.skipped == {"damaged shard": 1}
    assert str(bad) in caplog.text and "damaged tar file" in caplog.text
    assert str(bad) in ds.report_skipped()


def test_a_file_that_is_no_tar_is_a_one_line_error_naming_it(tmp_path, capsys):
    bad = tmp_path / "shards" / "00000.tar"
    bad.parent.mkdir()
    bad.write_bytes(np.random.default_rng(1).bytes(2000))
    with pytest.raises(ValueError, match="no usable image-caption pairs") as err:
        ImageTextShards(tmp_path / "shards")
    assert str(bad) in str(err.value)
    code = main(["train", "dvae", "--data", str(tmp_path / "shards"), "--out", str(tmp_path / "run"),
                 "--config", "dvae_tiny", "--no-progress"])  # fmt: skip
    message = capsys.readouterr().err
    assert code == 2 and str(bad) in message and message.count("dalle: error:") == 1

    packed = tmp_path / "packed.tar"
    write_shards(good_folder(tmp_path / "images", n=2), tmp_path / "good")
    packed.write_bytes(gzip.compress((tmp_path / "good" / "00000.tar").read_bytes()))
    with pytest.raises(ValueError, match="gzip-compressed; only uncompressed tar files"):
        ImageTextShards(packed)


def test_splits_json_beside_the_shards_splits_them_as_it_does_the_folder(tmp_path):
    root = good_folder(tmp_path / "images")
    (root / "splits.json").write_text(json.dumps({"train": ["img0", "img2"], "validation": ["img1"]}))
    out = tmp_path / "shards"
    write_shards(root, out, per_shard=3)
    assert json.loads((out / "splits.json").read_text()) == {"train": ["img0", "img2"], "validation": ["img1"]}
    assert ImageTextShards(out, split="train").stems == ["img0", "img2"]
    assert ImageTextShards(str(out / "{00000..00001}.tar"), split="validation").stems == ["img1"]
    with pytest.raises(ValueError, match="no split 'test'"):
        ImageTextShards(out, split="test")


def test_without_splits_json_the_shards_are_the_train_split(tmp_path, capsys):
    out = tmp_path / "shards"
    write_shards(good_folder(tmp_path / "images"), out, per_shard=3)
    assert len(ImageTextShards(out, split="train")) == 4
    with pytest.raises(ValueError, match="no split 'validation'.*train split"):
        ImageTextShards(out, split="validation")
    captions, note = read_captions(out, "train")
    assert sorted(captions) == sorted(read_captions(tmp_path / "images")[0]) and "no splits.json" in note
    code = main(["train", "tokenizer", "--data", str(out), "--out", str(tmp_path / "tok"), "--vocab-size", "300",
                 "--split", "validation"])  # fmt: skip
    assert code == 2 and "no split 'validation'" in capsys.readouterr().err


def test_keys_are_unique_webdataset_keys_and_existing_shards_are_never_overwritten(tmp_path):
    assert shard_keys(["a.b", "a_b", "x", "x", "plain"]) == ["a_b", "a_b_2", "x", "x_2", "plain"]
    root = tmp_path / "images"
    write_image(root / "photo.v2.png")
    (root / "photo.v2.txt").write_text("a red rectangle")
    (root / "extra").mkdir()
    write_image(root / "extra" / "photo_v2.png", colour=(0, 0, 255))
    (root / "extra" / "photo_v2.txt").write_text("a blue rectangle")
    out = tmp_path / "shards"
    write_shards(root, out)
    ds = ImageTextShards(out)
    assert sorted(ds.stems) == ["photo_v2", "photo_v2_2"] and len({ds[i]["caption"] for i in range(2)}) == 2
    with pytest.raises(DataError, match="not an empty folder"):
        write_shards(root, out)


def test_two_ranks_of_the_sampler_see_every_sample_once_per_epoch(tmp_path):
    out = tmp_path / "shards"
    write_shards(good_folder(tmp_path / "images", n=12), out, per_shard=5)
    ds = ImageTextShards(out)
    seen = []
    for rank in (0, 1):
        sampler = ResumableBatchSampler(len(ds), 3, seed=5, rank=rank, world_size=2)
        batches = iter(sampler)
        for _ in range(sampler.per_epoch):
            seen += [ds[key]["stem"] for key in next(batches)]
    assert len(seen) == 12 and sorted(seen) == sorted(ds.stems)
    # the same position resumes the same batch, and a DataLoader reads it through the sampler
    full = iter(ResumableBatchSampler(len(ds), 3, seed=5, rank=1, world_size=2))
    next(full)
    resumed = ResumableBatchSampler(len(ds), 3, seed=5, rank=1, world_size=2, start=1)
    assert next(iter(resumed)) == next(full)
    loader = torch.utils.data.DataLoader(ds, batch_sampler=resumed)
    assert next(iter(loader))["pixels"].shape == (3, 3, 16, 20)


def test_an_image_damaged_after_indexing_is_replaced_and_the_dataset_pickles(tmp_path):
    out = tmp_path / "shards"
    write_shards(good_folder(tmp_path / "images", n=3), out)
    ds = ImageTextShards(out)
    copy = pickle.loads(pickle.dumps(ds))  # what a DataLoader worker receives
    assert copy.stems == ds.stems and torch.equal(copy[(1, 3)]["pixels"], ds[(1, 3)]["pixels"])
    where = ds.items[1][0]
    with open(where.shard, "r+b") as f:
        f.seek(where.offset)
        f.write(bytes(where.size))
    assert ds[1]["stem"] == "img2" and ds.skipped["load error"] == 1


def test_cli_converts_a_folder_then_trains_the_dvae_and_encodes_from_the_shards(tmp_path, capsys):
    root = noise_folder(tmp_path / "images", n=12)
    stems = [f"img{i}" for i in range(12)]
    (root / "splits.json").write_text(json.dumps({"train": stems[:9], "validation": stems[9:]}))
    shards = tmp_path / "shards"
    assert main(["data", "shards", "--data", str(root), "--out", str(shards), "--per-shard", "5",
                 "--no-progress"]) == 0  # fmt: skip
    assert "wrote 12 samples in 3 shards" in capsys.readouterr().out

    pattern = str(shards / "{00000..00002}.tar")
    run = tmp_path / "run"
    assert main(["train", "dvae", "--data", pattern, "--out", str(run), "--config", "dvae_tiny", "--steps", "2",
                 "--batch-size", "4", "--no-progress"]) == 0  # fmt: skip
    text = capsys.readouterr().out
    assert "on 9 images" in text and "validation at step 2: PSNR" in text
    assert json.loads((run / "train_config.json").read_text())["data"] == str(Path(pattern).resolve())

    tokens = tmp_path / "tokens"
    assert main(["encode", "--dvae", str(run), "--data", str(shards), "--out", str(tokens), "--no-progress"]) == 0
    assert "encoded 12 images into 8x8 tokens" in capsys.readouterr().out
    assert sorted(TokenDataset(tokens, split="train").stems) == stems[:9]


def test_clip_siblings_read_the_concepts_beside_shards_named_by_a_pattern_or_a_single_tar(tmp_path):
    from dalle_zero.training.clip import concept_groups

    folder = noise_folder(tmp_path / "folder", n=4)
    stems = sorted(p.stem for p in folder.glob("*.txt"))
    rows = [{"stem": s, "concept": f"concept {i % 2}"} for i, s in enumerate(stems)]
    (folder / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    write_shards(folder, tmp_path / "shards", per_shard=2)
    expected = [r["concept"] for r in rows]
    shards = tmp_path / "shards"
    for source in (shards, f"{shards}/{{00000..00001}}.tar", shards / "00000.tar"):
        assert concept_groups(source, stems) == expected, source
