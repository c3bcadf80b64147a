"""Moved to :mod:`dalle_zero.runtime` (:func:`~dalle_zero.runtime.flush_denormals`).

Kept importable because scripts were told to call ``dalle_zero.training.denormals.flush_denormals()``,
and :mod:`dalle_zero.training.loop` still imports this module.
"""

from __future__ import annotations

from dalle_zero.runtime import DENORMALS_ENV as ENV
from dalle_zero.runtime import flush_denormals

__all__ = ["ENV", "flush_denormals"]
