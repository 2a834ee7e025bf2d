"""Per-row top-k of score matrices, exact when scores tie: the best by descending score, ties by ascending id.

Used to merge the candidates of several segments (``faiss_backend``) and to keep the neighbour lists of the
re-ranking hooks; both promise the smallest ids among tied scores, so only columns that cannot reach a row's
top ``k`` are dropped before sorting (never an arbitrary subset of the ties).
"""
from __future__ import annotations

from typing import Optional

import numpy as np


def top_k_rows(scores: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the ``k`` best (scores, ids) by descending score, ties by ascending id; -1 ids are padding."""
    scores = np.where(ids >= 0, scores, -np.inf).astype(np.float32)
    ids = np.broadcast_to(np.asarray(ids, np.int64), scores.shape)
    # only the columns that can be in the top k: sorting wide rows is slow. A sampled bound keeps a few times k
    # columns of a wide row; a second pass over those, with the exact k-th, leaves about k (ties included)
    for _ in range(2):
        if not (k >= 1 and scores.shape[1] > 2 * k + 16):
            break
        cols = _columns_at_or_above_kth(scores, k)
        if cols is None:
            break
        keep = np.maximum(cols, 0)
        scores = np.where(cols >= 0, np.take_along_axis(scores, keep, 1), -np.inf)
        ids = np.where(cols >= 0, np.take_along_axis(ids, keep, 1), -1)
    big = np.where(ids >= 0, ids, np.iinfo(np.int64).max)
    order = np.lexsort((big, -scores), axis=-1)[:, :k]
    s = np.take_along_axis(scores, order, 1)
    i = np.take_along_axis(ids, order, 1)
    i = np.where(np.isfinite(s), i, -1)
    if s.shape[1] < k:  # pad to k columns
        pad = k - s.shape[1]
        s = np.concatenate([s, np.full((len(s), pad), -np.inf, np.float32)], 1)
        i = np.concatenate([i, np.full((len(i), pad), -1, np.int64)], 1)
    return s, i.astype(np.int64)


def _columns_at_or_above_kth(s: np.ndarray, k: int, sample: int = 512) -> Optional[np.ndarray]:
    """Per row of a score matrix, every column scoring at least a lower bound of the row's k-th best score
    (ties included, -1 padded), so the row's top ``k`` is the top ``k`` of those columns; None when that
    keeps most of the columns. On wide rows the bound is the k-th best of the first ``sample`` columns
    (partitioning a sample is much cheaper than partitioning the row), else the row's own k-th best."""
    n, m = s.shape
    sample = max(sample, 2 * k)
    head = s[:, :sample] if m >= 4 * sample else s
    bound = np.partition(head, head.shape[1] - k, axis=1)[:, head.shape[1] - k]
    r, c = np.nonzero(s >= bound[:, None])
    count = np.bincount(r, minlength=n)
    width = int(count.max()) if n else 0
    if width > m // 2:
        return None
    rank = np.arange(len(r)) - (np.cumsum(count) - count)[r]
    cols = np.full((n, width), -1, np.int64)
    cols[r, rank] = c
    return cols


def knn_rows(queries: np.ndarray, rows: np.ndarray, k: int, block: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Each query's ``k`` rows with the largest inner product: (similarities, row numbers), best first, the lower
    row first among ties, -inf / -1 where there are fewer rows (NumPy's matrix product, ``block`` queries at a
    time)."""
    q = np.asarray(queries, np.float32)
    x = np.asarray(rows, np.float32)
    sims = np.full((len(q), k), -np.inf, np.float32)
    found = np.full((len(q), k), -1, np.int64)
    numbers = np.arange(len(x), dtype=np.int64)
    for i0 in range(0, len(q), block):
        s = q[i0:i0 + block] @ x.T
        sims[i0:i0 + block], found[i0:i0 + block] = top_k_rows(s, np.broadcast_to(numbers, s.shape), k)
    return sims, found
