"""Token shards are not trusted: codes, captions and ``index.json`` are checked when the folder is opened.

Each bad folder used to be accepted (and fail later inside the embedding, or train on one-letter
captions) or to raise an AttributeError; now it is a one-line DataError naming the file and the field.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from dalle_zero.cli.main import main
from dalle_zero.data.tokens import TokenDataset, read_token_index, write_token_shards
from dalle_zero.errors import DataError

VOCAB = 50


def write_folder(folder: Path, codes: torch.Tensor, captions, stems=None, **index_changes) -> Path:
    """A token folder of one shard holding exactly ``codes`` and ``captions`` (as a tampered folder would)."""
    folder.mkdir(parents=True)
    n = int(codes.shape[0]) if codes.dim() else 1
    save_file({"codes": codes.contiguous()}, str(folder / "shard_00000.safetensors"))
    stems = [f"s{i}" for i in range(n)] if stems is None else stems
    (folder / "shard_00000.json").write_text(json.dumps({"captions": captions, "stems": stems}))
    index = {
        "format": "dalle-zero-tokens", "format_version": 1, "grid": [2, 2], "image_grid": 2,
        "image_vocab_size": VOCAB, "count": n, "dtype": "int16",
        "shards": [{"name": "shard_00000", "count": n}], "dvae": None, "splits": None,
    }
    (folder / "index.json").write_text(json.dumps({**index, **index_changes}))
    return folder


def good_codes(n: int = 3) -> torch.Tensor:
    return torch.arange(n * 4, dtype=torch.int16).view(n, 2, 2) % VOCAB


def test_a_well_formed_folder_still_reads(tmp_path):
    ds = TokenDataset(write_folder(tmp_path / "tok", good_codes(), [["a"], ["b", "c"], ["d"]]))
    assert len(ds) == 3 and ds[1]["image_codes"].dtype == torch.long


@pytest.mark.parametrize(
    "codes, expected",
    [
        (torch.full((3, 2, 2), 1e6, dtype=torch.float32), "codes must be an integer tensor, got torch.float32"),
        (torch.full((3, 2, 2), -7, dtype=torch.int16), "codes must be in [0, 50) (image_vocab_size), found values"),
        (torch.full((3, 2, 2), VOCAB, dtype=torch.int32), "codes must be in [0, 50) (image_vocab_size), found values"),
        (torch.ones((3, 2, 2), dtype=torch.bool), "codes must be an integer tensor, got torch.bool"),
        (torch.zeros((3, 4), dtype=torch.int16), "codes must have shape (3, 2, 2)"),
    ],
    ids=["float-1e6", "int16-negative", "past-vocab", "bool", "flat"],
)
def test_bad_codes_are_an_error_naming_the_shard(tmp_path, codes, expected):
    folder = write_folder(tmp_path / "tok", codes, [["a"], ["b"], ["c"]])
    with pytest.raises(DataError, match=re.escape(f"{folder / 'shard_00000.safetensors'}: {expected}")):
        TokenDataset(folder)


@pytest.mark.parametrize(
    "captions, stems, expected",
    [
        (["a red star", "a blue heart", "a cat"], None, "captions[0] must be a non-empty list of caption strings"),
        ("a red star", None, "captions must be a list of 3 caption lists, got a string"),
        ([["a"], [], ["c"]], None, "captions[1] must be a non-empty list"),
        ([["a"], [5], ["c"]], None, "captions[1] must be a non-empty list"),
        ([["a"], ["b"]], None, "captions must be a list of 3 caption lists, got 2 entries"),
        ([["a"], ["b"], ["c"]], [1, 2, 3], "stems must be a list of 3 strings"),
    ],
    ids=["strings", "one-string", "empty-lines", "number", "too-few", "number-stems"],
)
def test_bad_captions_are_an_error_naming_the_shard_metadata(tmp_path, captions, stems, expected):
    """Captions stored as strings used to become one-letter captions: "a red star" -> "a", " ", "r", ..."""
    folder = write_folder(tmp_path / "tok", good_codes(), captions, stems)
    with pytest.raises(DataError, match=re.escape(f"{folder / 'shard_00000.json'}: {expected}")):
        TokenDataset(folder)


@pytest.mark.parametrize(
    "changes, expected",
    [
        ({"grid": "2x2"}, "field 'grid' must be [h, w], two positive integers"),
        ({"image_vocab_size": "50"}, "field 'image_vocab_size' must be a positive integer"),
        ({"format_version": "1"}, "field 'format_version' must be an integer"),
        ({"shards": {"name": "shard_00000"}}, "field 'shards' must be a list, got an object"),
        ({"shards": [{"name": "../elsewhere/shard_00000", "count": 3}]}, "shards[0].name must be a file name"),
        ({"shards": [{"name": "shard_00000", "count": "3"}]}, "shards[0].count must be a non-negative integer"),
        ({"splits": {"train": "s0"}}, "field 'splits' must be null or an object of lists of stems"),
    ],
)
def test_a_bad_index_field_is_an_error_naming_it(tmp_path, changes, expected):
    folder = write_folder(tmp_path / "tok", good_codes(), [["a"], ["b"], ["c"]], **changes)
    with pytest.raises(DataError, match=re.escape(f"{folder / 'index.json'}: {expected}")):
        read_token_index(folder)


def test_a_list_index_json_is_a_one_line_error(tmp_path, capsys):
    """It used to raise AttributeError ('list' object has no attribute 'get'): a traceback."""
    folder = tmp_path / "tok"
    folder.mkdir()
    (folder / "index.json").write_text('[{"format": "dalle-zero-tokens"}]')
    with pytest.raises(DataError, match=re.escape(f"{folder / 'index.json'}: expected a JSON object, got a list")):
        TokenDataset(folder)
    config = tmp_path / "prior.json"
    config.write_text(json.dumps({"model": {"n_layer": 1, "n_head": 1, "n_embd": 8}}))
    argv = ["train", "prior", "--tokens", str(folder), "--tokenizer", str(tmp_path / "tokenizer"),
            "--config", str(config), "--out", str(tmp_path / "run")]
    _tokenizer(tmp_path / "tokenizer")
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("dalle: error:") and "index.json: expected a JSON object" in err and "\n" not in err


def _tokenizer(folder: Path) -> None:
    from tests.factories.pipelines import tiny_tokenizer

    tiny_tokenizer().save_pretrained(folder)


def test_written_shards_pass_the_checks(tmp_path):
    items = [(f"s{i}", f"caption {i}", torch.full((2, 2), i)) for i in range(5)]
    write_token_shards(tmp_path / "tok", items, image_vocab_size=VOCAB, shard_size=2)
    ds = TokenDataset(tmp_path / "tok")
    assert [ds[i]["caption"] for i in range(5)] == [f"caption {i}" for i in range(5)]
