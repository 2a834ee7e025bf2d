"""FAISS vectors: an IndexIDMap2 over an index-factory string, inner product on L2-normalised rows."""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Optional, Sequence

import faiss
import numpy as np

from ..errors import IndexCorruptError, InvalidInputError, UnsupportedOperationError

log = logging.getLogger(__name__)


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero), as contiguous float32."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    return x / norms


def create_index(dim: int, factory: str = "Flat") -> faiss.Index:
    """A new empty IndexIDMap2 built from a factory string (inner-product metric)."""
    if dim <= 0:
        raise InvalidInputError(f"dimension {dim}: expected a positive integer")
    try:
        inner = faiss.index_factory(int(dim), factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as exc:
        raise InvalidInputError(f"FAISS factory string {factory!r} is not valid ({str(exc).splitlines()[0]})") from None
    if isinstance(inner, (faiss.IndexIDMap, faiss.IndexIDMap2)):
        raise InvalidInputError(f"factory {factory!r}: leave out IDMap, reid-engine adds IDMap2 itself")
    return faiss.IndexIDMap2(inner)


def index_ids(index: faiss.Index) -> np.ndarray:
    """External ids held by an IDMap index, in storage order."""
    return faiss.vector_to_array(index.id_map).astype(np.int64)


def add_vectors(index: faiss.Index, vectors: np.ndarray, ids: Sequence[int]) -> None:
    """Add rows with explicit ids, training the inner index first if it needs it."""
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    ids_arr = np.ascontiguousarray(np.asarray(ids, dtype=np.int64))
    if x.ndim != 2 or x.shape[1] != index.d:
        raise InvalidInputError(f"vectors of shape {x.shape}: expected (N, {index.d})")
    if not index.is_trained:
        try:
            index.train(x)
        except RuntimeError as exc:
            raise InvalidInputError(
                f"cannot train the index on {len(x)} vectors ({str(exc).splitlines()[0]}); "
                "add more crops in the first batch or use the 'Flat' factory"
            ) from None
    index.add_with_ids(x, ids_arr)


def remove_vectors(index: faiss.Index, ids: Sequence[int]) -> int:
    if len(ids) == 0:
        return 0
    try:
        return int(index.remove_ids(np.asarray(ids, dtype=np.int64)))
    except RuntimeError as exc:
        raise UnsupportedOperationError(
            f"this FAISS index type cannot remove vectors ({str(exc).splitlines()[0]}); rebuild the index instead"
        ) from None


def reconstruct(index: faiss.Index, ids: Sequence[int]) -> np.ndarray:
    """Stored vectors for the given external ids (exact for Flat, approximate for compressed types)."""
    ids_arr = np.asarray(ids, dtype=np.int64)
    if ids_arr.size == 0:
        return np.zeros((0, index.d), np.float32)
    try:
        return index.reconstruct_batch(ids_arr)
    except RuntimeError:
        inner = faiss.downcast_index(index.index)
        if hasattr(inner, "make_direct_map"):
            inner.make_direct_map()
            return index.reconstruct_batch(ids_arr)
        raise


def write_atomic(index: faiss.Index, path: Path) -> None:
    """Write the index to ``path`` through a temporary file and a rename."""
    tmp = path.with_name(path.name + ".tmp")
    faiss.write_index(index, str(tmp))
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read(path: Path) -> faiss.Index:
    try:
        return faiss.read_index(str(path))
    except RuntimeError as exc:
        raise IndexCorruptError(f"{path}: cannot read the FAISS index ({str(exc).splitlines()[0]})") from None




def gpu_count() -> int:
    try:
        return int(faiss.get_num_gpus())
    except AttributeError:
        return 0


def search(
    index: faiss.Index,
    queries: np.ndarray,
    k: int,
    allowed_ids: Optional[np.ndarray] = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k inner products and ids; ``allowed_ids`` restricts the search inside FAISS.

    Missing results (fewer than k allowed rows) come back as id -1.
    """
    q = np.ascontiguousarray(queries, dtype=np.float32)
    if allowed_ids is None:
        return index.search(q, int(k))
    sel = faiss.IDSelectorBatch(np.ascontiguousarray(allowed_ids, dtype=np.int64))
    return index.search(q, int(k), params=faiss.SearchParameters(sel=sel))


def gpu_count() -> int:
    """How many GPUs FAISS can use (0 with faiss-cpu)."""
    try:
        return int(faiss.get_num_gpus())
    except AttributeError:
        return 0


def to_gpu(index: faiss.Index) -> faiss.Index:
    """A copy of the index on every visible GPU."""
    log.info("copying %d vectors to %d GPU(s)", index.ntotal, gpu_count())
    return faiss.index_cpu_to_all_gpus(index)
