"""The model folder of a pipeline: ``pipeline.json``, its component sub-folders and ``examples.json``.

What :meth:`~dalle_zero.pipelines.text_to_image.TextToImagePipeline.save_pretrained` writes and
``from_pretrained``, ``dalle generate`` and ``dalle assemble`` read. Every file is checked as it is
read: a component must name a sub-folder inside the model folder, a wrong or corrupt file is a
ValueError naming the file and the field (docs/sampling.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dalle_zero.config import check_format_version, json_type, read_json_file
from dalle_zero.io import CONFIG_NAME, FORMAT_VERSION, resolve_model_dir

PIPELINE_NAME = "pipeline.json"
EXAMPLES_NAME = "examples.json"
COMPONENTS = ("tokenizer", "dvae", "transformer", "clip")
COMPONENT_TYPES = {"tokenizer": "tokenizer", "dvae": "dvae", "transformer": "transformer", "clip": "clip"}


def check_examples(examples: Any, *, source: str = "examples") -> list[str]:
    """``examples`` as a new list, or ValueError naming ``source`` unless it is a list of non-empty strings."""
    expected = "must be a list of non-empty caption strings"
    if not isinstance(examples, (list, tuple)):  # a lone string would pass as a list of letters
        raise ValueError(f"{source}: {expected}, got a {type(examples).__name__}")
    bad = [e for e in examples if not isinstance(e, str) or not e.strip()]
    if bad:
        raise ValueError(f"{source}: {expected}, found {bad[0]!r}")
    return list(examples)


def read_examples(folder: str | Path) -> list[str]:
    """The example captions of a model folder (``examples.json``); an empty list if it has none."""
    path = Path(folder) / EXAMPLES_NAME
    if not path.is_file():
        return []
    return check_examples(read_json_file(path), source=str(path))


def read_pipeline_json(folder: Path) -> dict[str, str | None]:
    """The component sub-folder names recorded in ``folder/pipeline.json``.

    Each names a sub-folder *inside* ``folder`` (a relative path without ``..``, not leading out through
    a symbolic link); anything else (a list instead of an object, a string ``format_version``,
    ``components.clip: 5``, ``/etc``, ``../other``) is a ValueError naming the file and the field.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"model folder not found: {folder}")
    path = folder / PIPELINE_NAME
    missing = f"{folder}: no {PIPELINE_NAME} (is this a model folder from `dalle assemble`?)"
    data = read_json_file(path, missing=missing)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, got {json_type(data)}")
    if data.get("model_type") != "pipeline":
        raise ValueError(f"{path}: model_type is {data.get('model_type')!r:.60}, expected 'pipeline'")
    check_format_version(data, FORMAT_VERSION, source=str(path))
    components = data.get("components")
    if not isinstance(components, dict):
        raise ValueError(f"{path}: field 'components' must be an object, got {json_type(components)}")
    unknown = sorted(set(components) - set(COMPONENTS))
    if unknown:
        raise ValueError(f"{path}: unknown components {unknown}; known: {list(COMPONENTS)}")
    for name in COMPONENTS:
        value = components.get(name)
        required = name != "clip"
        if value is None and not required:
            continue
        if not isinstance(value, str) or not value.strip():
            raise ValueError(
                f"{path}: components.{name} must name a sub-folder{'' if required else ' or be null'}, "
                f"got {json_type(value)}"
            )
        _check_inside(folder, value, f"{path}: components.{name}")
    return components


def _check_inside(folder: Path, sub: str, field: str) -> None:
    """ValueError naming ``field`` unless ``sub`` is a relative path that stays inside ``folder``."""
    rel = Path(sub)
    if rel.is_absolute() or ".." in rel.parts or sub.startswith("~"):
        raise ValueError(f"{field} must be a sub-folder inside the model folder, got {sub!r:.80}")
    target = (folder / rel).resolve()
    if not target.is_relative_to(folder.resolve()) or target == folder.resolve():
        raise ValueError(f"{field}: {sub!r:.80} leads outside the model folder (through a symbolic link)")


def resolve_component_dir(path: str | Path, component: str) -> Path:
    """The folder holding ``component`` ("tokenizer", "dvae", "transformer", "clip") given a model
    folder, a training run folder (its ``model/``) or a pipeline folder (its sub-folder)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{component}: folder not found: {path}")
    if (path / PIPELINE_NAME).is_file():
        sub = read_pipeline_json(path).get(component)
        if not sub:
            raise ValueError(f"{path}: this pipeline has no {component}")
        return path / sub
    model_dir = resolve_model_dir(path)  # the folder itself, or a training run's model/
    data = read_json_file(model_dir / CONFIG_NAME)  # a corrupt file: one-line error, no traceback
    if not isinstance(data, dict):
        raise ValueError(f"{model_dir / CONFIG_NAME}: expected a JSON object, got {json_type(data)}")
    expected = COMPONENT_TYPES[component]
    if data.get("model_type") != expected:
        raise ValueError(
            f"{model_dir}: holds a {data.get('model_type')!r} model, expected a {expected!r} for --{component}"
        )
    return model_dir
