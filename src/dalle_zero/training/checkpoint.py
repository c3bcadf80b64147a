"""Step checkpoints of a training run, written atomically, resumed step-exactly.

A run folder holds ``step_NNNNNNN/`` directories and a ``latest`` file naming the newest one.
Each step directory holds the live weights (``model.safetensors``), the EMA weights
(``ema.safetensors``), and ``state.pt`` with the optimizer state, the RNG states, the step (which
is also the data position, see :mod:`dalle_zero.training.sampler`) and the task's own state.
``state.pt`` holds only tensors and plain containers and is read with ``weights_only=True``, so
loading a checkpoint never runs code from the file. A directory is written under a temporary name
and renamed into place, and ``latest`` is written last, so a run killed at any moment leaves the
previous checkpoint intact.

``latest`` must name a step folder directly inside the run (``step_NNNNNNN``). Anything else in it
(``../other_run/step_0000100``, an absolute path, bytes that are not UTF-8) is a one-line error
naming the file and what it holds: a run never resumes from a checkpoint outside itself, and a
damaged pointer is not silently replaced by a guess (delete ``latest`` to resume from the newest
complete step folder). A well-formed ``latest`` naming a step folder that is missing or incomplete
falls back to the newest complete one, as when there is no ``latest``.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dalle_zero.io import atomic_directory, atomic_write_text, load_state_dict, remove_directory, save_state_dict

STEP_DIR = re.compile(r"^step_(\d{7,})$")


def step_dir_name(step: int) -> str:
    return f"step_{step:07d}"


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": list(random.getstate()[1]),
        "python_pos": random.getstate()[2],
        "numpy_keys": torch.from_numpy(np_state[1].astype(np.int64)),
        "numpy_pos": int(np_state[2]),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate((3, tuple(state["python"]), state["python_pos"]))
    keys = state["numpy_keys"].numpy().astype(np.uint32)
    np.random.set_state(("MT19937", keys, state["numpy_pos"], 0, 0.0))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@dataclass
class Checkpoint:
    step: int
    model: dict[str, torch.Tensor]
    ema: dict[str, torch.Tensor] | None
    state: dict[str, Any]  # optimizer, rng, task, ema_updates


def save_checkpoint(
    run_dir: Path,
    step: int,
    *,
    model: dict[str, torch.Tensor],
    ema: dict[str, torch.Tensor] | None,
    state: dict[str, Any],
    keep: int,
) -> Path:
    final = run_dir / step_dir_name(step)
    with atomic_directory(final) as tmp:
        save_state_dict(model, tmp / "model.safetensors")
        if ema is not None:
            save_state_dict(ema, tmp / "ema.safetensors")
        torch.save({"step": step, **state}, tmp / "state.pt")
    atomic_write_text(run_dir / "latest", final.name + "\n")
    _prune(run_dir, keep)
    return final


def _prune(run_dir: Path, keep: int) -> None:
    steps = sorted(list_steps(run_dir))
    for s in steps[:-keep] if keep > 0 else []:
        remove_directory(run_dir / step_dir_name(s))  # gone at once, never half-deleted


def list_steps(run_dir: Path) -> list[int]:
    if not run_dir.is_dir():
        return []
    return [
        int(m.group(1))
        for p in run_dir.iterdir()
        if (m := STEP_DIR.match(p.name)) and p.is_dir() and not p.is_symlink()  # a link may lead out of the run
    ]


def latest_step_dir(run_dir: Path) -> Path | None:
    """The step folder to resume from: the one ``latest`` names if it is complete, else the newest
    complete one, else None. A malformed ``latest`` is a ValueError (see the module docstring)."""
    pointer = run_dir / "latest"
    if pointer.is_file():
        name = read_latest(pointer)
        path = run_dir / name
        if (path / "state.pt").is_file() and not path.is_symlink():
            return path
    steps = [s for s in list_steps(run_dir) if (run_dir / step_dir_name(s) / "state.pt").is_file()]
    return run_dir / step_dir_name(max(steps)) if steps else None


def read_latest(pointer: Path) -> str:
    """The step folder name in the ``latest`` file ``pointer``; ValueError naming the file unless it is
    a ``step_NNNNNNN`` name (no path: never a folder outside the run)."""
    hint = f"delete {pointer} to resume from the newest complete step folder"
    try:
        text = pointer.read_bytes().decode("utf-8").strip()
    except UnicodeDecodeError:
        raise ValueError(
            f"{pointer}: not UTF-8 text; expected the name of a step folder such as step_0000100 ({hint})"
        ) from None
    if not STEP_DIR.fullmatch(text):
        raise ValueError(
            f"{pointer}: holds {text[:80]!r}, expected the name of a step folder inside the run such as "
            f"step_0000100 ({hint})"
        )
    return text


def load_checkpoint(path: Path) -> Checkpoint:
    try:
        state = torch.load(path / "state.pt", map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is the same user-facing problem
        raise ValueError(f"{path / 'state.pt'}: unreadable checkpoint state ({type(e).__name__}: {e})") from None
    ema_path = path / "ema.safetensors"
    return Checkpoint(
        step=int(state.pop("step")),
        model=load_state_dict(path / "model.safetensors"),
        ema=load_state_dict(ema_path) if ema_path.is_file() else None,
        state=state,
    )
