"""Settings of ``dalle demo``: the dataset, the stage presets and how the time budget is shared.

A demo config is a JSON preset (``dalle_zero/configs/demo.json``: the ≤ 15-minute default;
``demo_tiny.json``: seconds, for tests). Each training stage (dVAE, reranker CLIP, evaluation CLIP,
evaluator, prior) has a :class:`StageSpec`: its train-config fields (the stage's own config class;
data paths, vocabularies and ``loop.steps`` are filled in by the demo) and its *share* of the
training time. The step count of a stage is its share of the time left, times the steps per second
measured on this machine just before the stage starts (see :mod:`dalle_zero.demo.budget`), unless
the spec fixes ``steps``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from dalle_zero.config import Config, check_float, check_int, load_config_source
from dalle_zero.data.emoji import EmojiDatasetConfig
from dalle_zero.evaluation.evaluate import EvalConfig

TRAIN_STAGES = ("eval_clip", "evaluator", "dvae", "clip", "prior")  # in the order they run


@dataclass(frozen=True, kw_only=True)
class StageSpec(Config):
    """One training stage of the demo: its train-config fields and its part of the time budget."""

    share: float = 0.2  # of the training time left when the stage starts, among the stages still to run
    min_steps: int = 10
    max_steps: int = 100_000
    steps: int | None = None  # a fixed step count (no calibration); None: from the time budget
    # Train once per dataset and settings, keep the run in the user cache and reuse it (needs `steps`):
    # for the evaluator and the R-precision CLIP, yardsticks that stay the same whatever `--minutes` is.
    cache: bool = False
    # Train in a second process while the named earlier stage trains, in that stage's window of time,
    # each on half the cores: two small models train faster side by side than one after the other
    # (BENCHMARKS.md, "Two stages side by side"). The stage must not need the other's model.
    beside: str | None = None
    config: dict[str, Any] = field(default_factory=dict)  # fields of the stage's train config

    def __post_init__(self) -> None:
        check_float(self, "share", min_value=0.0, strict_min=True)
        check_int(self, "min_steps", min_value=1)
        check_int(self, "max_steps", min_value=self.min_steps)
        if self.steps is not None:
            check_int(self, "steps", min_value=1)
        if not isinstance(self.cache, bool):
            raise ValueError(f"StageSpec.cache must be true or false, got {self.cache!r}")
        if self.cache and self.steps is None:
            raise ValueError("StageSpec.cache needs a fixed `steps`: a cached model must not depend on the time budget")
        if not isinstance(self.config, dict):
            raise ValueError(f"StageSpec.config must be a JSON object, got {type(self.config).__name__}")


@dataclass(frozen=True, kw_only=True)
class DemoConfig(Config):
    """Everything ``dalle demo`` does, with the step counts left to the time budget."""

    minutes: float = 15.0  # wall-clock budget of the whole demo
    # Kept after training for encoding, the evaluation's features and the report; the time to sample
    # the showcase and evaluation images is measured on this machine and kept too (stages.plan_reserve).
    reserve_seconds: float = 40.0
    calibration_steps: int = 4  # timed optimizer steps per stage (after one warm-up step)
    safety: float = 0.85  # planned steps = safety · seconds · measured rate (checkpoints, evaluation)
    # At these shares of its planned steps a time-budgeted stage plans again from the rate it really
    # trained at since the last plan: a short probe misjudges it by up to a third, and a shared
    # machine's pace drifts within a stage; () keeps the probe's plan. That rate is the stage's own, so
    # the steps left take ``replan_safety`` of the seconds left, not ``safety``.
    replan_at: tuple[float, ...] = (0.1, 0.5)
    replan_safety: float = 0.95
    dataset: EmojiDatasetConfig = field(default_factory=lambda: EmojiDatasetConfig(styles=("google", "twitter")))
    vocab_size: int = 1024  # BPE tokens asked for (the captions may support fewer)
    text_seq_len: int = 40
    min_frequency: int = 2
    stages: dict[str, Any] = field(default_factory=dict)  # {stage name: StageSpec fields}
    # showcase grids and image-to-image
    showcase_captions: int = 6  # captions per split (seen, unseen compositions, unseen concepts)
    showcase_n: int = 4  # images kept per caption
    showcase_candidates: int = 16  # drawn per caption and reranked
    prime_rows: int | None = None  # image-to-image: token rows kept (None: half the grid)
    # captions in plain words, the same for every run and budget (training concepts of the emoji data)
    plain_captions: tuple[str, ...] = (
        "red heart", "pizza", "thumbs up, dark skin tone", "dog face, twitter style", "rocket",
        "face with tears of joy",
    )  # fmt: skip
    seed: int = 0
    eval: EvalConfig = field(default_factory=EvalConfig)

    def __post_init__(self) -> None:
        check_float(self, "minutes", min_value=0.0, strict_min=True)
        check_float(self, "reserve_seconds", min_value=0.0)
        check_int(self, "calibration_steps", min_value=1)
        check_float(self, "safety", min_value=0.0, max_value=1.0, strict_min=True)
        shares = self.replan_at
        numbers = isinstance(shares, tuple) and all(
            isinstance(x, (int, float)) and not isinstance(x, bool) and 0.0 < x <= 0.9 for x in shares
        )
        if not numbers or list(shares) != sorted(set(shares)):
            raise ValueError(f"DemoConfig.replan_at must be increasing shares of the steps in (0, 0.9], got {shares!r}")
        check_float(self, "replan_safety", min_value=0.0, max_value=1.0, strict_min=True)
        check_int(self, "vocab_size", min_value=258)
        check_int(self, "text_seq_len", min_value=1)
        check_int(self, "min_frequency", min_value=1)
        check_int(self, "seed", min_value=0)
        for name in ("showcase_captions", "showcase_n", "showcase_candidates"):
            check_int(self, name, min_value=1)
        if self.showcase_candidates < self.showcase_n:
            raise ValueError(
                f"DemoConfig.showcase_candidates ({self.showcase_candidates}) must be >= showcase_n ({self.showcase_n})"
            )
        if self.prime_rows is not None:
            check_int(self, "prime_rows", min_value=1)
        if not all(isinstance(c, str) and c.strip() for c in self.plain_captions):
            raise ValueError(f"DemoConfig.plain_captions must be non-empty strings, got {self.plain_captions!r}")
        missing = [s for s in TRAIN_STAGES if s not in self.stages]
        unknown = sorted(set(self.stages) - set(TRAIN_STAGES))
        if missing or unknown:
            raise ValueError(
                f"DemoConfig.stages must name exactly {list(TRAIN_STAGES)}; missing {missing}, unknown {unknown}"
            )
        for name in TRAIN_STAGES:
            spec = self.stage(name)  # validates
            if spec.beside is None:
                continue
            earlier = TRAIN_STAGES[: TRAIN_STAGES.index(name)]
            partner = self.stage(spec.beside) if spec.beside in earlier else None
            if partner is None or partner.cache or partner.beside is not None or spec.cache:
                raise ValueError(
                    f"DemoConfig.stages.{name}.beside must name an earlier training stage that is not cached and "
                    f"trains in the main process ({[s for s in earlier if not self.stage(s).cache]}), and "
                    f"{name} must not be cached; got {spec.beside!r}"
                )
            if spec.beside == "dvae" and spec.config.get("recon_prob"):
                raise ValueError(f"DemoConfig.stages.{name}: recon_prob needs the dVAE's model: not beside it")

    def stage(self, name: str) -> StageSpec:
        spec = self.stages[name]
        return spec if isinstance(spec, StageSpec) else StageSpec.from_dict(spec, source=f"demo stage {name!r}")

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        out["stages"] = {k: (v.to_dict() if isinstance(v, StageSpec) else v) for k, v in self.stages.items()}
        return out


def load_demo_config(name_or_path: str = "demo") -> DemoConfig:
    """A preset name (``demo``, ``demo_tiny``) or a JSON file -> :class:`DemoConfig`."""
    data, path = load_config_source(name_or_path, prefix="demo", sections=())
    return DemoConfig.from_dict(data, source=str(path))
