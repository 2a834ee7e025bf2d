"""An in-memory ``GalleryView`` over NumPy arrays, with an exact search, for tools and tests.

``MemoryGallery`` runs the index hooks the way the store does (``prepare`` with
the committed gallery before the change, then ``load``), writing their files in
a folder, so a re-ranking pipeline sees the same state it would see in an index.
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Optional, Sequence, Union

import numpy as np

from ..errors import InvalidInputError
from ..index.backend import fields_of
from ..index.topk import knn_rows, top_k_rows
from .base import RERANK_K, Candidates, IndexHook, Pipeline, RerankContext, get_hook

if TYPE_CHECKING:
    from ..index.backend import IdsLike

FIELD_NAMES = ("camera", "timestamp", "source", "track")


class MemoryGallery:
    """A gallery held in memory: ids, L2-normalised vectors, scalar fields, SQL-like rows, hook states."""

    def __init__(self, dim: int,
                 hooks: Iterable[Union[str, IndexHook]] = ("neighbours", "camera_stats", "camera_links"),
                 folder: Optional[Path] = None):
        self.dim = int(dim)
        self._tmp = None
        if folder is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="reid_memgallery_")
            folder = Path(self._tmp.name)
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.generation = 0
        self._ids = np.zeros(0, np.int64)
        self._vecs = np.zeros((0, self.dim), np.float32)
        self._fields: dict[str, np.ndarray] = {
            n: np.zeros(0, np.float64 if n == "timestamp" else object) for n in FIELD_NAMES}
        self._rows: dict[int, dict[str, Any]] = {}
        self.hooks: dict[str, IndexHook] = {}
        for h in hooks:
            hook = get_hook(h) if isinstance(h, str) else h
            self.hooks[hook.name] = hook
        self.states = {name: hook.empty_state() for name, hook in self.hooks.items()}
        self._loaded = {name: hook.load(self.folder, self.states[name]) for name, hook in self.hooks.items()}
        self._overrides: dict[str, Any] = {}

    # -- GalleryView -----------------------------------------------------------------------------
    @property
    def count(self) -> int:
        return len(self._ids)

    @property
    def ids(self) -> np.ndarray:
        return self._ids.copy()

    def _pos(self, ids: IdsLike) -> np.ndarray:
        ids = np.asarray(ids, np.int64).reshape(-1)
        pos = np.searchsorted(self._ids, ids)
        ok = (pos < len(self._ids)) & (self._ids[np.minimum(pos, max(len(self._ids) - 1, 0))] == ids) \
            if len(self._ids) else np.zeros(len(ids), bool)
        if not ok.all():
            raise InvalidInputError(f"unknown gallery ids: {ids[~ok][:5].tolist()}")
        return pos

    def vectors(self, ids: IdsLike) -> np.ndarray:
        return self._vecs[self._pos(ids)]

    def fields(self, ids: IdsLike) -> dict[str, np.ndarray]:
        pos = self._pos(ids)
        return {n: a[pos] for n, a in self._fields.items()}

    def rows(self, ids: Sequence[int]) -> dict[int, dict[str, Any]]:
        return {int(i): self._rows[int(i)] for i in np.asarray(ids, np.int64).reshape(-1) if int(i) in self._rows}

    def knn(self, queries: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return knn_rows(queries, rows, k)

    def track_members(self, tracks: Sequence[str]) -> dict[str, np.ndarray]:
        track = self._fields["track"]
        return {str(t): self._ids[track == str(t)] for t in tracks if t is not None}

    def state(self, hook: str) -> Any:
        if hook in self._overrides:
            return self._overrides[hook]
        return self._loaded.get(hook)

    def search(self, queries: np.ndarray, k: int, where: Any = None, params: Any = None
               ) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-``k`` (similarities, ids); ``where`` is a ``SearchFilter`` (anything with ``mask``);
        ``params`` are ignored (always exact)."""
        q = np.asarray(queries, np.float32).reshape(-1, self.dim)
        ids, vecs = self._ids, self._vecs
        if where is not None:
            keep = where.mask(ids, self._fields)
            ids, vecs = ids[keep], vecs[keep]
        k = int(k)
        out_s = np.full((len(q), k), -np.inf, np.float32)
        out_i = np.full((len(q), k), -1, np.int64)
        for r in range(len(q)):  # one query at a time: the same rounding whatever the batch
            s = (vecs @ q[r])[None]
            out_s[r:r + 1], out_i[r:r + 1] = top_k_rows(s, ids[None], k)
        return out_s, out_i

    # -- changes -------------------------------------------------------------------------------
    def add(self, ids: IdsLike, vectors: np.ndarray, fields: Optional[Mapping[str, Sequence[Any]]] = None,
            rows: Optional[Sequence[dict[str, Any]]] = None) -> None:
        """Add rows in one commit (ids must be new); hooks see the gallery before the change."""
        ids = np.asarray(ids, np.int64)
        vecs = np.asarray(vectors, np.float32).reshape(len(ids), self.dim)
        if len(np.intersect1d(ids, self._ids)) or len(np.unique(ids)) != len(ids):
            raise InvalidInputError("MemoryGallery.add: ids must be new and distinct")
        f = {}
        for n in FIELD_NAMES:
            given = None if fields is None else fields.get(n)
            if n == "timestamp":
                f[n] = np.full(len(ids), np.nan) if given is None else np.asarray(given, np.float64)
            else:
                f[n] = np.array([None] * len(ids) if given is None else
                                [None if v is None else str(v) for v in given], dtype=object)
        self._commit(ids, vecs, f, np.zeros(0, np.int64))
        order = np.argsort(np.concatenate([self._ids, ids]), kind="stable")
        self._ids = np.concatenate([self._ids, ids])[order]
        self._vecs = np.concatenate([self._vecs, vecs])[order]
        for n in FIELD_NAMES:
            self._fields[n] = np.concatenate([self._fields[n], f[n]])[order]
        for t, i in enumerate(ids):
            row = dict(rows[t]) if rows is not None else {}
            row.setdefault("id", int(i))
            for n in FIELD_NAMES:
                row.setdefault(n, f[n][t] if not (n == "timestamp" and np.isnan(f[n][t])) else None)
            row.setdefault("extra", {})
            self._rows[int(i)] = row
        self._load_hooks()

    def observe(self, vectors: np.ndarray, cameras: Sequence[Optional[str]]) -> None:
        """Context crops for the hooks (``IndexHook.observe``), as ``IndexStore.observe`` commits them."""
        vecs = np.asarray(vectors, np.float32).reshape(-1, self.dim)
        fields = fields_of([{"camera": c} for c in cameras])
        gen = self.generation + 1
        pending = {}
        for n, h in self.hooks.items():
            st = h.observe(self.folder, gen, self.states[n], self, vecs, fields)
            pending[n] = self.states[n] if st is None else st
        self._pending = pending
        self._load_hooks()

    def remove(self, ids: IdsLike) -> None:
        """Remove rows in one commit."""
        ids = np.unique(np.asarray(ids, np.int64))
        self._pos(ids)
        self._commit(np.zeros(0, np.int64), np.zeros((0, self.dim), np.float32),
                     {n: np.zeros(0, object) for n in FIELD_NAMES}, ids)
        keep = ~np.isin(self._ids, ids)
        self._ids, self._vecs = self._ids[keep], self._vecs[keep]
        for n in FIELD_NAMES:
            self._fields[n] = self._fields[n][keep]
        for i in ids:
            self._rows.pop(int(i), None)
        self._load_hooks()

    def compact(self) -> None:
        """Fold every hook's files (as ``reid-engine compact`` does)."""
        self.generation += 1
        self.states = {n: h.compact(self.folder, self.generation, self.states[n], self) for n, h in self.hooks.items()}
        self._load_hooks(bump=False)

    def override_state(self, hook: str, state: Any) -> None:
        """Serve ``state`` for ``hook`` instead of the loaded one (tools: statistics from a larger index)."""
        self._overrides[hook] = state

    def _commit(self, ids: np.ndarray, vecs: np.ndarray, fields: dict[str, np.ndarray], removed: np.ndarray) -> None:
        gen = self.generation + 1
        self._pending = {n: h.prepare(self.folder, gen, self.states[n], self, ids, vecs, fields, removed)
                         for n, h in self.hooks.items()}

    def _load_hooks(self, bump: bool = True) -> None:
        if bump:
            self.generation += 1
            self.states = self._pending
        self._loaded = {n: h.load(self.folder, self.states[n]) for n, h in self.hooks.items()}

    # -- the two-stage query path ---------------------------------------------------------------------
    def query(self, pipeline: Pipeline, queries: np.ndarray, k: int, *, where: Any = None,
              query_cameras: Optional[Sequence[Optional[str]]] = None, same_person: bool = False,
              query_attributes: Optional[np.ndarray] = None, options: Optional[dict[str, Any]] = None
              ) -> Candidates:
        """What the engine does: cosine top ``max(k, pool)`` (filtered) with ``pool =
        pipeline.pool_size(min(k, RERANK_K))``, the pipeline on the pool, then the rest in cosine order."""
        q = np.asarray(queries, np.float32).reshape(-1, self.dim)
        k = int(k)
        pool_n = pipeline.pool_size(min(k, RERANK_K))
        s, i = self.search(q, max(k, pool_n), where)
        ctx = RerankContext(gallery=self, k=int(k),
                            query_cameras=list(query_cameras) if query_cameras is not None else [None] * len(q),
                            query_tracks=[None] * len(q), same_person=same_person,
                            query_attributes=query_attributes, where=where, options=dict(options or {}))
        head = pipeline.run(q, Candidates.sorted(i[:, :pool_n], s[:, :pool_n]), ctx)
        return head.then(i, s, k)
