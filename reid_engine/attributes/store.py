"""Reading attributes back from an index: the gallery's attribute matrix and appearance neighbour lists.

Both are read-only views of one committed generation of an index; the engine
keeps them in memory and drops them when the generation changes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

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


def load_gallery_attributes(sql: sa.engine.Engine, generation: int = -1, chunk: int = 20000,
                            after: Optional[int] = None) -> GalleryAttributes:
    """One pass over the crop table (rows with an id above ``after`` when given) reading only ``id`` and ``extra``;
    rows without attributes get NaN."""
    ids: list[int] = []
    notes: list[Any] = []
    stmt = sa.select(db.crops.c.id, db.crops.c.extra).order_by(db.crops.c.id)
    if after is not None:
        stmt = stmt.where(db.crops.c.id > int(after))
    with sql.connect() as conn:
        result = conn.execution_options(yield_per=chunk).execute(stmt)
        for cid, extra in result:
            ids.append(int(cid))
            notes.append(extra.get(ANNOTATOR_NAME) if isinstance(extra, dict) else None)
    return GalleryAttributes(np.asarray(ids, np.int64), notes_to_matrix(notes), generation)


def update_gallery_attributes(sql: sa.engine.Engine, previous: Optional[GalleryAttributes], generation: int,
                              live: Callable[[np.ndarray], np.ndarray]) -> GalleryAttributes:
    """The attribute matrix of ``generation`` from that of an earlier one: rows ``live`` (a mask over ids) no
    longer holds are dropped and only rows newer than the earlier last id are read (crop ids only grow)."""
    if previous is None or not len(previous.ids):
        fresh = load_gallery_attributes(sql, generation)
        keep = live(fresh.ids) if len(fresh.ids) else np.zeros(0, bool)
        return GalleryAttributes(fresh.ids[keep], fresh.matrix[keep], generation)
    kept = live(previous.ids)
    new = load_gallery_attributes(sql, generation, after=int(previous.ids[-1]))
    new_keep = live(new.ids) if len(new.ids) else np.zeros(0, bool)
    return GalleryAttributes(np.concatenate([previous.ids[kept], new.ids[new_keep]]),
                             np.concatenate([previous.matrix[kept], new.matrix[new_keep]]), generation)
