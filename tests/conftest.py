"""Shared test settings: deterministic, single-threaded-enough torch on small CPUs."""

import torch

torch.set_num_threads(2)
