"""Token shards round trip; ``dalle encode`` writes them from an image folder with a real (tiny) dVAE."""

from __future__ import annotations

import json

import pytest
import torch

from dalle_zero.cli.main import main
from dalle_zero.data.emoji import EmojiDatasetConfig, build_emoji_dataset_from_tarballs
from dalle_zero.data.tokens import TokenDataset, read_token_index, write_token_shards
from dalle_zero.errors import DataError
from tests.factories.emoji import SIZE, make_emoji_tarball, make_emojibase_tarball
from tests.factories.folders import tiny_dvae


def items(n: int, grid: int = 4, vocab: int = 50):
    g = torch.Generator().manual_seed(0)
    for i in range(n):
        yield f"s{i}", f"caption {i}", torch.randint(0, vocab, (grid, grid), generator=g)


def test_shards_round_trip_codes_captions_and_stems(tmp_path):
    expected = list(items(7))
    splits = {"train": ["s0", "s1", "s2", "s3", "s4"], "validation": ["s5", "s6"]}
    write_token_shards(
        tmp_path / "tok", iter(expected), image_vocab_size=50, shard_size=3, splits=splits, dvae={"path": "x"}
    )
    index = read_token_index(tmp_path / "tok")
    assert index["count"] == 7 and len(index["shards"]) == 3 and index["grid"] == [4, 4]
    assert index["dtype"] == "int16" and index["dvae"] == {"path": "x"}
    ds = TokenDataset(tmp_path / "tok")
    assert len(ds) == 7 and ds.image_grid == 4 and ds.image_vocab_size == 50
    for i, (stem, caption, codes) in enumerate(expected):
        item = ds[i]
        assert item["stem"] == stem and item["caption"] == caption
        assert item["image_codes"].dtype == torch.long
        assert torch.equal(item["image_codes"], codes.flatten())  # raster order
    val = TokenDataset(tmp_path / "tok", split="validation")
    assert [val[i]["stem"] for i in range(len(val))] == ["s5", "s6"]
    assert torch.equal(val[(1, 123)]["image_codes"], expected[6][2].flatten())


def test_large_vocabularies_are_stored_as_int32(tmp_path):
    big = [("a", "x", torch.tensor([[40_000, 1], [2, 3]]))]
    write_token_shards(tmp_path / "tok", big, image_vocab_size=65_536)
    assert read_token_index(tmp_path / "tok")["dtype"] == "int32"
    assert int(TokenDataset(tmp_path / "tok")[0]["image_codes"][0]) == 40_000


def test_several_caption_lines_are_kept_and_one_is_chosen_by_seed(tmp_path):
    write_token_shards(
        tmp_path / "tok", [("a", ["one", "two"], torch.zeros(2, 2, dtype=torch.long))], image_vocab_size=4
    )
    ds = TokenDataset(tmp_path / "tok")
    assert {ds[(0, s)]["caption"] for s in range(20)} == {"one", "two"}


def test_bad_inputs_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="outside"):
        write_token_shards(tmp_path / "a", [("a", "x", torch.full((2, 2), 9))], image_vocab_size=4)
    with pytest.raises(ValueError, match="grid"):
        write_token_shards(
            tmp_path / "b", [("a", "x", torch.zeros(2, 2)), ("b", "y", torch.zeros(3, 3))], image_vocab_size=4
        )
    with pytest.raises(ValueError, match="twice"):
        z = torch.zeros(2, 2, dtype=torch.long)
        write_token_shards(tmp_path / "c", [("a", "x", z), ("a", "y", z)], image_vocab_size=4)
    assert not (tmp_path / "a").exists()  # nothing half-written


def test_missing_or_corrupt_shard_is_an_error_naming_the_file(tmp_path):
    write_token_shards(tmp_path / "tok", items(5), image_vocab_size=50, shard_size=2)
    (tmp_path / "tok" / "shard_00001.safetensors").write_bytes(b"\x00" * 40)
    with pytest.raises(DataError, match="shard_00001.safetensors"):
        TokenDataset(tmp_path / "tok")
    (tmp_path / "tok" / "shard_00002.safetensors").unlink()
    (tmp_path / "tok" / "shard_00001.safetensors").unlink()
    with pytest.raises(DataError, match="token shard missing: .*shard_00001.safetensors"):
        TokenDataset(tmp_path / "tok")
    with pytest.raises(FileNotFoundError, match="no index.json"):
        TokenDataset(tmp_path)


def test_asking_for_a_split_the_tokens_lack_is_a_clear_error(tmp_path):
    write_token_shards(tmp_path / "tok", items(2), image_vocab_size=50)
    with pytest.raises(ValueError, match="no splits"):
        TokenDataset(tmp_path / "tok", split="train")


# ---- dalle encode, with the real DiscreteVAE (skipped only if that module is missing)


def test_encode_cli_tokenizes_every_image_once_and_keeps_the_splits(tmp_path, capsys):
    run = tiny_dvae(tmp_path)
    tarballs = {
        "emoji-datasource": make_emoji_tarball(tmp_path / "npm" / "emoji-datasource-16.0.0.tgz"),
        "emojibase-data": make_emojibase_tarball(tmp_path / "npm" / "emojibase-data-17.0.0.tgz"),
    }
    data = tmp_path / "emoji"
    config = EmojiDatasetConfig(size=SIZE, captions_per_image=4)
    build_emoji_dataset_from_tarballs(config, data, tarballs, progress=False)
    argv = ["encode", "--dvae", str(run), "--data", str(data), "--out", str(tmp_path / "tok"), "--no-progress"]
    assert main(argv + ["--batch-size", "7"]) == 0
    assert "encoded 30 images into 8x8 tokens of 32 codes" in capsys.readouterr().out
    ds = TokenDataset(tmp_path / "tok")
    assert len(ds) == 30 and ds.image_grid == 8 and ds.image_vocab_size == 32
    source_splits = json.loads((data / "splits.json").read_text())
    assert read_token_index(tmp_path / "tok")["splits"] == source_splits
    train = TokenDataset(tmp_path / "tok", split="train")
    assert sorted(train.stems) == sorted(source_splits["train"])
    assert (tmp_path / "tok" / "metadata.jsonl").is_file()
    for i in (0, 7, 29):  # every caption line of the image is kept, and one of them is drawn
        lines = (data / "images" / f"{ds.stems[i]}.txt").read_text(encoding="utf-8").splitlines()
        assert ds.captions[i] == lines and len(lines) == config.captions_per_image and ds[i]["caption"] in lines
    # Deterministic: encoding again gives the same tokens.
    assert main(argv[:-3] + ["--out", str(tmp_path / "tok2"), "--no-progress", "--split", "train"]) == 0
    again = TokenDataset(tmp_path / "tok2")
    assert sorted(again.stems) == sorted(train.stems)
    by_stem = {s: i for i, s in enumerate(ds.stems)}
    assert all(torch.equal(again[i]["image_codes"], ds[by_stem[s]]["image_codes"]) for i, s in enumerate(again.stems))


def test_encode_cli_with_a_folder_that_is_no_model_says_so(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    code = main(["encode", "--dvae", str(tmp_path / "empty"), "--data", str(tmp_path), "--out", str(tmp_path / "t")])
    assert code == 2 and "neither a model folder" in capsys.readouterr().err
