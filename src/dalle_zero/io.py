"""Model folders: ``config.json`` + ``model.safetensors``, written atomically, loaded strictly.

A model folder is what :meth:`PretrainedModel.save_pretrained` writes and
:meth:`PretrainedModel.from_pretrained` reads. Loading never unpickles anything, so a folder from a
stranger cannot run code, and the config is checked against the weights file's header (tensor names
and shapes, read without loading) before anything is allocated, so a ``config.json`` that describes
a far larger model than its weights is a one-line error, not gigabytes of memory.

Writes never leave a half-written or a missing folder (:func:`atomic_directory`): the new folder is
written under a temporary name (``.NAME.tmp-PID-*``), fsynced, the old one renamed aside
(``.NAME.old-PID``), the new one renamed into place, the parent directory fsynced, and only then the
old one removed. A crash between the two renames leaves the old folder aside; the next write of the
same folder, and :func:`clean_leftovers` (run on the start and resume of every training run), put it
back, and remove the temporary and aside copies that interrupted writes left behind.

About 410 lines, kept together: the folder format and the atomic writes are one guarantee (a model
folder is whole or absent, and what loads is what was saved), and every layer above reads both.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn.modules.module import (
    register_module_buffer_registration_hook,
    register_module_parameter_registration_hook,
)

from dalle_zero.config import Config, check_format_version, json_type, read_json_file

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"

M = TypeVar("M", bound="PretrainedModel")


# what an interrupted write leaves beside NAME: ``.NAME.tmp-PID-...`` (being written), ``.NAME.old-PID``
# (the previous NAME, renamed aside while the new one is renamed into place) or ``.NAME.del-PID`` (being
# deleted, see remove_directory)
_LEFTOVER = re.compile(r"^\.(?P<name>.+)\.(?P<kind>tmp|old|del)-(?:(?P<pid>\d+)(?:-|$))?")


@contextlib.contextmanager
def atomic_directory(path: str | Path) -> Iterator[Path]:
    """Yield a fresh temporary directory that replaces ``path`` only if the block completes.

    ``path`` is never left missing or half-written by a crash: see the module docstring. An earlier
    interrupted replacement of ``path`` is recovered first (:func:`clean_leftovers`).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_leftovers(path.parent, names={path.name})
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-{os.getpid()}-", dir=path.parent))
    try:
        yield tmp
        _fsync_tree(tmp)
        replace_directory(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def replace_directory(new: Path, path: Path) -> None:
    """Put the complete folder ``new`` at ``path`` (a sibling): the old ``path`` renamed aside, ``new``
    renamed into place, the parent fsynced, then the old one removed. Only between the two renames is
    ``path`` missing, and :func:`clean_leftovers` puts the aside copy back after a crash there."""
    old = None
    if path.exists() or path.is_symlink():
        old = path.with_name(f".{path.name}.old-{os.getpid()}")
        if old.exists():
            _remove(old)
        os.replace(path, old)
    os.replace(new, path)
    fsync_directory(path.parent)  # both renames on disk before the old copy goes
    if old is not None:
        _remove(old)


def remove_directory(path: str | Path) -> None:
    """Delete the folder ``path`` so that it disappears at once: renamed to ``.NAME.del-PID`` first, then
    removed (a crash while removing leaves a leftover that :func:`clean_leftovers` removes, never a
    half-deleted ``NAME``)."""
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        return
    gone = path.with_name(f".{path.name}.del-{os.getpid()}")
    if gone.exists():
        _remove(gone)
    os.replace(path, gone)
    fsync_directory(path.parent)
    _remove(gone)


def clean_leftovers(folder: str | Path, *, names: Iterable[str] | None = None) -> list[str]:
    """Finish what interrupted writes in ``folder`` left (of ``names`` only, if given); return what was done.

    A folder renamed aside (``.NAME.old-PID``) whose ``NAME`` is missing is put back (a crash between
    the two renames of :func:`replace_directory`); every other ``.NAME.tmp-*``, ``.NAME.old-*`` and
    ``.NAME.del-*`` entry is removed. Entries of a process that is still running (another writer) are left alone.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    wanted = None if names is None else set(names)
    found = []
    for p in folder.iterdir():
        m = _LEFTOVER.match(p.name)
        if m is None or (wanted is not None and m["name"] not in wanted):
            continue
        pid = int(m["pid"]) if m["pid"] else None
        if pid is not None and pid != os.getpid() and _process_alive(pid):
            continue
        found.append((m["kind"] != "old", -_mtime(p), p, m["name"], m["kind"]))  # asides first, newest first
    done = []
    for _, _, p, name, kind in sorted(found):
        target = folder / name
        if kind == "old" and not target.exists() and not target.is_symlink():
            os.replace(p, target)
            logger.warning("%s: put back from %s, left aside by an interrupted write", target, p.name)
            done.append(f"restored {target}")
        else:
            _remove(p)
            done.append(f"removed {p}")
    if done:
        fsync_directory(folder)
    return done


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    except OSError:
        return False
    return True


def _mtime(path: Path) -> float:
    try:
        return path.lstat().st_mtime
    except OSError:
        return 0.0


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file, an fsync, a rename and an fsync of the folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-{os.getpid()}-", dir=path.parent)
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
    fsync_directory(path.parent)


def fsync_directory(path: str | Path) -> None:
    """Make the entries of directory ``path`` (renames, new files) durable; a no-op where unsupported."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _fsync_tree(path: Path) -> None:
    """fsync every file and directory under ``path``, and ``path`` itself."""
    for p in sorted(path.rglob("*"), key=lambda q: len(q.parts), reverse=True):  # deepest first
        if p.is_file() and not p.is_symlink():
            with open(p, "rb") as f:
                os.fsync(f.fileno())
        elif p.is_dir() and not p.is_symlink():
            fsync_directory(p)
    fsync_directory(path)


def save_state_dict(state: dict[str, torch.Tensor], path: str | Path) -> None:
    """Save tensors with safetensors (contiguous copies, so tied or strided tensors save too)."""
    save_file({k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}, str(path))


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise ValueError(f"{path}: not a readable safetensors file ({e})") from None


def read_weights_header(path: str | Path) -> dict[str, tuple[int, ...]]:
    """``{tensor name: shape}`` of a safetensors file, from its header only (nothing is loaded)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: tuple(int(d) for d in f.get_slice(k).get_shape()) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise ValueError(f"{path}: not a readable safetensors file ({e})") from None


class _TooLarge(Exception):
    pass


def meta_state_shapes(
    cls: type[nn.Module], config: Config, *, max_values: int, max_tensors: int
) -> dict[str, tuple[int, ...]] | None:
    """``{name: shape}`` of ``cls(config).state_dict()``, from a model built on the meta device (no
    memory), or None as soon as it registers more than ``max_values`` values or ``max_tensors``
    tensors (so an absurd config is abandoned at its first large layer, not after building them all).

    A ValueError of the constructor (a bad config) propagates. A model that cannot be built on the meta
    device gives ``{}``: nothing is checked before the strict load then."""

    me = threading.get_ident()
    count = [0, 0]

    def hook(module: nn.Module, name: str, tensor: torch.Tensor | None) -> None:
        if tensor is None or threading.get_ident() != me:
            return
        count[0] += tensor.numel()
        count[1] += 1
        if count[0] > max_values or count[1] > max_tensors:
            raise _TooLarge

    handles = [register_module_parameter_registration_hook(hook), register_module_buffer_registration_hook(hook)]
    try:
        with torch.device("meta"):
            model = cls(config)  # type: ignore[call-arg]
        return {k: tuple(v.shape) for k, v in model.state_dict().items()}
    except _TooLarge:
        return None
    except ValueError:
        raise
    except Exception as e:  # noqa: BLE001 - not buildable on meta: the strict load still checks everything
        logger.debug("%s cannot be built on the meta device (%s); shapes checked after loading", cls.__name__, e)
        return {}
    finally:
        for h in handles:
            h.remove()


def check_config_matches_weights(cls: type[nn.Module], config: Config, weights: str | Path, *, source: str) -> None:
    """Refuse, before allocating anything, a ``config`` (read from ``source``) that does not describe the
    tensors of the safetensors file ``weights``: names and shapes compared with the file's header."""
    weights = Path(weights)
    header = read_weights_header(weights)
    n_file = sum(_numel(s) for s in header.values())
    # room for tensors registered twice (re-assigned layers) and non-persistent buffers (masks)
    shapes = meta_state_shapes(cls, config, max_values=2 * n_file + (1 << 24), max_tensors=2 * len(header) + 64)
    if shapes is None:
        raise ValueError(
            f"{source}: describes a {cls.__name__} far larger than {weights.name} ({n_file:,} values in "
            f"{len(header)} tensors){_size_fields(config)}; this config does not belong to these weights"
        )
    if not shapes:
        return
    n_config = sum(_numel(s) for s in shapes.values())
    problems = _shape_problems(shapes, header)
    if problems:
        raise ValueError(
            f"{source}: describes a {cls.__name__} of {n_config:,} values{_size_fields(config)} but {weights.name} "
            f"holds {n_file:,}: " + "; ".join(problems)
        )


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _size_fields(config: Config) -> str:
    """`` (n_layer 1000, n_embd 16384, ...)``: the config's integer fields, for messages."""
    ints = [(k, v) for k, v in config.to_dict().items() if isinstance(v, int) and not isinstance(v, bool)]
    return " (" + ", ".join(f"{k} {v}" for k, v in ints[:8]) + ")" if ints else ""


def _shape_problems(own: dict[str, tuple[int, ...]], file: dict[str, tuple[int, ...]]) -> list[str]:
    missing = sorted(set(own) - set(file))
    unexpected = sorted(set(file) - set(own))
    problems = []
    if missing:
        problems.append(f"missing keys {_short(missing)}")
    if unexpected:
        problems.append(f"unexpected keys {_short(unexpected)}")
    mismatched = [k for k in sorted(set(own) & set(file)) if tuple(own[k]) != tuple(file[k])]
    for k in mismatched[:6]:
        problems.append(f"{k}: shape {tuple(file[k])} in file, {tuple(own[k])} in model")
    if len(mismatched) > 6:
        problems.append(f"... {len(mismatched) - 6} more shapes differ")
    return problems


def load_state_dict_strict(module: nn.Module, state: dict[str, torch.Tensor], *, source: str) -> None:
    """Load ``state`` into ``module``; any missing, unexpected or mis-shaped key is a ValueError."""
    own = module.state_dict()
    problems = _shape_problems(
        {k: tuple(v.shape) for k, v in own.items()}, {k: tuple(v.shape) for k, v in state.items()}
    )
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
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, got {json_type(data)}")
    got = data.get("model_type")
    if expected_model_type is not None and got != expected_model_type:
        raise ValueError(f"{path}: model_type is {got!r:.60}, expected {expected_model_type!r}")
    check_format_version(data, FORMAT_VERSION, source=str(path))
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
        check_config_matches_weights(cls, config, folder / WEIGHTS_NAME, source=str(folder / CONFIG_NAME))
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
