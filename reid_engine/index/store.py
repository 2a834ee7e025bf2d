"""The on-disk index: FAISS vectors + SQL rows + manifest, kept in step.

Every change is one commit: the new vectors are written to a new
generation-numbered file, then the SQL transaction that changes the rows also
records that generation. The SQL commit is the single commit point, so a crash
anywhere leaves the previous generation (file and rows) intact, and stray newer
files are removed on the next open.
"""
from __future__ import annotations

import logging
import re
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import faiss
import numpy as np
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ..errors import IndexCorruptError, IndexNotFoundError, InvalidInputError
from . import db, neighbours, vectors
from .manifest import Manifest, read_manifest, write_manifest
from .neighbours import GalleryNeighbours

log = logging.getLogger(__name__)

_VEC_RE = re.compile(r"^(?:vectors-(\d+)\.faiss|nfc-(\d+)\.npz)(\.tmp)?$")
DEFAULT_DB_URL = "sqlite:///{index}/crops.db"
#: called inside an add's transaction with (connection, new ids, rows, features)
SqlHook = Callable[[Connection, list[int], Sequence[dict[str, Any]], np.ndarray], None]


def _after_vectors_written() -> None:
    """Hook between writing the vector file and the SQL commit (tests simulate crashes here)."""


class IndexStore:
    """One index folder: vectors, rows and manifest, always consistent with each other."""

    def __init__(self, folder: Path, manifest: Manifest, sql: sa.engine.Engine, index: faiss.Index, generation: int):
        self.folder = folder
        self.manifest = manifest
        self.sql = sql
        self.index = index
        self.generation = generation
        self._gpu_index: Optional[faiss.Index] = None
        self._neighbours: Optional[GalleryNeighbours] = None

    # -- opening ----------------------------------------------------------------------
    @staticmethod
    def resolve_db_url(folder: Path, template: str) -> str:
        return template.replace("{index}", str(folder.resolve()))

    def vectors_path(self, generation: int) -> Path:
        return self.folder / f"vectors-{generation:06d}.faiss"

    def neighbours_path(self, generation: int) -> Path:
        return self.folder / f"nfc-{generation:06d}.npz"

    @classmethod
    def create(
        cls,
        folder: Path,
        encoder_info: dict[str, Any],
        dim: int,
        factory: str = "Flat",
        db_url: Optional[str] = None,
        annotators: Sequence[str] = (),
        nfc: Optional[dict[str, Any]] = None,
    ) -> "IndexStore":
        """Make a new empty index folder.

        ``nfc`` ({"k1", "k2", "weight"}) keeps NFC-centralized gallery vectors up to date at index time.
        """
        folder = Path(folder)
        if (folder / "manifest.json").exists():
            raise InvalidInputError(f"{folder}: an index already exists here")
        index = vectors.create_index(dim, factory)  # validates the factory before touching disk
        folder.mkdir(parents=True, exist_ok=True)
        now = time.time()
        manifest = Manifest(
            encoder=encoder_info,
            dim=int(dim),
            factory=factory,
            db_url=db_url or DEFAULT_DB_URL,
            annotators=list(annotators),
            nfc=dict(nfc) if nfc else None,
            created_at=now,
            updated_at=now,
        )
        sql = db.connect(cls.resolve_db_url(folder, manifest.db_url))
        with sql.begin() as conn:
            if db.count_rows(conn) or db.get_meta(conn, "generation") is not None:
                raise InvalidInputError(f"{manifest.db_url}: the database already holds an index")
            store = cls(folder, manifest, sql, index, 0)
            vectors.write_atomic(index, store.vectors_path(0))
            if manifest.nfc:
                store._neighbours = neighbours.build(
                    np.zeros(0, np.int64), np.zeros((0, dim), np.float32), **manifest.nfc
                )
                neighbours.save(store.neighbours_path(0), store._neighbours)
            db.set_meta(conn, "generation", "0")
            db.set_meta(conn, "dim", str(dim))
        store._write_manifest()
        return store

    @classmethod
    def open(cls, folder: Path) -> "IndexStore":
        """Open an index folder, checking that vectors, rows and manifest agree."""
        folder = Path(folder)
        if not folder.is_dir():
            raise IndexNotFoundError(f"{folder}: no such index folder")
        manifest = read_manifest(folder)
        sql = db.connect(cls.resolve_db_url(folder, manifest.db_url))
        with sql.connect() as conn:
            gen_text = db.get_meta(conn, "generation")
            if gen_text is None:
                raise IndexCorruptError(f"{folder}: the database has no index generation (wrong database URL?)")
            generation = int(gen_text)
            ids_sql = np.asarray(db.all_ids(conn), dtype=np.int64)
        store = cls(folder, manifest, sql, faiss.IndexIDMap2(faiss.IndexFlatIP(1)), generation)
        path = store.vectors_path(generation)
        if not path.is_file():
            raise IndexCorruptError(f"{folder}: vector file {path.name} for generation {generation} is missing")
        store.index = vectors.read(path)
        if manifest.nfc and not store.neighbours_path(generation).is_file():
            raise IndexCorruptError(f"{folder}: neighbour file {store.neighbours_path(generation).name} is missing")
        store._check(ids_sql)
        store._remove_stray_files()
        if manifest.generation != generation:  # crashed after the commit, before the manifest
            store._write_manifest()
        return store

    def _check(self, ids_sql: np.ndarray) -> None:
        if self.index.d != self.manifest.dim:
            raise IndexCorruptError(
                f"{self.folder}: vectors have dimension {self.index.d}, the manifest says {self.manifest.dim}"
            )
        ids_vec = np.sort(vectors.index_ids(self.index))
        if len(ids_vec) != len(ids_sql) or not np.array_equal(ids_vec, ids_sql):
            only_vec = np.setdiff1d(ids_vec, ids_sql)
            only_sql = np.setdiff1d(ids_sql, ids_vec)
            raise IndexCorruptError(
                f"{self.folder}: vectors and rows disagree: {len(ids_vec)} vectors, {len(ids_sql)} rows; "
                f"ids only in vectors {only_vec[:5].tolist()}{'...' if len(only_vec) > 5 else ''}, "
                f"ids only in rows {only_sql[:5].tolist()}{'...' if len(only_sql) > 5 else ''}"
            )

    def _remove_stray_files(self) -> None:
        for p in self.folder.iterdir():
            m = _VEC_RE.match(p.name)
            if m and (m.group(3) or int(m.group(1) or m.group(2)) != self.generation):
                log.info("removing stray file %s", p.name)
                p.unlink(missing_ok=True)

    def _write_manifest(self) -> None:
        with self.sql.connect() as conn:
            self.manifest.counts = {
                "crops": db.count_rows(conn),
                "cameras": len(db.distinct_values(conn, "camera")),
                "tracks": len(db.distinct_values(conn, "track")),
                "sources": len(db.distinct_values(conn, "source")),
            }
        self.manifest.generation = self.generation
        self.manifest.updated_at = time.time()
        write_manifest(self.folder, self.manifest)

    # -- changes ----------------------------------------------------------------------
    @property
    def neighbours(self) -> Optional[GalleryNeighbours]:
        """The committed gallery NFC data (None when the index keeps none), loaded on first use."""
        if self.manifest.nfc and self._neighbours is None:
            nb = neighbours.load(self.neighbours_path(self.generation))
            if len(nb.ids) != self.count or not np.array_equal(nb.ids, self.gallery()[0]):
                raise IndexCorruptError(f"{self.folder}: neighbour file and vectors hold different crops")
            self._neighbours = nb
        return self._neighbours

    def gallery(self) -> tuple[np.ndarray, np.ndarray]:
        """(ids ascending, vectors) of the whole gallery; a zero-copy view for Flat indexes."""
        ids = vectors.index_ids(self.index)
        inner = faiss.downcast_index(self.index.index)
        if isinstance(inner, faiss.IndexFlat) and (len(ids) < 2 or np.all(ids[1:] > ids[:-1])):
            n, d = inner.ntotal, inner.d
            if n == 0:
                return ids, np.zeros((0, d), np.float32)
            flat = faiss.rev_swig_ptr(inner.get_xb(), n * d)
            return ids, np.asarray(flat).reshape(n, d)
        order = np.sort(ids)
        return order, self.vectors(order)

    def _next_neighbours(self, added_ids: Optional[list[int]]) -> Optional[GalleryNeighbours]:
        """Gallery NFC data after a change: extended for appended rows, rebuilt otherwise."""
        if not self.manifest.nfc:
            return None
        prev = self.neighbours
        ids, feats = self.gallery()
        n_new = len(added_ids or [])
        if prev is not None and added_ids is not None and np.array_equal(ids[: len(ids) - n_new], prev.ids):
            return neighbours.extend(prev, feats[: len(ids) - n_new], ids[len(ids) - n_new :], feats[len(ids) - n_new :])
        log.info("rebuilding gallery neighbour data for %d crops", len(ids))
        return neighbours.build(ids, feats, **self.manifest.nfc)

    def _commit(
        self,
        sql_work: Callable[[Connection], None],
        mutate: Callable[[faiss.Index], None],
        added_ids: Optional[list[int]] = None,
    ) -> None:
        """Apply one change to rows and vectors (and neighbour data) as a single atomic commit."""
        new_gen = self.generation + 1
        path = self.vectors_path(new_gen)
        new_nb: Optional[GalleryNeighbours] = None
        _ = self.neighbours  # load the committed neighbour data before the vectors change
        try:
            with self.sql.begin() as conn:
                current = db.get_meta(conn, "generation")
                if current != str(self.generation):
                    raise IndexCorruptError(
                        f"{self.folder}: changed by another writer (generation {current}, expected {self.generation})"
                    )
                sql_work(conn)
                mutate(self.index)
                vectors.write_atomic(self.index, path)
                new_nb = self._next_neighbours(added_ids)
                if new_nb is not None:
                    neighbours.save(self.neighbours_path(new_gen), new_nb)
                _after_vectors_written()
                db.set_meta(conn, "generation", str(new_gen))
        except BaseException:
            # the in-memory vectors may hold the failed change: go back to the committed file
            self.index = vectors.read(self.vectors_path(self.generation))
            raise
        old = (self.vectors_path(self.generation), self.neighbours_path(self.generation))
        self.generation = new_gen
        self._gpu_index = None
        self._neighbours = new_nb
        for p in old:
            p.unlink(missing_ok=True)
        self._write_manifest()

    def add(
        self,
        feats: np.ndarray,
        rows: Sequence[dict[str, Any]],
        sql_hook: Optional[SqlHook] = None,
    ) -> list[int]:
        """Add L2-normalised vectors with their rows; returns the new ids.

        ``sql_hook(conn, ids, rows, feats)`` runs inside the same transaction, so
        tables kept beside the crops (tracks, ingest progress) commit with them.
        """
        feats = np.ascontiguousarray(feats, dtype=np.float32)
        if feats.ndim != 2 or feats.shape[1] != self.manifest.dim:
            raise InvalidInputError(f"features of shape {feats.shape}: expected (N, {self.manifest.dim})")
        if len(rows) != len(feats):
            raise InvalidInputError(f"{len(feats)} vectors but {len(rows)} metadata rows")
        if not len(rows):
            return []
        ids: list[int] = []

        def sql_work(conn: Connection) -> None:
            start = db.next_id(conn)
            ids.extend(range(start, start + len(rows)))
            db.insert_rows(conn, [{**r, "id": i} for r, i in zip(rows, ids)])
            if sql_hook is not None:
                sql_hook(conn, ids, rows, feats)

        self._commit(sql_work, lambda index: vectors.add_vectors(index, feats, ids), added_ids=ids)
        return ids

    def remove(self, where: Optional[sa.ColumnElement[bool]]) -> int:
        """Remove the crops matching a filter clause; returns how many went."""
        if where is None:
            raise InvalidInputError("remove needs a filter (ids, cameras or sources)")
        with self.sql.connect() as conn:
            ids = db.select_ids(conn, where)
        if not ids:
            return 0
        self._commit(lambda conn: db.delete_ids(conn, ids), lambda index: vectors.remove_vectors(index, ids))
        return len(ids)

    # -- reading ----------------------------------------------------------------------
    @property
    def count(self) -> int:
        return int(self.index.ntotal)

    def known_hashes(self, hashes: Sequence[str]) -> set[str]:
        with self.sql.connect() as conn:
            return db.known_sha256(conn, hashes)

    def ids_where(self, where: Optional[sa.ColumnElement[bool]]) -> np.ndarray:
        with self.sql.connect() as conn:
            return np.asarray(db.select_ids(conn, where), dtype=np.int64)

    def rows(self, ids: Sequence[int]) -> dict[int, dict[str, Any]]:
        with self.sql.connect() as conn:
            return db.fetch_rows(conn, ids)

    def rows_by_hash(self, hashes: Sequence[str]) -> dict[str, dict[str, Any]]:
        with self.sql.connect() as conn:
            out: dict[str, dict[str, Any]] = {}
            for i in range(0, len(hashes), 500):
                stmt = sa.select(db.crops).where(db.crops.c.sha256.in_(list(hashes[i : i + 500])))
                for row in conn.execute(stmt).mappings():
                    out[row["sha256"]] = dict(row)
            return out

    def vectors(self, ids: Sequence[int]) -> np.ndarray:
        return vectors.reconstruct(self.index, ids)

    def search(
        self, queries: np.ndarray, k: int, allowed_ids: Optional[np.ndarray] = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (similarities, ids); filtered searches run on the CPU index with an id selector."""
        k = max(1, min(int(k), max(1, self.count)))
        if allowed_ids is None and vectors.gpu_count() > 0:
            if self._gpu_index is None:
                self._gpu_index = vectors.to_gpu(self.index)
            return vectors.search(self._gpu_index, queries, k)
        return vectors.search(self.index, queries, k, allowed_ids)

    def stats(self) -> dict[str, Any]:
        with self.sql.connect() as conn:
            cams = conn.execute(
                sa.select(db.crops.c.camera, sa.func.count()).group_by(db.crops.c.camera).order_by(db.crops.c.camera)
            ).all()
            tmin, tmax = conn.execute(
                sa.select(sa.func.min(db.crops.c.timestamp), sa.func.max(db.crops.c.timestamp))
            ).one()
            n_pids = len(db.distinct_values(conn, "pid"))
        size = sum(p.stat().st_size for p in self.folder.iterdir() if p.is_file())
        return {
            "path": str(self.folder),
            "crops": self.count,
            "tracks": self.manifest.counts.get("tracks", 0),
            "sources": self.manifest.counts.get("sources", 0),
            "identities": n_pids,
            "cameras": {("" if c is None else str(c)): int(n) for c, n in cams},
            "time_range": [tmin, tmax],
            "encoder": self.manifest.encoder.get("name"),
            "runtime": self.manifest.encoder.get("runtime"),
            "weights_sha256": self.manifest.encoder.get("weights_sha256"),
            "dim": self.manifest.dim,
            "factory": self.manifest.factory,
            "db_url": self.manifest.db_url,
            "generation": self.generation,
            "bytes_on_disk": size,
        }

    def close(self) -> None:
        self.sql.dispose()
