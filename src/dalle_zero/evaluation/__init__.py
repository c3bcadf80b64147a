"""Evaluation (paper §3.1): figures in :mod:`~dalle_zero.evaluation.metrics`, standard Inception-v3
from a local TorchScript file in :mod:`~dalle_zero.evaluation.inception`, and HTML report building
blocks in :mod:`~dalle_zero.evaluation.report`. The in-house evaluator model itself lives in
:mod:`dalle_zero.models.evaluator` and is trained by :mod:`dalle_zero.training.evaluator`."""
