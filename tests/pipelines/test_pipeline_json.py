"""``pipeline.json`` that lies: malformed fields are one-line errors, component paths stay inside the folder."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from dalle_zero.cli.main import main
from dalle_zero.pipelines.folder import read_pipeline_json
from dalle_zero.pipelines.text_to_image import TextToImagePipeline


@pytest.fixture(scope="module")
def saved(pipeline, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("pipeline") / "model"
    pipeline.save_pretrained(folder)
    return folder


@pytest.fixture
def folder(saved, tmp_path) -> Path:
    """A copy of the saved pipeline that a test may damage."""
    return Path(shutil.copytree(saved, tmp_path / "model"))


def _write_meta(folder: Path, **changes) -> Path:
    path = folder / "pipeline.json"
    meta = json.loads(path.read_text())
    components = changes.pop("components", {})
    if isinstance(components, dict):  # changed components; anything else replaces them
        components = {**meta["components"], **components}
    path.write_text(json.dumps({**meta, "components": components, **changes}))
    return path


@pytest.mark.parametrize(
    "content, expected",
    [
        ("[1, 2, 3]", "expected a JSON object, got a list"),
        ({"format_version": "1"}, "field 'format_version' must be a non-negative integer"),
        ("{" + '"a": {' * 100_000 + "}" * 100_001, "nested too deeply"),
        ({"components": {"clip": 5}}, "components.clip must name a sub-folder or be null, got a number (5)"),
        ({"components": {"dvae": None}}, "components.dvae must name a sub-folder, got null"),
        ({"components": {"vae": "dvae"}}, "unknown components ['vae']"),
        ({"components": ["tokenizer"]}, "field 'components' must be an object, got a list"),
    ],
    ids=["list", "string-format-version", "deep-nesting", "clip-5", "no-dvae", "unknown", "components-list"],
)
def test_a_malformed_pipeline_json_is_an_error_naming_the_file_and_field(folder, content, expected):
    path = folder / "pipeline.json"
    if isinstance(content, dict):
        _write_meta(folder, **content)
    else:
        path.write_text(content)
    with pytest.raises(ValueError) as err:
        TextToImagePipeline.from_pretrained(folder)
    message = str(err.value)
    assert message.startswith(f"{path}: ") and expected in message and "\n" not in message


def test_a_malformed_pipeline_json_is_one_line_from_the_command_line(folder, tmp_path, capsys):
    _write_meta(folder, components={"clip": 5})
    assert main(["generate", "--model", str(folder), "a red star", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("dalle: error:") and "components.clip" in err and "\n" not in err


@pytest.mark.parametrize("where", ["absolute", "parent", "dot-dot-inside"])
def test_a_component_path_leading_out_of_the_folder_is_refused(folder, tmp_path, where):
    """A real, loadable transformer outside the pipeline folder: it used to be loaded from wherever
    pipeline.json pointed."""
    outside = Path(shutil.copytree(folder / "transformer", tmp_path / "elsewhere" / "transformer"))
    sub = {
        "absolute": str(outside),
        "parent": "../elsewhere/transformer",
        "dot-dot-inside": "dvae/../transformer",  # stays inside, but '..' is refused all the same
    }[where]
    path = _write_meta(folder, components={"transformer": sub})
    with pytest.raises(ValueError) as err:
        TextToImagePipeline.from_pretrained(folder)
    assert str(err.value).startswith(f"{path}: components.transformer must be a sub-folder inside the model folder")


def test_a_component_reached_through_a_symbolic_link_out_of_the_folder_is_refused(folder, tmp_path):
    outside = Path(shutil.copytree(folder / "transformer", tmp_path / "elsewhere"))
    (folder / "linked").symlink_to(outside, target_is_directory=True)
    path = _write_meta(folder, components={"transformer": "linked"})
    with pytest.raises(ValueError, match="leads outside the model folder") as err:
        read_pipeline_json(folder)
    assert str(err.value).startswith(f"{path}: components.transformer")


def test_components_in_renamed_sub_folders_inside_the_folder_still_load(folder):
    (folder / "transformer").rename(folder / "prior")
    _write_meta(folder, components={"transformer": "prior"})
    assert TextToImagePipeline.from_pretrained(folder).transformer.config.n_layer == 3
