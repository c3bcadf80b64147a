"""Shared test settings: single-threaded torch (tiny models, stable timings on a busy 2-core machine)."""

import torch

torch.set_num_threads(1)  # tiny test models gain nothing from threads; results stay stable
