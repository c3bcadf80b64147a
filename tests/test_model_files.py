"""Model folders that lie, and folder replacement that survives a crash (dalle_zero/io.py, dalle_zero/config.py).

A ``config.json`` is checked against the weights file's header before anything is allocated; every
malformed ``config.json`` is a one-line error naming the file and the field; a folder is replaced so
that a crash never leaves it missing, and what interrupted writes leave behind is put back or removed.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path

import pytest

from dalle_zero.cli.main import main
from dalle_zero.config import load_config_source
from dalle_zero.io import atomic_directory, clean_leftovers, remove_directory
from dalle_zero.models.transformer import DalleTransformer
from tests.factories.pipelines import tiny_pipeline


def dead_pid() -> int:
    """The id of a process that has exited (and been reaped), as a killed writer's would be."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("model") / "m"
    tiny_pipeline().save_pretrained(folder)
    return folder


@pytest.fixture
def transformer_dir(model_dir, tmp_path) -> Path:
    """A copy of the tiny pipeline's transformer folder that a test may damage."""
    import shutil

    return Path(shutil.copytree(model_dir / "transformer", tmp_path / "transformer"))


def _edit_config(folder: Path, **changes) -> Path:
    path = folder / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))
    return path


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("dalle: error:") and "\n" not in err, err
    return err


# ---- config.json against the weights' header


def test_a_config_far_larger_than_its_weights_is_a_one_line_error_before_allocating(transformer_dir):
    """n_layer 1000, n_embd 16384 beside a model of 60k values: refused from the header in a moment
    (it used to allocate for seconds, and without a memory cap the kernel would kill the process)."""
    path = _edit_config(transformer_dir, n_layer=1000, n_embd=16384, attn_pattern=None)
    start = time.perf_counter()
    with pytest.raises(ValueError) as err:
        DalleTransformer.from_pretrained(transformer_dir)
    assert time.perf_counter() - start < 5
    message = str(err.value)
    assert message.startswith(str(path)) and "far larger than model.safetensors" in message
    assert "n_layer 1000" in message and "n_embd 16384" in message and "\n" not in message


def test_a_config_that_does_not_match_its_weights_names_the_shapes_before_loading(transformer_dir):
    path = _edit_config(transformer_dir, n_embd=64)  # twice the saved width: within reach, but not these weights
    with pytest.raises(ValueError) as err:
        DalleTransformer.from_pretrained(transformer_dir)
    message = str(err.value)
    assert message.startswith(f"{path}: describes a DalleTransformer of") and "shape" in message


def test_a_huge_config_beside_small_weights_is_one_line_from_the_command_line(model_dir, tmp_path, capsys):
    import shutil

    folder = Path(shutil.copytree(model_dir, tmp_path / "m"))
    _edit_config(folder / "transformer", n_layer=1000, n_embd=16384, attn_pattern=None)
    assert main(["generate", "--model", str(folder), "a red star", "--out", str(tmp_path / "o")]) == 2
    assert "transformer/config.json" in _one_line_error(capsys)
    assert not (tmp_path / "o").exists()


# ---- malformed config.json: one line naming the file and the field


@pytest.mark.parametrize(
    "content, expected",
    [
        (b"[1, 2]", "expected a JSON object, got a list"),
        ({"format_version": "1"}, "field 'format_version' must be a non-negative integer"),
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
        (b'{"n_layer": 1, "x": "\xff\xfe"}', "not UTF-8"),
        (b'{"n_layer": ' + b"9" * 5000 + b"}", "not valid JSON"),
        ({"n_layer": "three"}, "TransformerConfig.n_layer must be an integer"),
    ],
    ids=["list", "string-format-version", "deep-nesting", "not-utf8", "huge-integer", "string-n-layer"],
)
def test_a_malformed_config_json_is_a_one_line_error_naming_the_file(transformer_dir, capsys, content, expected):
    path = transformer_dir / "config.json"
    if isinstance(content, dict):  # fields changed in a sound file
        _edit_config(transformer_dir, **content)
    else:
        path.write_bytes(content)
    with pytest.raises(ValueError) as err:
        DalleTransformer.from_pretrained(transformer_dir)
    assert str(err.value).startswith(str(path)) and expected in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize(
    "content, expected",
    [
        ({"model": 5}, "field 'model' must be a JSON object, got a number (5)"),
        ({"loop": ["steps", 3]}, "field 'loop' must be a JSON object, got a list"),
        ([{"model": {}}], "expected a JSON object, got a list"),
    ],
)
def test_a_train_config_whose_sections_are_not_objects_names_the_file_and_field(tmp_path, content, expected):
    path = tmp_path / "train.json"
    path.write_text(json.dumps(content))
    with pytest.raises(ValueError, match="^" + re.escape(f"{path}: {expected}")):
        load_config_source(path)


# ---- folder replacement and leftovers of interrupted writes


def _folder(path: Path, text: str) -> Path:
    path.mkdir(parents=True)
    (path / "weights.bin").write_text(text)
    return path


def test_a_folder_left_aside_by_a_crash_between_the_two_renames_is_put_back(tmp_path):
    """What SIGKILL between 'old aside' and 'new in place' leaves: no model/, its old copy aside and the
    new one complete under its temporary name. The old copy goes back; the rest is removed."""
    pid = dead_pid()
    _folder(tmp_path / f".model.old-{pid}", "previous")
    _folder(tmp_path / f".model.tmp-{pid}-x1y2", "new")
    _folder(tmp_path / f".step_0000010.tmp-{pid}-abcd", "half")
    (tmp_path / f".latest.tmp-{pid}-zz").write_text("step_00")
    done = clean_leftovers(tmp_path)
    assert (tmp_path / "model" / "weights.bin").read_text() == "previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    assert len(done) == 4


def test_writing_a_folder_first_recovers_an_interrupted_replacement_of_it(tmp_path):
    target = tmp_path / "model"
    _folder(tmp_path / f".model.old-{dead_pid()}", "previous")
    with atomic_directory(target) as tmp:
        assert (target / "weights.bin").read_text() == "previous"  # never missing, even while rewritten
        (tmp / "weights.bin").write_text("next")
    assert (target / "weights.bin").read_text() == "next"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_an_aside_copy_is_removed_when_its_folder_is_in_place(tmp_path):
    """A crash after the second rename, while the old copy was being deleted: the new folder stays."""
    _folder(tmp_path / "model", "new")
    _folder(tmp_path / f".model.old-{dead_pid()}", "previous, half deleted")
    _folder(tmp_path / f".step_0000004.del-{dead_pid()}", "pruned")  # never put back: it was being deleted
    clean_leftovers(tmp_path)
    assert (tmp_path / "model" / "weights.bin").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_leftovers_of_a_writer_that_is_still_running_are_left_alone(tmp_path):
    live = os.getppid()  # the process that started the tests: alive
    _folder(tmp_path / f".model.tmp-{live}-abcd", "being written")
    clean_leftovers(tmp_path)
    assert (tmp_path / f".model.tmp-{live}-abcd").is_dir()


def test_a_failed_write_leaves_the_folder_as_it_was_and_nothing_beside_it(tmp_path):
    target = _folder(tmp_path / "model", "previous")
    with pytest.raises(RuntimeError), atomic_directory(target) as tmp:
        (tmp / "weights.bin").write_text("half")
        raise RuntimeError("killed")
    assert (target / "weights.bin").read_text() == "previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_a_removed_folder_disappears_whole(tmp_path):
    target = _folder(tmp_path / "step_0000002", "old checkpoint")
    remove_directory(target)
    assert list(tmp_path.iterdir()) == []
