"""Exact inner-product k-nearest-neighbour search in blocks.

Every re-ranking method starts from top-k neighbour lists. They are computed
here block by block (BLAS for the similarities, FAISS heaps for the top-k
selection), so memory stays O(block_rows * block_cols + n * k) whatever the
sizes, and the input arrays are never copied into an index.
"""
from __future__ import annotations

import logging

import faiss
import numpy as np

from ..errors import InvalidInputError

log = logging.getLogger(__name__)

#: Rows of ``queries`` scored together (bounded so one block of similarities stays small).
QUERY_BLOCK = 1024
#: Base rows scored together; a (QUERY_BLOCK, BASE_BLOCK) float32 block is 256 MB at most.
BASE_BLOCK = 65536


def as_feature_matrix(feats: np.ndarray, name: str, dim: int | None = None) -> np.ndarray:
    """Validate a (N, D) feature matrix and return it as C-contiguous float32."""
    arr = np.asarray(feats)
    if arr.ndim != 2:
        raise InvalidInputError(f"{name} must be a 2-D array (N, D), got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.floating):
        raise InvalidInputError(f"{name} must hold floats, got dtype {arr.dtype}")
    if dim is not None and arr.shape[1] != dim:
        raise InvalidInputError(f"{name} has dimension {arr.shape[1]}, expected {dim}")
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    if arr.size and not np.isfinite(arr).all():
        raise InvalidInputError(f"{name} contains NaN or infinite values")
    return arr


def normalize_rows(feats: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (zero rows stay zero), float32."""
    feats = np.asarray(feats, dtype=np.float32)
    norms = np.linalg.norm(feats, axis=1, keepdims=True)
    return feats / np.maximum(norms, np.float32(1e-12))


def knn_search(
    queries: np.ndarray,
    base: np.ndarray,
    k: int,
    *,
    return_min: bool = False,
    query_block: int = QUERY_BLOCK,
    base_block: int = BASE_BLOCK,
) -> tuple[np.ndarray, ...]:
    """Top-``k`` inner-product neighbours of each query row among ``base`` rows.

    Returns ``(sims, idx)``: (n, k) float32 similarities in descending order and
    int64 row numbers into ``base``; with ``return_min`` also each query's
    smallest similarity over all of ``base`` (its farthest point), which costs
    nothing extra. ``k`` is clipped to ``len(base)``.
    """
    n, nb = len(queries), len(base)
    k = min(int(k), nb)
    sims = np.empty((n, k), np.float32)
    idx = np.empty((n, k), np.int64)
    mins = np.full(n, np.inf, np.float32)
    if n == 0 or k <= 0:
        out = (sims, idx)
        return out + (mins,) if return_min else out
    for q0 in range(0, n, query_block):
        q = queries[q0:q0 + query_block]
        nq = len(q)
        d_blk = np.empty((nq, k), np.float32)
        i_blk = np.empty((nq, k), np.int64)
        heap = faiss.float_minheap_array_t()  # a min-heap keeps the k largest values
        heap.k, heap.nh = k, nq
        heap.val, heap.ids = faiss.swig_ptr(d_blk), faiss.swig_ptr(i_blk)
        heap.heapify()
        for b0 in range(0, nb, base_block):
            s = np.ascontiguousarray(q @ base[b0:b0 + base_block].T, dtype=np.float32)
            heap.addn(s.shape[1], faiss.swig_ptr(s), b0, 0, nq)  # type: ignore[call-arg]  # the stub omits the optional j0, i0, ni
            if return_min:
                np.minimum(mins[q0:q0 + nq], s.min(axis=1), out=mins[q0:q0 + nq])
        heap.reorder()
        sims[q0:q0 + nq], idx[q0:q0 + nq] = d_blk, i_blk
    return (sims, idx, mins) if return_min else (sims, idx)


def row_dots(a: np.ndarray, b: np.ndarray, rows_a: np.ndarray, rows_b: np.ndarray,
             chunk: int = 8192) -> np.ndarray:
    """``a[rows_a[t]] . b[rows_b[t]]`` for every t, gathered in chunks, float32."""
    out = np.empty(len(rows_a), np.float32)
    for c0 in range(0, len(rows_a), chunk):
        ra, rb = rows_a[c0:c0 + chunk], rows_b[c0:c0 + chunk]
        out[c0:c0 + chunk] = np.einsum("ij,ij->i", a[ra], b[rb])
    return out
