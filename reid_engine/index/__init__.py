"""The on-disk index: a vector backend, SQL rows, index-time hook state and a manifest."""
from __future__ import annotations

from .manifest import Manifest
from .store import IndexStore

__all__ = ["IndexStore", "Manifest"]
