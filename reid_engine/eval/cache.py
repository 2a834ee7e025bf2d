"""On-disk embedding cache keyed by (image sha256, encoder name, weights sha256).

One SQLite file per (encoder name, weights sha256) in the cache folder, one
row per image content hash, so evaluating again with other re-ranking or
fusion settings does not re-encode anything. Images are keyed by their bytes,
not their path: moved or renamed files still hit the cache.
"""
from __future__ import annotations

import logging
import os
import re
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import numpy as np

from ..assets import expand_user
from ..errors import ImageReadError, InvalidInputError
from ..images import file_sha256

log = logging.getLogger(__name__)

PathLike = Union[str, Path]
ENV_CACHE_DIR = "REID_ENGINE_CACHE"


def default_cache_dir() -> Path:
    """``$REID_ENGINE_CACHE`` if set (a blank value counts as unset), else ``~/.cache/reid-engine/embeddings``."""
    env = os.environ.get(ENV_CACHE_DIR, "")
    if env.strip():
        return expand_user(env)
    return Path.home() / ".cache" / "reid-engine" / "embeddings"


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text)[:80] or "encoder"


class EmbeddingCache:
    """Embeddings of one encoder (name + weights) stored by image content hash."""

    def __init__(self, cache_dir: PathLike, encoder_name: str, weights_sha256: str) -> None:
        if not re.fullmatch(r"[0-9a-f]{64}", weights_sha256 or ""):
            raise InvalidInputError(f"weights sha256 {weights_sha256!r}: expected 64 lowercase hex digits")
        self.encoder_name = encoder_name
        self.weights_sha256 = weights_sha256
        self.folder = expand_user(cache_dir)
        self.path = self.folder / f"{_safe(encoder_name)}-{weights_sha256[:16]}.sqlite"
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            self._create_tables(encoder_name, weights_sha256)
        except (OSError, sqlite3.Error) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise InvalidInputError(
                f"{self.path}: cannot use the embedding cache ({reason}); pass a writable --cache-dir or --no-cache"
            ) from None

    def _create_tables(self, encoder_name: str, weights_sha256: str) -> None:
        """Create the cache's tables (once) and check that the file belongs to this encoder."""
        with closing(self._connect()) as con, con:
            con.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            con.execute(
                "CREATE TABLE IF NOT EXISTS embeddings "
                "(sha256 TEXT PRIMARY KEY, dim INTEGER NOT NULL, vec BLOB NOT NULL)"
            )
            stored = dict(con.execute("SELECT key, value FROM meta").fetchall())
            want = {"encoder": encoder_name, "weights_sha256": weights_sha256}
            for key, value in want.items():
                if key not in stored:
                    con.execute("INSERT INTO meta (key, value) VALUES (?, ?)", (key, value))
                elif stored[key] != value:  # two encoders whose names collide after sanitising
                    raise InvalidInputError(
                        f"{self.path}: cache file belongs to {key} {stored[key]!r}, not {value!r}"
                    )

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, timeout=30)

    def __len__(self) -> int:
        with closing(self._connect()) as con:
            return int(con.execute("SELECT COUNT(*) FROM embeddings").fetchone()[0])

    def _damaged(self, exc: sqlite3.Error) -> InvalidInputError:
        return InvalidInputError(
            f"{self.path}: the embedding cache is damaged ({exc}); delete the file (it is rebuilt) or pass --no-cache"
        )

    def get(self, hashes: Sequence[str]) -> dict[str, np.ndarray]:
        """Stored float32 vectors for the hashes that are in the cache."""
        try:
            return self._get(hashes)
        except sqlite3.DatabaseError as exc:
            raise self._damaged(exc) from None

    def _get(self, hashes: Sequence[str]) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        unique = list(dict.fromkeys(hashes))
        with closing(self._connect()) as con:
            for i in range(0, len(unique), 500):
                chunk = unique[i : i + 500]
                marks = ",".join("?" * len(chunk))
                for sha, dim, blob in con.execute(
                    f"SELECT sha256, dim, vec FROM embeddings WHERE sha256 IN ({marks})", chunk
                ):
                    if len(blob) != 4 * dim:
                        log.warning("%s: entry %s is damaged; it will be recomputed", self.path, sha[:12])
                        continue
                    out[sha] = np.frombuffer(blob, dtype="<f4").astype(np.float32)
        return out

    def put(self, hashes: Sequence[str], vectors: np.ndarray) -> None:
        """Store one float32 vector per hash (existing entries are replaced)."""
        vecs = np.asarray(vectors, dtype="<f4")
        if vecs.ndim != 2 or len(vecs) != len(hashes):
            raise InvalidInputError(f"{len(hashes)} hashes but vectors of shape {vecs.shape}")
        try:
            self._put(hashes, vecs)
        except sqlite3.DatabaseError as exc:
            raise self._damaged(exc) from None

    def _put(self, hashes: Sequence[str], vecs: np.ndarray) -> None:
        with closing(self._connect()) as con, con:
            con.executemany(
                "INSERT OR REPLACE INTO embeddings (sha256, dim, vec) VALUES (?, ?, ?)",
                [(h, int(v.size), np.ascontiguousarray(v).tobytes()) for h, v in zip(hashes, vecs)],
            )


def hash_files(paths: Sequence[PathLike]) -> list[str]:
    """sha256 of each file's bytes, in order; ImageReadError names a file that cannot be read."""
    hashes = []
    for p in paths:
        try:
            hashes.append(file_sha256(p))
        except OSError as exc:
            raise ImageReadError(f"{p}: cannot read ({exc.strerror or exc})") from None
    return hashes


def cached_embeddings(
    paths: Sequence[PathLike],
    encode: Callable[[list[Path]], np.ndarray],
    cache: Optional[EmbeddingCache],
    hashes: Optional[Sequence[str]] = None,
) -> tuple[np.ndarray, int]:
    """(N, D) float32 embeddings of ``paths``, encoding only those not in ``cache``.

    Returns the embeddings (input order) and how many images were encoded.
    """
    files = [Path(p) for p in paths]
    if cache is None:
        feats = np.asarray(encode(files), dtype=np.float32)
        return feats, len(files)
    keys = list(hashes) if hashes is not None else hash_files(files)
    if len(keys) != len(files):
        raise InvalidInputError(f"{len(files)} files but {len(keys)} hashes")
    found = cache.get(keys)
    todo = [i for i, k in enumerate(keys) if k not in found]
    todo_unique: dict[str, int] = {}
    for i in todo:
        todo_unique.setdefault(keys[i], i)  # identical files are encoded once
    if todo_unique:
        new = np.asarray(encode([files[i] for i in todo_unique.values()]), dtype=np.float32)
        if new.ndim != 2 or len(new) != len(todo_unique):
            raise InvalidInputError(f"encoder returned shape {new.shape} for {len(todo_unique)} images")
        cache.put(list(todo_unique), new)
        found.update(zip(todo_unique, new))
    dims = {v.shape[0] for v in found.values()}
    if len(dims) > 1:
        raise InvalidInputError(f"{cache.path}: cached vectors have different sizes {sorted(dims)}")
    log.info("embeddings: %d from cache, %d encoded", len(files) - len(todo), len(todo_unique))
    feats = np.stack([found[k] for k in keys]) if keys else np.zeros((0, 0), np.float32)
    return feats.astype(np.float32, copy=False), len(todo_unique)
