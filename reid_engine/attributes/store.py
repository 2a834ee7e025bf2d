"""Reading attributes back from an index: the gallery's attribute matrix and appearance neighbour lists.

Both are read-only views of one committed generation of an index; the engine
keeps them in memory and drops them when the generation changes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import sqlalchemy as sa

from ..index import db
from .groups import WIDTH, notes_to_matrix
from .model import ANNOTATOR_NAME


@dataclass
class GalleryAttributes:
    """Attribute vectors of every crop of one index generation, by ascending crop id (NaN = none stored)."""

    ids: np.ndarray  # (G,) int64 ascending
    matrix: np.ndarray  # (G, WIDTH) float32
    generation: int = -1

    def lookup(self, ids: np.ndarray) -> np.ndarray:
        """(..., WIDTH) vectors of the given crop ids; unknown ids (and -1 padding) give NaN rows."""
        ids = np.asarray(ids, np.int64)
        flat = ids.reshape(-1)
        out = np.full((flat.size, WIDTH), np.nan, np.float32)
        if len(self.ids):
            pos = np.clip(np.searchsorted(self.ids, flat), 0, len(self.ids) - 1)
            hit = self.ids[pos] == flat
            out[hit] = self.matrix[pos[hit]]
        return out.reshape(*ids.shape, WIDTH)


def load_gallery_attributes(sql: sa.engine.Engine, generation: int = -1, chunk: int = 20000) -> GalleryAttributes:
    """One pass over the crop table reading only ``id`` and ``extra``; rows without attributes get NaN."""
    ids: list[int] = []
    notes: list[Any] = []
    stmt = sa.select(db.crops.c.id, db.crops.c.extra).order_by(db.crops.c.id)
    with sql.connect() as conn:
        result = conn.execution_options(yield_per=chunk).execute(stmt)
        for cid, extra in result:
            ids.append(int(cid))
            notes.append(extra.get(ANNOTATOR_NAME) if isinstance(extra, dict) else None)
    return GalleryAttributes(np.asarray(ids, np.int64), notes_to_matrix(notes), generation)
