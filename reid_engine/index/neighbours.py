"""Gallery neighbour data kept beside the vectors: NFC-centralized rows and top-k lists.

Stored per generation as ``nfc-NNNNNN.npz`` and written before the SQL commit,
like the vectors, so it is always in step with them. Rows follow ascending crop
id, which is also the vectors' storage order.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

from ..errors import IndexCorruptError
from ..rerank import NeighbourState, centralize, update_centralized


@dataclass
class GalleryNeighbours:
    """NFC vectors of the gallery and the neighbour lists that let them grow incrementally."""

    ids: np.ndarray  # (G,) int64, ascending
    centralized: np.ndarray  # (G, D) float32
    state: NeighbourState
    weight: float = 1.0

    @property
    def params(self) -> dict[str, Any]:
        return {"k1": self.state.k1, "k2": self.state.k2, "weight": self.weight}


def build(ids: np.ndarray, feats: np.ndarray, k1: int, k2: int, weight: float = 1.0) -> GalleryNeighbours:
    """Centralize a whole gallery from scratch."""
    cent, state = centralize(feats, k1, k2, weight=weight)
    return GalleryNeighbours(np.asarray(ids, np.int64), cent, state, weight)


def extend(prev: GalleryNeighbours, old_feats: np.ndarray, new_ids: np.ndarray, new_feats: np.ndarray) -> GalleryNeighbours:
    """Append rows (with larger ids) and recompute only the rows whose neighbours changed."""
    upd = update_centralized(old_feats, prev.state, new_feats, weight=prev.weight)
    cent = np.concatenate([prev.centralized, np.asarray(new_feats, np.float32)])
    cent[upd.rows] = upd.vectors
    ids = np.concatenate([prev.ids, np.asarray(new_ids, np.int64)])
    return GalleryNeighbours(ids, cent, upd.state, prev.weight)


def save(path: Path, nb: GalleryNeighbours) -> None:
    """Write atomically (temporary file + rename)."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        np.savez(
            f, ids=nb.ids, centralized=nb.centralized, indices=nb.state.indices, sims=nb.state.sims,
            params=np.array([nb.state.k1, nb.state.k2], np.int64), weight=np.array([nb.weight], np.float64),
        )
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load(path: Path) -> GalleryNeighbours:
    try:
        with np.load(path) as z:
            k1, k2 = (int(v) for v in z["params"])
            state = NeighbourState(indices=z["indices"], sims=z["sims"], k1=k1, k2=k2)
            return GalleryNeighbours(z["ids"], z["centralized"], state, float(z["weight"][0]))
    except (OSError, KeyError, ValueError) as exc:
        raise IndexCorruptError(f"{path}: unreadable neighbour file ({exc})") from None


def matches(nb: Optional[GalleryNeighbours], k1: int, k2: int, weight: float) -> bool:
    return nb is not None and (nb.state.k1, nb.state.k2, nb.weight) == (int(k1), int(k2), float(weight))
