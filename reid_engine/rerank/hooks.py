"""Index-time hooks: neighbour lists and per-camera statistics, kept per commit.

``neighbours``: each gallery row's top-``width`` raw-cosine neighbours (ids and
similarities, self excluded), kept incrementally. A commit finds the new rows'
neighbours with ``gallery.search`` (the committed gallery) plus among the new
rows themselves, and updates every old row whose list a new row enters. That
reverse check reuses the new rows' own search results: an old row b takes a new
row a when ``sim(a, b)`` beats b's current ``width``-th similarity. A new row
whose ``width``-th similarity is above the smallest ``width``-th similarity of
the gallery is searched again for ``max_search`` results, so with an exact search and no
ties the lists equal an all-pairs computation; past ``max_search`` an old row
can miss a new neighbour. Removed ids are dropped from the lists (the lists that
shrank are refilled by ``compact``). Files: one ``hook-neighbours-<generation>.npz``
per commit (replacement lists of new and changed rows, plus the removed ids);
``load`` applies them in order, ``compact`` folds them into one.

``camera_stats``: per camera the running sum and count of the stored vectors
(a commit adds the new rows and subtracts the removed ones) and of context
crops (``observe``: crops of a camera whose rows are not in the gallery, such
as an evaluation's query camera); one small file per commit.

Neither stores anything per query.
"""
from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence

import numpy as np

from ..errors import IndexCorruptError
from ..index.ids import positions as id_positions
from ..index.topk import knn_rows, top_k_rows
from .base import GalleryView, IndexHook, register_hook

if TYPE_CHECKING:
    from ..index.backend import IdsLike

log = logging.getLogger(__name__)

#: neighbours kept per gallery row
NEIGHBOUR_WIDTH = 16
#: a commit's new rows sampled to decide how far to search them in the exact regime (commits of at least four
#: times as many rows)
PROBE_ROWS = 64
#: most results one new row's search may ask for in the reverse check
MAX_SEARCH = 256
#: galleries up to this size keep exact lists (the reverse check may widen searches up to MAX_SEARCH)
EXACT_LISTS_UP_TO = 50_000
#: search parameters of the neighbour searches of a commit (a narrow graph beam: these lists feed re-ranking,
#: which tolerates a missed neighbour; the first stage of a query uses the wider default; exact galleries ignore it).
#: 32 is the narrowest a search for the 16 neighbours walks (twice k); on a 1M tools/bench_scale.py index it found
#: 0.764 of the exact 16 against 0.791 at 40, in 20% less time, and the default re-ranking's mAP@100 was 27.41 on
#: lists built either way (docs/storage.md). ``approx_tail``: the flat segments not yet in a graph are searched
#: like a projected graph too (candidates in the graph's projection, re-scored), not exactly (docs/storage.md:
#: "The neighbour search of the flat tail")
HOOK_SEARCH = {"ef_search": 32, "approx_tail": True}
#: the neighbour files of this many commits are folded into one by the store's compaction
FOLD_FILES = 32
#: key standing for "camera unknown" in the camera statistics
NO_CAMERA = "\x00none"


