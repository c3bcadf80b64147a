"""The sampling settings a model folder recommends (``sampling.json``), used whenever a caller leaves
one unset.

How well a prior draws what it is asked depends on settings that suit one model and not another:
classifier-free guidance helps a prior trained with empty captions and harms one trained without;
reranking needs a CLIP and is worth its time only when the prior's samples vary. So, as
``generation_config.json`` does for language models, the folder carries the settings chosen for
its model (the demo writes the ones its evaluation used), and ``dalle generate``, the Python API
and ``dalle serve`` start from them (``dalle eval`` takes the temperature and guidance, but keeps
its own candidate count: a measurement protocol does not follow a model's taste). A setting given
explicitly always wins; a folder without the file samples as the paper does (temperature 1, no
guidance, no reranking).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dalle_zero.config import Config, check_float, check_int, json_type, read_json_file
from dalle_zero.sampling.generate import GUIDANCE_SCALE_RANGE, GUIDANCE_TOP_P, TEMPERATURE_RANGE

SAMPLING_NAME = "sampling.json"


@dataclass(frozen=True, kw_only=True)
class SamplingDefaults(Config):
    """What a model folder recommends; each field is what a caller gets when it leaves that one unset."""

    temperature: float = 1.0  # paper: 1
    guidance_scale: float = 1.0  # 1 = no guidance (a prior trained without empty captions needs this)
    guidance_top_p: float = GUIDANCE_TOP_P  # guidance only within the conditional nucleus; 1 = plain
    candidates: int | None = None  # samples drawn per caption and reranked (None: as many as kept)

    def __post_init__(self) -> None:
        # within the ranges a request may ask for, so the API and the page can start from them
        check_float(self, "temperature", min_value=TEMPERATURE_RANGE[0], max_value=TEMPERATURE_RANGE[1])
        check_float(self, "guidance_scale", min_value=GUIDANCE_SCALE_RANGE[0], max_value=GUIDANCE_SCALE_RANGE[1])
        check_float(self, "guidance_top_p", min_value=0.0, max_value=1.0, strict_min=True)
        if self.candidates is not None:
            check_int(self, "candidates", min_value=1)

    def candidates_for(self, n: int) -> int:
        """Samples to draw when ``n`` images are kept: the recommended count, never fewer than ``n``."""
        return n if self.candidates is None else max(n, self.candidates)


def read_sampling_defaults(folder: str | Path) -> SamplingDefaults:
    """The settings of ``folder/sampling.json``; the paper's (:class:`SamplingDefaults`'s own
    defaults) when there is none. A malformed file is a ValueError naming it and the field."""
    path = Path(folder) / SAMPLING_NAME
    if not path.is_file():
        return SamplingDefaults()
    data = read_json_file(path)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, got {json_type(data)}")
    return SamplingDefaults.from_dict(data, source=str(path))


def sampling_json(defaults: SamplingDefaults) -> str:
    return json.dumps(defaults.to_dict(), indent=2) + "\n"


def resolve(defaults: SamplingDefaults, **given: Any) -> dict[str, Any]:
    """``given`` with every None replaced by the recommended value of that name (a name the defaults
    do not hold stays as given)."""
    return {k: (getattr(defaults, k) if v is None and hasattr(defaults, k) else v) for k, v in given.items()}
