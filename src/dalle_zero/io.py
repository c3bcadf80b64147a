"""Model folders: ``config.json`` + ``model.safetensors``, written atomically, loaded strictly.

A model folder is what :meth:`PretrainedModel.save_pretrained` writes and
:meth:`PretrainedModel.from_pretrained` reads. Loading never unpickles anything, so a folder from a
stranger cannot run code. Every write goes to a temporary sibling first and is renamed into place,
so a crash never leaves a half-written model behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import torch
from torch import nn

from dalle_zero.config import Config, read_json_file

FORMAT_VERSION = 1
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"

M = TypeVar("M", bound="PretrainedModel")


@contextlib.contextmanager
def atomic_directory(path: str | Path) -> Iterator[Path]:
    """Yield a fresh temporary directory that replaces ``path`` only if the block completes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        yield tmp
        _fsync_dir(tmp)
        old = None
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _fsync_dir(path: Path) -> None:
    for p in path.rglob("*"):
        if p.is_file():
            with open(p, "rb") as f:
                os.fsync(f.fileno())


def save_state_dict(state: dict[str, torch.Tensor], path: str | Path) -> None:
    """Save tensors with safetensors (contiguous copies, so tied or strided tensors save too)."""
    from safetensors.torch import save_file

    save_file({k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}, str(path))


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise ValueError(f"{path}: not a readable safetensors file ({e})") from None


def load_state_dict_strict(module: nn.Module, state: dict[str, torch.Tensor], *, source: str) -> None:
    """Load ``state`` into ``module``; any missing, unexpected or mis-shaped key is a ValueError."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    problems = []
    if missing:
        problems.append(f"missing keys {_short(missing)}")
    if unexpected:
        problems.append(f"unexpected keys {_short(unexpected)}")
    for k in sorted(set(own) & set(state)):
        if own[k].shape != state[k].shape:
            problems.append(f"{k}: shape {tuple(state[k].shape)} in file, {tuple(own[k].shape)} in model")
    if problems:
        raise ValueError(f"{source}: weights do not match {type(module).__name__}: " + "; ".join(problems))
    module.load_state_dict(state, strict=True)


def _short(keys: list[str], n: int = 6) -> str:
    return str(keys[:n])[:-1] + (f", ... {len(keys) - n} more]" if len(keys) > n else "]")


def read_config_json(folder: str | Path, *, expected_model_type: str | None = None) -> dict[str, Any]:
    folder = Path(folder)
    path = folder / CONFIG_NAME
    if not folder.is_dir():
        raise FileNotFoundError(f"model folder not found: {folder}")
    data = read_json_file(path, missing=f"{folder}: no {CONFIG_NAME} (is this a model folder?)")
    got = data.get("model_type")
    if expected_model_type is not None and got != expected_model_type:
        raise ValueError(f"{path}: model_type is {got!r}, expected {expected_model_type!r}")
    version = data.get("format_version", FORMAT_VERSION)
    if version > FORMAT_VERSION:
        raise ValueError(f"{path}: format_version {version} is newer than this dalle-zero supports")
    return data


class PretrainedModel(nn.Module):
    """Base for modules that save and load as a model folder.

    Subclasses set ``config_class`` and ``model_type`` and take the config as the only required
    constructor argument: ``Model(config)``.
    """

    config_class: ClassVar[type[Config]]
    model_type: ClassVar[str]

    config: Config

    def save_pretrained(self, folder: str | Path) -> Path:
        folder = Path(folder)
        meta = {"model_type": self.model_type, "format_version": FORMAT_VERSION}
        with atomic_directory(folder) as tmp:
            cfg = json.loads(self.config.to_json())
            (tmp / CONFIG_NAME).write_text(json.dumps({**meta, **cfg}, indent=2) + "\n")
            save_state_dict(self.state_dict(), tmp / WEIGHTS_NAME)
        return folder

    @classmethod
    def from_pretrained(cls: type[M], folder: str | Path, *, map_location: str | torch.device = "cpu") -> M:
        folder = Path(folder)
        data = read_config_json(folder, expected_model_type=cls.model_type)
        data = {k: v for k, v in data.items() if k not in ("config_class", "model_type", "format_version")}
        config = cls.config_class.from_dict(data, source=str(folder / CONFIG_NAME))
        model = cls(config)  # type: ignore[call-arg]
        state = load_state_dict(folder / WEIGHTS_NAME)
        load_state_dict_strict(model, state, source=str(folder / WEIGHTS_NAME))
        return model.to(map_location).eval()


def resolve_model_dir(path: str | Path) -> Path:
    """The model folder for ``path``: a training run folder (its ``model/``) or a model folder itself."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"model or run folder not found: {path}")
    if (path / "model" / CONFIG_NAME).is_file():
        return path / "model"
    if (path / CONFIG_NAME).is_file():
        return path
    raise FileNotFoundError(
        f"{path}: neither a model folder ({CONFIG_NAME} inside) nor a run folder (model/{CONFIG_NAME} inside)"
    )