def exact_neighbours(ids: np.ndarray, vectors: np.ndarray, width: int,
                     knn: Callable[[np.ndarray, np.ndarray, int], tuple[np.ndarray, np.ndarray]] = knn_rows
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Each row's top-``width`` (sims, ids) among the other rows, by exact inner product, ties by ascending id.
    ``knn(queries, rows, k)`` is an exact search of given vectors (``GalleryView.knn``: the backend's fastest;
    it keeps the lower row among ties, so the rows are searched in the order of their ids)."""
    ids = np.asarray(ids, np.int64)
    n = len(ids)
    if n == 0:
        return np.zeros((0, width), np.float32), np.zeros((0, width), np.int64)
    order = np.argsort(ids, kind="stable")
    x = np.ascontiguousarray(np.asarray(vectors, np.float32)[order])
    kk = min(n, width + 1)
    s, r = knn(x, x, kk)
    s, r = np.asarray(s, np.float32), np.asarray(r, np.int64)
    # each row itself is left out (it is among its kk unless kk others tie with it, then the last one goes)
    own = r == np.arange(n)[:, None]
    drop = np.where(own.any(axis=1), own.argmax(axis=1), kk - 1)
    keep = np.ones(r.shape, bool)
    keep[np.arange(n), drop] = False
    s, r = s[keep].reshape(n, kk - 1), r[keep].reshape(n, kk - 1)
    nb = np.where(r >= 0, ids[order][np.maximum(r, 0)], -1)
    sims = np.empty((n, width), np.float32)
    nbs = np.empty((n, width), np.int64)
    sims[order], nbs[order] = top_k_rows(np.where(r >= 0, s, -np.inf), nb, width)
    return sims, nbs


def _beyond(s: np.ndarray, i: np.ndarray, min_kth: float) -> np.ndarray:
    """Which rows of a search's results may still enter an old row's list beyond the last result: their last
    similarity is above the smallest k-th similarity of the lists."""
    return np.where(i[:, -1] >= 0, s[:, -1], -np.inf) > min_kth


class _Rows:
    """Arrays of neighbour lists sorted by id, with room to append. Tables share it: each sees its first rows;
    ``end`` is how many rows the newest table sharing it has claimed, so only that table may append in place
    (rows a table sees are never written again)."""

    def __init__(self, ids: np.ndarray, nb_ids: np.ndarray, nb_sims: np.ndarray, capacity: int):
        n, width = nb_ids.shape
        self.ids = np.empty(capacity, np.int64)
        self.nb_ids = np.empty((capacity, width), np.int64)
        self.nb_sims = np.empty((capacity, width), np.float32)
        self.ids[:n], self.nb_ids[:n], self.nb_sims[:n] = ids, nb_ids, nb_sims
        self.end = n
        self.lock = threading.Lock()

    def claim(self, n: int, extra: int) -> bool:
        """Reserve rows ``n .. n + extra`` for the table that sees ``n`` rows; False when another table has
        appended past ``n`` or there is no room."""
        with self.lock:
            if self.end != n or n + extra > len(self.ids):
                return False
            self.end = n + extra
            return True


class NeighbourTable:
    """Loaded neighbour lists: ``ids`` ascending (G,), ``nb_ids`` (G, W) (-1 padding), ``nb_sims`` (G, W).

    A commit appends its new rows and replaces the lists of some old rows (about 23,000 of a 1M-row table per
    commit of 4,096). Copying the whole table for that made each commit cost the table's size, so a table is
    rows shared with the tables it came from (appended in place when nothing was appended after them) plus an
    overlay of replaced lists, which is copied per commit and folded into fresh rows once it holds more than
    ``sqrt(2 x rows x replaced)`` lists (the size that makes the two costs equal). Tables are never changed once
    made: a query holding the previous one keeps its lists.
    """

    def __init__(self, ids: np.ndarray, nb_ids: np.ndarray, nb_sims: np.ndarray):
        ids = np.asarray(ids, np.int64)
        nb_ids = np.asarray(nb_ids, np.int64)
        nb_ids = nb_ids if nb_ids.ndim == 2 else nb_ids.reshape(len(ids), -1)
        self._rows = _Rows(ids, nb_ids, np.asarray(nb_sims, np.float32).reshape(nb_ids.shape), len(ids))
        self._n = len(ids)
        self._width = nb_ids.shape[1]
        self._set_overlay(np.zeros(0, np.int64), np.zeros((0, self._width), np.int64),
                          np.zeros((0, self._width), np.float32))

    def _set_overlay(self, pos: np.ndarray, nb_ids: np.ndarray, nb_sims: np.ndarray) -> None:
        self._o_pos, self._o_nb, self._o_s = pos, nb_ids, nb_sims  # rows (ascending) whose lists these replace
        self._full: Optional[tuple[np.ndarray, np.ndarray]] = None
        self._min_kth: Optional[float] = None

    @classmethod
    def _derived(cls, rows: _Rows, n: int, width: int, pos: np.ndarray, nb_ids: np.ndarray, nb_sims: np.ndarray
                 ) -> "NeighbourTable":
        table = cls.__new__(cls)
        table._rows, table._n, table._width = rows, n, width
        table._set_overlay(pos, nb_ids, nb_sims)
        return table

    @property
    def width(self) -> int:
        return self._width

    @property
    def ids(self) -> np.ndarray:
        return _read_only(self._rows.ids[:self._n])

    @property
    def nb_ids(self) -> np.ndarray:
        return self._materialised()[0]

    @property
    def nb_sims(self) -> np.ndarray:
        return self._materialised()[1]

    def _materialised(self) -> tuple[np.ndarray, np.ndarray]:
        """(nb_ids, nb_sims) of every row with the overlay applied (read-only; built once per table)."""
        if self._full is None:
            nb, ns = self._rows.nb_ids[:self._n], self._rows.nb_sims[:self._n]
            if len(self._o_pos):
                nb, ns = nb.copy(), ns.copy()
                nb[self._o_pos], ns[self._o_pos] = self._o_nb, self._o_s
            self._full = (_read_only(nb), _read_only(ns))
        return self._full

    def positions(self, ids: IdsLike) -> np.ndarray:
        """Row of each id in the table, -1 when absent."""
        return id_positions(self._rows.ids[:self._n], ids)

    def _rows_at(self, pos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The lists of table rows ``pos`` (all valid), overlay first."""
        nb, ns = self._rows.nb_ids[pos], self._rows.nb_sims[pos]
        if len(self._o_pos):
            at = np.clip(np.searchsorted(self._o_pos, pos), 0, len(self._o_pos) - 1)
            hit = self._o_pos[at] == pos
            nb[hit], ns[hit] = self._o_nb[at[hit]], self._o_s[at[hit]]
        return nb, ns

    def lists(self, ids: IdsLike) -> tuple[np.ndarray, np.ndarray]:
        """(nb_ids, nb_sims) of the given ids, shape (..., W); unknown ids get empty lists."""
        pos = self.positions(ids)
        if self._n == 0:
            shape = pos.shape + (self.width,)
            return np.full(shape, -1, np.int64), np.full(shape, -np.inf, np.float32)
        nb, ns = self._rows_at(np.maximum(pos, 0))
        nb = np.where((pos >= 0)[..., None], nb, -1)
        ns = np.where((pos >= 0)[..., None], ns, -np.inf)
        return nb, ns.astype(np.float32)

    def kth(self, ids: IdsLike) -> np.ndarray:
        """Each id's W-th neighbour similarity (-inf when its list is not full or the id is unknown)."""
        pos = self.positions(ids)
        if self._n == 0 or self.width == 0:
            return np.full(pos.shape, -np.inf, np.float32)
        safe = np.maximum(pos, 0)
        last = self._rows.nb_sims[safe, -1]  # only the last column: the reverse check asks for many ids
        if len(self._o_pos):
            at = np.clip(np.searchsorted(self._o_pos, safe), 0, len(self._o_pos) - 1)
            hit = self._o_pos[at] == safe
            last[hit] = self._o_s[at[hit], -1]
        return np.where(pos >= 0, last, -np.inf).astype(np.float32)

    @property
    def min_kth(self) -> float:
        """The smallest W-th similarity of the table (-inf when a list is not full)."""
        if self._n == 0:
            return -np.inf
        if self._min_kth is None:
            col = self._rows.nb_sims[:self._n, -1].copy()
            col[self._o_pos] = self._o_s[:, -1]
            self._min_kth = float(col.min())
        return self._min_kth

    def apply(self, removed: np.ndarray, ids: np.ndarray, nb_ids: np.ndarray, nb_sims: np.ndarray
              ) -> "NeighbourTable":
        """A new table with ``removed`` rows and list entries dropped, then the given lists set."""
        if not len(removed) and not len(ids):
            return self
        if not len(removed) and self._n:
            fast = self._apply_appending(ids, nb_ids, nb_sims)
            if fast is not None:
                return fast
        t_ids, t_nb, t_s = self.ids, self.nb_ids, self.nb_sims
        if len(removed):
            keep = ~np.isin(t_ids, removed)
            t_ids, t_nb, t_s = t_ids[keep], t_nb[keep], t_s[keep]
            gone = np.isin(t_nb, removed)
            if gone.any():
                t_s, t_nb = top_k_rows(np.where(gone, -np.inf, t_s), np.where(gone, -1, t_nb), self.width)
        if len(ids):
            keep = ~np.isin(t_ids, ids)
            t_ids = np.concatenate([t_ids[keep], ids])
            t_nb = np.concatenate([t_nb[keep], nb_ids])
            t_s = np.concatenate([t_s[keep], nb_sims])
            order = np.argsort(t_ids, kind="stable")
            t_ids, t_nb, t_s = t_ids[order], t_nb[order], t_s[order]
        return NeighbourTable(t_ids, t_nb, t_s)

    def _apply_appending(self, ids: np.ndarray, nb_ids: np.ndarray, nb_sims: np.ndarray
                         ) -> Optional["NeighbourTable"]:
        """``apply`` without removals when the given ids are table rows or newer than all of them: the
        changed rows go to the overlay and the new ones are appended (no sort); None otherwise."""
        ids = np.asarray(ids, np.int64)
        nb_ids = np.asarray(nb_ids, np.int64).reshape(len(ids), self.width)
        nb_sims = np.asarray(nb_sims, np.float32).reshape(len(ids), self.width)
        split = _split_known(self.ids, ids)
        if split is None:
            return None
        pos, fresh = split
        order = np.argsort(ids[fresh], kind="stable")
        new_ids, new_nb, new_s = ids[fresh][order], nb_ids[fresh][order], nb_sims[fresh][order]
        # the overlay: the previous one with these lists set (a list given twice: the later one)
        o_pos = np.concatenate([self._o_pos, pos])
        o_nb = np.concatenate([self._o_nb, nb_ids[~fresh]])
        o_s = np.concatenate([self._o_s, nb_sims[~fresh]])
        last = len(o_pos) - 1 - np.unique(o_pos[::-1], return_index=True)[1]  # ascending positions
        o_pos, o_nb, o_s = o_pos[last], o_nb[last], o_s[last]
        n, m = self._n, len(new_ids)
        fold = len(o_pos) ** 2 > 2 * (n + m) * max(len(pos), 1)
        if not fold and self._rows.claim(n, m):
            rows = self._rows
        else:  # fresh rows, with room to append, and the overlay folded in
            rows = _Rows(self._rows.ids[:n], self._rows.nb_ids[:n], self._rows.nb_sims[:n],
                         max(n + m, int(1.25 * (n + m)) if m else n))
            rows.nb_ids[o_pos], rows.nb_sims[o_pos] = o_nb, o_s
            o_pos, o_nb, o_s = o_pos[:0], o_nb[:0], o_s[:0]
            rows.claim(n, m)
        rows.ids[n:n + m], rows.nb_ids[n:n + m], rows.nb_sims[n:n + m] = new_ids, new_nb, new_s
        return NeighbourTable._derived(rows, n + m, self.width, o_pos, o_nb, o_s)


def _save_npz(path: Path, **arrays: np.ndarray) -> None:
    """Write durably (temporary file, fsync, rename): the SQL commit that names the file may follow at once."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        np.savez(fh, **arrays)  # type: ignore[arg-type]  # numpy types the keywords as savez's own (allow_pickle)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _read_only(a: np.ndarray) -> np.ndarray:
    view = a.view()
    view.flags.writeable = False
    return view


def _split_known(table_ids: np.ndarray, ids: np.ndarray) -> Optional[tuple[np.ndarray, np.ndarray]]:
    """(positions of the ids already in ``table_ids``, mask of the new ones) when every new id sorts after the
    table's last id (ids only grow), else None."""
    pos = np.searchsorted(table_ids, ids)
    known = (pos < len(table_ids)) & (table_ids[np.minimum(pos, len(table_ids) - 1)] == ids)
    fresh = ids[~known]
    if fresh.size and (fresh.min() <= table_ids[-1] or np.unique(fresh).size != fresh.size):
        return None
    return pos[known], ~known


def _apply_many(table: NeighbourTable, parts: Sequence[tuple[np.ndarray, ...]]) -> NeighbourTable:
    """``table`` with the changes of several files applied in order, in one pass (ids are never re-added).

    Only the ids are sorted; each list is then copied once, from the table or the file that holds its latest
    version, into the new table's arrays (a 1M-row index's files hold about 1.6M lists: concatenating and
    reordering all of them took most of a process's first query)."""
    width = table.width
    removed = np.unique(np.concatenate([p[0] for p in parts] + [np.zeros(0, np.int64)]).astype(np.int64))
    sources = [(table.ids, table.nb_ids, table.nb_sims)] + [
        (np.asarray(p[1], np.int64), np.asarray(p[2], np.int64).reshape(-1, width),
         np.asarray(p[3], np.float32).reshape(-1, width)) for p in parts]
    ids = np.concatenate([src[0] for src in sources])
    order = np.argsort(ids, kind="stable")  # by id, later entries last
    s_ids = ids[order]
    keep = np.r_[s_ids[1:] != s_ids[:-1], True] if len(s_ids) else np.zeros(0, bool)
    if len(removed):
        keep &= ~np.isin(s_ids, removed)
    pick = order[keep]  # the rows of the concatenation that make the new table, by id
    starts = np.cumsum([0] + [len(src[0]) for src in sources])
    of = np.searchsorted(starts, pick, side="right") - 1  # the source of each picked row
    nb = np.empty((len(pick), width), np.int64)
    sims = np.empty((len(pick), width), np.float32)
    for k, (_, src_nb, src_sims) in enumerate(sources):
        at = np.flatnonzero(of == k)
        if len(at):
            rows = pick[at] - starts[k]
            nb[at], sims[at] = src_nb[rows], src_sims[rows]
    ids = s_ids[keep]
    if len(removed):
        gone = np.isin(nb, removed)
        if gone.any():
            rows = np.flatnonzero(gone.any(axis=1))
            s2, n2 = top_k_rows(np.where(gone[rows], -np.inf, sims[rows]), np.where(gone[rows], -1, nb[rows]),
                                width)
            sims[rows], nb[rows] = s2, n2
    return NeighbourTable(ids, nb, sims)


def _empty_table(width: int) -> NeighbourTable:
    return NeighbourTable(np.zeros(0, np.int64), np.zeros((0, width), np.int64), np.zeros((0, width), np.float32))


@register_hook
class NeighboursHook(IndexHook):
    """Each gallery row's top-``width`` raw-cosine neighbours, updated per commit (see the module docstring)."""

    name = "neighbours"

    def __init__(self, width: int = NEIGHBOUR_WIDTH, max_search: int = MAX_SEARCH):
        self.width = int(width)
        self.max_search = int(max_search)
        self._cache: Optional[tuple[str, tuple[str, ...], NeighbourTable]] = None

    def empty_state(self) -> dict[str, Any]:
        return {"width": self.width, "files": []}

    def files(self, state: dict[str, Any]) -> list[str]:
        return list(state.get("files", []))

    def _write(self, folder: Path, name: str, removed: np.ndarray, ids: np.ndarray, nb_ids: np.ndarray,
               nb_sims: np.ndarray) -> None:
        _save_npz(Path(folder) / name, removed=removed.astype(np.int64), ids=ids.astype(np.int64),
                  nb_ids=nb_ids.astype(np.int64), nb_sims=nb_sims.astype(np.float32))

    def load(self, folder: Path, state: dict[str, Any]) -> NeighbourTable:
        width = int(state.get("width", self.width))
        files = tuple(state.get("files", []))
        table, done = _empty_table(width), 0
        if self._cache is not None and self._cache[0] == str(folder):
            prev = self._cache[1]
            if files[:len(prev)] == prev and table.width == self._cache[2].width:
                table, done = self._cache[2], len(prev)
        parts = []
        for name in files[done:]:
            try:
                with np.load(Path(folder) / name) as z:
                    parts.append((z["removed"], z["ids"], z["nb_ids"], z["nb_sims"]))
            except (OSError, KeyError, ValueError, EOFError) as exc:
                raise IndexCorruptError(f"{Path(folder) / name}: unreadable neighbour file ({exc})") from None
        if len(parts) == 1:
            table = table.apply(*parts[0])
        elif parts:
            table = _apply_many(table, parts)
        self._cache = (str(folder), files, table)
        return table

    def _table(self, folder: Path, state: dict[str, Any], gallery: GalleryView) -> NeighbourTable:
        loaded = gallery.state(self.name)
        return loaded if isinstance(loaded, NeighbourTable) else self.load(folder, state)

    def prepare(self, folder: Path, generation: int, state: dict[str, Any], gallery: GalleryView,
                added_ids: np.ndarray, added_vectors: np.ndarray, added_fields: dict[str, np.ndarray],
                removed_ids: np.ndarray) -> dict[str, Any]:
        width = int(state.get("width", self.width))
        table = self._table(folder, state, gallery)
        removed = np.unique(np.asarray(removed_ids, np.int64))
        new_ids = np.asarray(added_ids, np.int64)
        x = np.asarray(added_vectors, np.float32).reshape(len(new_ids), -1) if len(new_ids) else None
        out_ids, out_nb, out_s = np.zeros(0, np.int64), np.zeros((0, width), np.int64), np.zeros((0, width), np.float32)
        if len(new_ids):
            assert x is not None  # set whenever there are new ids
            base = table.apply(removed, np.zeros(0, np.int64), np.zeros((0, width), np.int64),
                               np.zeros((0, width), np.float32))
            # new rows among themselves
            in_s, in_i = exact_neighbours(new_ids, x, width, gallery.knn)
            # new rows against the committed gallery, widened until the reverse check is complete
            count = gallery.count
            o_s = np.full((len(new_ids), 0), -np.inf, np.float32)
            o_i = np.full((len(new_ids), 0), -1, np.int64)
            if count > 0:
                # the smallest W-th similarity reads every list: only galleries that keep exact lists need it
                min_kth = base.min_kth if count <= EXACT_LISTS_UP_TO else -np.inf
                o_s, o_i = self._search_old(gallery, x, width, min_kth, count)
                o_s = np.where(np.isin(o_i, removed), -np.inf, o_s)
                o_i = np.where(np.isfinite(o_s), o_i, -1)
            new_s, new_nb = top_k_rows(np.concatenate([in_s, o_s[:, :max(width, 0)]], 1),
                                       np.concatenate([in_i, o_i[:, :width]], 1), width)
            # old rows whose list a new row enters
            a_rows, cols = np.nonzero(o_i >= 0)
            b_ids = o_i[a_rows, cols]
            sims = o_s[a_rows, cols]
            enter = sims > base.kth(b_ids)
            a_rows, b_ids, sims = a_rows[enter], b_ids[enter], sims[enter]
            changed = np.unique(b_ids)
            if len(changed):
                old_nb, old_s = base.lists(changed)
                slot = np.searchsorted(changed, b_ids)
                per = np.bincount(slot, minlength=len(changed)).max()
                add_s = np.full((len(changed), per), -np.inf, np.float32)
                add_i = np.full((len(changed), per), -1, np.int64)
                order = np.argsort(slot, kind="stable")
                slot_sorted = slot[order]
                rank = np.arange(len(slot_sorted)) - np.searchsorted(slot_sorted, slot_sorted)
                add_s[slot_sorted, rank] = sims[order]
                add_i[slot_sorted, rank] = new_ids[a_rows[order]]
                ch_s, ch_nb = top_k_rows(np.concatenate([old_s, add_s], 1), np.concatenate([old_nb, add_i], 1), width)
                out_ids, out_nb, out_s = changed, ch_nb, ch_s
            out_ids = np.concatenate([out_ids, new_ids])
            out_nb = np.concatenate([out_nb, new_nb])
            out_s = np.concatenate([out_s, new_s])
            log.debug("neighbours: %d new rows, %d old lists changed", len(new_ids), len(changed))
        name = f"hook-neighbours-{int(generation):08d}.npz"
        self._write(folder, name, removed, out_ids, out_nb, out_s)
        return {"width": width, "files": list(state.get("files", [])) + [name]}

    def _search_old(self, gallery: GalleryView, x: np.ndarray, width: int, min_kth: float, count: int
                    ) -> tuple[np.ndarray, np.ndarray]:
        """Each new row's nearest committed rows: at least ``width``, more until the reverse check is complete."""
        r = min(count, max(width, 1))
        # exact lists while the gallery is small; past that the reverse check only looks at the new rows'
        # own ``width`` neighbours, so a commit costs the same whatever the gallery's size (an old row misses a
        # new neighbour only when that neighbour does not have the old row among its own ``width``)
        limit = min(count, self.max_search) if count <= EXACT_LISTS_UP_TO else r
        if r < limit and len(x) >= 4 * PROBE_ROWS:
            # usually nearly every row needs the search to the limit (the gallery's smallest k-th similarity is
            # low): when most of a sample do, every row is searched to the limit at once, which saves a search
            # of the whole gallery; the extra columns never enter a list (below)
            probe = x[np.linspace(0, len(x) - 1, PROBE_ROWS).astype(np.int64)]
            ps, pi = gallery.search(probe, r, params=HOOK_SEARCH)
            if np.mean(_beyond(np.asarray(ps, np.float32), np.asarray(pi, np.int64), min_kth)) >= 0.5:
                s, i = gallery.search(x, limit, params=HOOK_SEARCH)
                return np.asarray(s, np.float32), np.asarray(i, np.int64)
        s, i = gallery.search(x, r, params=HOOK_SEARCH)
        s, i = np.asarray(s, np.float32), np.asarray(i, np.int64)
        if r < limit:
            todo = np.nonzero(_beyond(s, i, min_kth))[0]  # an old row may still take this new row beyond rank r
            # one search to the limit, not a doubling series: each search scores every row, and keeping
            # more of them costs little (4,096 rows against 41k: 1.2 s for 16 each, 1.8 s for 256). The rows
            # a doubling would have stopped earlier get more columns, which never enter a list: their
            # similarities are at most ``min_kth``, and a row enters a list only above its k-th
            if len(todo):
                s2, i2 = gallery.search(x[todo], limit, params=HOOK_SEARCH)
                s = np.concatenate([s, np.full((len(s), limit - r), -np.inf, np.float32)], 1)
                i = np.concatenate([i, np.full((len(i), limit - r), -1, np.int64)], 1)
                s[todo], i[todo] = np.asarray(s2, np.float32), np.asarray(i2, np.int64)
        return s, i

    def compact(self, folder: Path, generation: int, state: dict[str, Any], gallery: GalleryView) -> dict[str, Any]:
        """One file holding every list; lists shortened by removals are searched again."""
        width = int(state.get("width", self.width))
        table = self._table(folder, state, gallery)
        short = np.nonzero((table.nb_ids < 0).any(axis=1))[0]
        short = short[np.minimum(gallery.count - 1, width) > (table.nb_ids[short] >= 0).sum(1)]
        if len(short):
            ids = table.ids[short]
            s, i = gallery.search(gallery.vectors(ids), width + 1, params=HOOK_SEARCH)
            s = np.where(np.asarray(i) == ids[:, None], -np.inf, s)
            s, i = top_k_rows(np.asarray(s, np.float32), np.where(np.isfinite(s), i, -1), width)
            table = table.apply(np.zeros(0, np.int64), ids, i, s)
        name = f"hook-neighbours-{int(generation):08d}-full.npz"
        self._write(folder, name, np.zeros(0, np.int64), table.ids, table.nb_ids, table.nb_sims)
        return {"width": width, "files": [name]}


@dataclass
class CameraStats:
    """Per-camera sums and counts of the stored vectors (``cameras[c]`` -> row c)."""

    cameras: list[str]
    sums: np.ndarray  # (C, D) float64
    counts: np.ndarray  # (C,) int64

    def mean(self, camera: Optional[str], min_count: int = 1) -> Optional[np.ndarray]:
        """Mean vector of a camera (None when unknown or with fewer than ``min_count`` crops)."""
        key = NO_CAMERA if camera is None else str(camera)
        if key not in self.cameras:
            return None
        c = self.cameras.index(key)
        if self.counts[c] < max(1, min_count):
            return None
        return (self.sums[c] / self.counts[c]).astype(np.float32)

    def global_mean(self) -> Optional[np.ndarray]:
        """Mean vector over every stored vector (None when empty)."""
        n = int(self.counts.sum())
        return None if n == 0 else (self.sums.sum(0) / n).astype(np.float32)

    def count(self, camera: Optional[str]) -> int:
        key = NO_CAMERA if camera is None else str(camera)
        return int(self.counts[self.cameras.index(key)]) if key in self.cameras else 0


def _camera_keys(cameras: Optional[np.ndarray], n: int) -> list[str]:
    if cameras is None:
        return [NO_CAMERA] * n
    return [NO_CAMERA if c is None else str(c) for c in cameras]


class _OneFileHook(IndexHook):
    """A hook whose state is one small file per commit, named in ``state["file"]``."""

    def empty_state(self) -> dict[str, Any]:
        return {"file": None}

    def files(self, state: dict[str, Any]) -> list[str]:
        return [state["file"]] if state.get("file") else []

    def _current(self, folder: Path, state: dict[str, Any], gallery: GalleryView) -> Any:
        """The loaded state of the committed gallery (read from ``state`` when the gallery holds none)."""
        loaded = gallery.state(self.name)
        return loaded if loaded is not None else self.load(folder, state)


@register_hook
class CameraStatsHook(_OneFileHook):
    """Running per-camera sum and count of the gallery vectors."""

    name = "camera_stats"

    def load(self, folder: Path, state: dict[str, Any]) -> CameraStats:
        if not state.get("file"):
            return CameraStats([], np.zeros((0, 0)), np.zeros(0, np.int64))
        try:
            with np.load(Path(folder) / state["file"], allow_pickle=False) as z:
                return CameraStats([str(c) for c in z["cameras"]], z["sums"].astype(np.float64),
                                   z["counts"].astype(np.int64))
        except (OSError, KeyError, ValueError, EOFError) as exc:
            raise IndexCorruptError(f"{Path(folder) / state['file']}: unreadable camera statistics ({exc})") from None

    def prepare(self, folder: Path, generation: int, state: dict[str, Any], gallery: GalleryView,
                added_ids: np.ndarray, added_vectors: np.ndarray, added_fields: dict[str, np.ndarray],
                removed_ids: np.ndarray) -> dict[str, Any]:
        parts = []
        removed = np.asarray(removed_ids, np.int64)
        if len(removed):
            parts.append((_camera_keys(gallery.fields(removed).get("camera"), len(removed)),
                          np.asarray(gallery.vectors(removed), np.float32), -1))
        if len(added_ids):
            parts.append((_camera_keys(added_fields.get("camera"), len(added_ids)),
                          np.asarray(added_vectors, np.float32).reshape(len(added_ids), -1), +1))
        return self._write(folder, generation, self._current(folder, state, gallery), parts)

    def observe(self, folder: Path, generation: int, state: dict[str, Any], gallery: GalleryView,
                vectors: np.ndarray, fields: dict[str, np.ndarray]) -> Optional[dict[str, Any]]:
        """Context crops count in their camera's statistics (they are never removed)."""
        vecs = np.asarray(vectors, np.float32).reshape(len(vectors), -1)
        if not len(vecs):
            return None
        parts = [(_camera_keys(fields.get("camera"), len(vecs)), vecs, +1)]
        return self._write(folder, generation, self._current(folder, state, gallery), parts)

    def _write(self, folder: Path, generation: int, stats: CameraStats,
               parts: list[tuple[list[str], np.ndarray, int]]) -> dict[str, Any]:
        """The statistics plus (camera keys, vectors, +1 add / -1 subtract) parts, written for ``generation``."""
        sums = {c: stats.sums[i].copy() for i, c in enumerate(stats.cameras)}
        counts = {c: int(stats.counts[i]) for i, c in enumerate(stats.cameras)}
        dim = stats.sums.shape[1] if stats.sums.size else None
        for keys, vecs, sign in parts:
            dim = vecs.shape[1] if dim is None else dim
            for key in sorted(set(keys)):
                rows = [i for i, k in enumerate(keys) if k == key]
                sums[key] = sums.get(key, np.zeros(vecs.shape[1])) + sign * vecs[rows].astype(np.float64).sum(0)
                counts[key] = counts.get(key, 0) + sign * len(rows)
        keys = sorted(k for k in sums if counts[k] > 0)
        dim = 0 if dim is None else dim
        name = f"hook-camera_stats-{int(generation):08d}.npz"
        _save_npz(Path(folder) / name, cameras=np.array(keys, dtype=str),
                  sums=np.array([sums[k] for k in keys]).reshape(len(keys), dim),
                  counts=np.array([counts[k] for k in keys], np.int64))
        return {"file": name}


#: new rows of one commit searched for camera links (context crops: up to 4x as many)
LINK_SAMPLE = 64
#: a camera's crops are searched for links until this many of them have been: enough evidence, and a large
#: gallery's commits then search nothing (small searches through the graphs cost ~1 ms a crop)
LINK_ENOUGH = 256
#: results of a link search; the first one from another camera is the link
LINK_SEARCH = 16


@dataclass
class CameraLinks:
    """Which cameras see the same people: ``links[a, b]`` counts the sampled crops of camera ``a`` whose nearest
    crop of another camera is in camera ``b``; ``rows[b]`` is camera ``b``'s gallery rows (``cameras[c]`` ->
    index c)."""

    cameras: list[str]
    links: np.ndarray  # (C, C) int64
    rows: np.ndarray  # (C,) int64
    searched: Optional[np.ndarray] = None  # (C,) int64: crops of each camera searched for links

    def __post_init__(self) -> None:
        if self.searched is None:
            self.searched = np.zeros(len(self.cameras), np.int64)

    def linked(self, camera: Optional[str], candidate_cameras: Optional[np.ndarray], share: float,
               min_links: int) -> np.ndarray:
        """Per candidate, whether its camera is linked to ``camera``: the same camera, an unknown one, or one
        that draws at least ``share`` of the best-linked camera's nearest neighbours per gallery row. Every
        candidate is linked when ``camera`` has fewer than ``min_links`` links."""
        n = 0 if candidate_cameras is None else len(candidate_cameras)
        ok = np.ones(n, bool)
        if camera is None or candidate_cameras is None or str(camera) not in self.cameras:
            return ok
        a = self.cameras.index(str(camera))
        if int(self.links[a].sum()) < max(1, min_links):
            return ok
        ratio = np.where(self.rows > 0, self.links[a] / np.maximum(self.rows, 1), 0.0)
        ratio[a] = 0.0
        best = float(ratio.max())
        if best <= 0.0:
            return ok
        strong = {c for c, r in zip(self.cameras, ratio) if r >= share * best} | {str(camera)}
        known = set(self.cameras)
        for p, c in enumerate(candidate_cameras):
            if c is not None and str(c) in known and str(c) not in strong:
                ok[p] = False
        return ok


@register_hook
class CameraLinksHook(_OneFileHook):
    """Per camera, the cameras its crops' nearest crops of another camera fall in: a sample of each commit's new
    rows (``LINK_SAMPLE``) and of context crops is searched once against the committed gallery, until a camera
    has had ``LINK_ENOUGH`` crops searched, so a commit costs at most a few dozen searches and, once every
    camera has enough, none. Removed rows leave their links (the counts are evidence that two cameras see the
    same people, not a list of rows)."""

    name = "camera_links"

    def load(self, folder: Path, state: dict[str, Any]) -> CameraLinks:
        if not state.get("file"):
            return CameraLinks([], np.zeros((0, 0), np.int64), np.zeros(0, np.int64))
        try:
            with np.load(Path(folder) / state["file"], allow_pickle=False) as z:
                return CameraLinks([str(c) for c in z["cameras"]], z["links"].astype(np.int64),
                                   z["rows"].astype(np.int64), z["searched"].astype(np.int64))
        except (OSError, KeyError, ValueError, EOFError) as exc:
            raise IndexCorruptError(f"{Path(folder) / state['file']}: unreadable camera links ({exc})") from None

    def prepare(self, folder: Path, generation: int, state: dict[str, Any], gallery: GalleryView,
                added_ids: np.ndarray, added_vectors: np.ndarray, added_fields: dict[str, np.ndarray],
                removed_ids: np.ndarray) -> dict[str, Any]:
        links = self._current(folder, state, gallery)
        counts: dict[tuple[str, str], int] = {}
        rows: dict[str, int] = {}
        searched: dict[str, int] = {}
        removed = np.asarray(removed_ids, np.int64)
        if len(removed):
            for c in _camera_keys(gallery.fields(removed).get("camera"), len(removed)):
                rows[c] = rows.get(c, 0) - 1
        n = len(added_ids)
        cams = _camera_keys(added_fields.get("camera"), n)
        for c in cams:
            rows[c] = rows.get(c, 0) + 1
        if n:
            vecs = np.asarray(added_vectors, np.float32).reshape(n, -1)
            self._count(gallery, vecs, cams, LINK_SAMPLE, links, counts, searched)
        return self._write(folder, generation, links, counts, rows, searched)

    def observe(self, folder: Path, generation: int, state: dict[str, Any], gallery: GalleryView,
                vectors: np.ndarray, fields: dict[str, np.ndarray]) -> Optional[dict[str, Any]]:
        vecs = np.asarray(vectors, np.float32).reshape(len(vectors), -1)
        counts: dict[tuple[str, str], int] = {}
        searched: dict[str, int] = {}
        links = self._current(folder, state, gallery)
        self._count(gallery, vecs, _camera_keys(fields.get("camera"), len(vecs)), 4 * LINK_SAMPLE, links, counts,
                    searched)
        if not searched:
            return None
        return self._write(folder, generation, links, counts, {}, searched)

    @staticmethod
    def _count(gallery: GalleryView, vecs: np.ndarray, cams: list[str], sample: int, links: CameraLinks,
               counts: dict[tuple[str, str], int], searched: dict[str, int]) -> None:
        """Add the links of an evenly spaced sample of the crops whose camera has had fewer than ``LINK_ENOUGH``
        crops searched."""
        assert links.searched is not None  # set by CameraLinks
        done = dict(zip(links.cameras, links.searched.tolist()))
        have = [p for p, c in enumerate(cams) if c != NO_CAMERA and done.get(c, 0) < LINK_ENOUGH]
        if not have or gallery.count == 0:
            return
        pick = np.asarray(have)[np.unique(np.linspace(0, len(have) - 1, min(sample, len(have))).round().astype(int))]
        for p in pick:
            searched[cams[p]] = searched.get(cams[p], 0) + 1
        _, found = gallery.search(vecs[pick], min(LINK_SEARCH, gallery.count), params=HOOK_SEARCH)
        found = np.asarray(found, np.int64)
        valid = np.unique(found[found >= 0])
        if not len(valid):
            return
        hit_cams = dict(zip(valid.tolist(), _camera_keys(gallery.fields(valid).get("camera"), len(valid))))
        for p, row in zip(pick, found):
            own = cams[p]
            for i in row:
                c = hit_cams.get(int(i), NO_CAMERA) if i >= 0 else NO_CAMERA
                if c != NO_CAMERA and c != own:
                    counts[(own, c)] = counts.get((own, c), 0) + 1
                    break

    @staticmethod
    def _write(folder: Path, generation: int, links: CameraLinks, counts: dict[tuple[str, str], int],
               rows: dict[str, int], searched: dict[str, int]) -> dict[str, Any]:
        keys = sorted(set(links.cameras) | {c for pair in counts for c in pair} | set(rows) | set(searched))
        at = {c: i for i, c in enumerate(keys)}
        out = np.zeros((len(keys), len(keys)), np.int64)
        out_rows = np.zeros(len(keys), np.int64)
        out_searched = np.zeros(len(keys), np.int64)
        old = [at[c] for c in links.cameras]
        if old:
            out[np.ix_(old, old)] = links.links
            out_rows[old] = links.rows
            out_searched[old] = np.asarray(links.searched)
        for (a, b), v in counts.items():
            out[at[a], at[b]] += v
        for c, v in rows.items():
            out_rows[at[c]] += v
        for c, v in searched.items():
            out_searched[at[c]] += v
        name = f"hook-camera_links-{int(generation):08d}.npz"
        _save_npz(Path(folder) / name, cameras=np.array(keys, dtype=str), links=out, rows=np.maximum(out_rows, 0),
                  searched=out_searched)
        return {"file": name}
