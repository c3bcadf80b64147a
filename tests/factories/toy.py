"""A toy model and task for testing the shared training loop without any DALL-E stage."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Dataset

from dalle_zero.config import Config
from dalle_zero.io import PretrainedModel
from dalle_zero.training.loop import LoopConfig, TrainTask, train
from dalle_zero.training.optim import adamw


@dataclass(frozen=True, kw_only=True)
class ToyConfig(Config):
    dim: int = 8
    dropout: float = 0.1


class ToyModel(PretrainedModel):
    config_class = ToyConfig
    model_type = "toy"

    def __init__(self, config: ToyConfig) -> None:
        super().__init__()
        self.config = config
        self.net = nn.Sequential(nn.Linear(config.dim, 16), nn.Dropout(config.dropout), nn.GELU(), nn.Linear(16, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(-1)


class ToyData(Dataset):
    """y = sum(x) with a per-sample random jitter drawn from the sample's seed (like augmentation)."""

    def __init__(self, n: int = 40, dim: int = 8) -> None:
        g = torch.Generator().manual_seed(123)
        self.x = torch.randn(n, dim, generator=g)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, key):
        index, seed = key if isinstance(key, tuple) else (key, 0)
        jitter = torch.randn(self.x.shape[1], generator=torch.Generator().manual_seed(seed)) * 0.01
        x = self.x[index] + jitter
        return {"x": x, "y": x.sum()}


@dataclass(frozen=True, kw_only=True)
class ToyTrainConfig(Config):
    model: ToyConfig = ToyConfig()
    loop: LoopConfig = LoopConfig()
    lr: float = 1e-2


class ToyTask(TrainTask):
    def __init__(self, cfg: ToyTrainConfig) -> None:
        self.cfg = cfg
        self.evaluated: list[int] = []

    def train_dataset(self) -> Dataset:
        return ToyData(dim=self.cfg.model.dim)

    def make_optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        return adamw(model, lr=self.cfg.lr, betas=(0.9, 0.99), eps=1e-8, weight_decay=1e-2)

    def lr_at(self, step: int) -> float:
        return self.cfg.lr * (1 - step / (2 * self.cfg.loop.steps))

    def loss(self, model, batch, step):
        pred = model(batch["x"])
        loss = ((pred - batch["y"]) ** 2).mean()
        return loss, {"mse": loss.item()}

    def evaluate(self, model, step: int, run_dir: Path) -> dict[str, float]:
        self.evaluated.append(step)
        torch.rand(3)  # evaluation may draw random numbers without disturbing training
        return {"check": float(step)}


def run_toy(
    run_dir: Path, *, steps=12, resume=False, stop_after=None, dropout=0.1, task=ToyTask, **loop_kw
) -> ToyModel:
    loop = LoopConfig(
        **{"steps": steps, "batch_size": 4, "checkpoint_every": 5, "log_every": 2, "ema_decay": 0.9, **loop_kw}
    )
    cfg = ToyTrainConfig(loop=loop, model=ToyConfig(dropout=dropout))
    torch.manual_seed(0)
    model = ToyModel(cfg.model)
    train(model, task(cfg), loop, run_dir, train_config=cfg, resume=resume, progress=False, stop_after=stop_after)
    return model


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
