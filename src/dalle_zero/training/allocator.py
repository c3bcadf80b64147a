"""Moved to :mod:`dalle_zero.runtime` (:func:`~dalle_zero.runtime.keep_freed_memory`).

Kept importable because :mod:`dalle_zero.training.loop` still imports this module.
"""

from __future__ import annotations

from dalle_zero.runtime import MALLOC_ENV as ENV
from dalle_zero.runtime import keep_freed_memory

__all__ = ["ENV", "keep_freed_memory"]
