"""An obviously-correct vector backend for tests: every commit rewrites one NumPy file, search is brute force.

It exists to check the store's commit protocol independently of the real
backends, and to check the conformance suite itself.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from reid_engine.errors import InvalidInputError
from reid_engine.index.backend import FIELDS, Changes, SearchFilter, SearchParams, VectorBackend, register_backend


@register_backend
class ReferenceBackend(VectorBackend):
    name = "reference"

    def __init__(self, folder: Path, dim: int, options: dict[str, Any]):
        super().__init__(folder, dim, options)
        self.ids = np.zeros(0, np.int64)
        self.vecs = np.zeros((0, dim), np.float32)
        self.fields: dict[str, np.ndarray] = {f: np.zeros(0, object) for f in FIELDS}
        self.state: dict[str, Any] = {}

    def empty_state(self) -> dict[str, Any]:
        return {"file": None}

    def _path(self, name: str) -> Path:
        return self.folder / name

    def load(self, state: dict[str, Any]) -> None:
        if state.get("file"):
            with np.load(self._path(state["file"]), allow_pickle=True) as z:
                self.ids, self.vecs = z["ids"], z["vecs"]
                self.fields = {f: z[f] for f in FIELDS}
        else:
            self.ids = np.zeros(0, np.int64)
            self.vecs = np.zeros((0, self.dim), np.float32)
            self.fields = {f: np.zeros(0, object) for f in FIELDS}
        self.state = dict(state)

    def prepare(self, generation: int, changes: Changes) -> dict[str, Any]:
        keep = ~np.isin(self.ids, changes.remove_ids)
        ids, vecs = self.ids[keep], self.vecs[keep]
        fields = {f: self.fields[f][keep] for f in FIELDS}
        if changes.add_vectors is not None and len(changes.add_ids):
            ids = np.concatenate([ids, changes.add_ids])
            vecs = np.concatenate([vecs, np.asarray(changes.add_vectors, np.float32)])
            fields = {f: np.concatenate([fields[f], np.asarray(changes.add_fields[f], object)]) for f in FIELDS}
        name = f"ref-{generation:06d}.npz"
        tmp = self._path(name + ".tmp")
        with open(tmp, "wb") as fh:
            np.savez(fh, ids=ids, vecs=vecs, **fields)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self._path(name))
        return {"file": name}

    def discard(self, state: dict[str, Any]) -> None:
        if state.get("file") and state["file"] != self.state.get("file"):
            self._path(state["file"]).unlink(missing_ok=True)

    def cleanup(self, state: dict[str, Any], grace_seconds: float = 60.0) -> None:
        now = time.time()
        for p in self.folder.glob("ref-*.npz*"):
            if p.name != state.get("file") and now - p.stat().st_mtime >= grace_seconds:
                p.unlink(missing_ok=True)

    @property
    def count(self) -> int:
        return len(self.ids)

    def search(
        self, queries: np.ndarray, k: int, where: Optional[SearchFilter] = None, params: Optional[SearchParams] = None
    ) -> tuple[np.ndarray, np.ndarray]:
        q = np.atleast_2d(np.asarray(queries, np.float32))
        ok = where.mask(self.ids, self.fields) if where is not None else np.ones(len(self.ids), bool)
        sims = np.full((len(q), k), -np.inf, np.float32)
        out = np.full((len(q), k), -1, np.int64)
        ids, vecs = self.ids[ok], self.vecs[ok]
        s = q @ vecs.T
        for r in range(len(q)):
            order = np.lexsort((ids, -s[r]))[:k]
            sims[r, : len(order)] = s[r, order]
            out[r, : len(order)] = ids[order]
        return sims, out

    def reconstruct(self, ids: Sequence[int]) -> np.ndarray:
        pos = {int(i): j for j, i in enumerate(self.ids)}
        try:
            return self.vecs[[pos[int(i)] for i in ids]].reshape(len(ids), self.dim)
        except KeyError as exc:
            raise InvalidInputError(f"no vector with id {exc.args[0]}") from None

    def contains(self, ids: Sequence[int]) -> np.ndarray:
        return np.isin(np.asarray(ids, np.int64), self.ids)

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "index_type": "Flat", "vectors": self.count}

    def live_ids(self) -> np.ndarray:
        return np.sort(self.ids)
