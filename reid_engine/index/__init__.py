"""The on-disk index: FAISS vectors, SQL rows and a manifest."""
from __future__ import annotations

from .manifest import Manifest
from .store import IndexStore

__all__ = ["IndexStore", "Manifest"]
