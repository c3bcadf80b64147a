"""Shared test settings: single-threaded torch (tiny models, stable timings on a busy 2-core machine)."""

import pytest
import torch

torch.set_num_threads(1)  # tiny test models gain nothing from threads; results stay stable


@pytest.fixture(autouse=True)
def one_thread():
    """Every test starts on one thread, also after an in-process CLI call that picked its own count.

    On a busy 2-core machine, two OpenMP threads spin-waiting on each other make tiny models 10-50×
    slower; module-scoped fixtures set up after a test also see the single thread.
    """
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(1)
