"""Per-row top-k of score matrices, exact when scores tie: the best by descending score, ties by ascending id.

Used to merge the candidates of several segments (``faiss_backend``) and to keep the neighbour lists of the
re-ranking hooks; both promise the smallest ids among tied scores, so only columns that cannot reach a row's
top ``k`` are dropped before sorting (never an arbitrary subset of the ties).
"""
from __future__ import annotations

from typing import Callable, Optional

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


def copies(x: np.ndarray) -> Optional[np.ndarray]:
    """For each row of ``x``, the first row it is a byte-for-byte copy of (itself when none); None when no row
    is a copy of another (the usual case). Rows are compared whole only where their first 8 bytes are equal."""
    x = np.asarray(x)
    n = len(x)
    if n < 2 or x.ndim != 2 or x.shape[1] == 0:
        return None
    rows = np.ascontiguousarray(x.reshape(n, -1))
    head: np.ndarray
    if rows.strides[0] >= 8:
        head = np.ascontiguousarray(rows.view(np.uint8)[:, :8]).view(np.uint64)[:, 0]
    else:  # rows of fewer than 8 bytes: compare them whole
        head = np.unique(rows.view(np.dtype((np.void, rows.strides[0]))).ravel(), return_inverse=True)[1].ravel()
    order = np.argsort(head, kind="stable")
    same = head[order][1:] == head[order][:-1]
    if not same.any():
        return None
    first = np.arange(n)
    # runs of equal heads (in row order inside each run): each row is matched against the earlier rows of its run
    starts = np.flatnonzero(np.concatenate([[True], ~same]))
    ends = np.concatenate([starts[1:], [n]])
    for a, b in zip(starts.tolist(), ends.tolist()):
        if b - a < 2:
            continue
        run = order[a:b]
        whole = rows[run].view(np.dtype((np.void, rows.strides[0]))).ravel()
        _, at, group = np.unique(whole, return_index=True, return_inverse=True)
        first[run] = run[at[group.ravel()]]
    return None if np.array_equal(first, np.arange(n)) else first


def search_with_copies(search: Callable[[np.ndarray, np.ndarray, int], tuple[np.ndarray, np.ndarray]],
                       queries: np.ndarray, rows: np.ndarray, k: int, first: Optional[np.ndarray]
                       ) -> tuple[np.ndarray, np.ndarray]:
    """``search(queries, rows, k)`` (best first; row numbers, -1 where fewer) such that copies of one vector tie
    exactly and come in ascending row order; ``first`` is ``copies(rows)``. A matrix product may round the same
    inner product differently at different columns (OpenBLAS on an AMD EPYC does, by a unit in the last place),
    which would rank copies by where they fall; so only the first row of each group of copies is searched, and
    each found row stands for its group (its copies' similarities are its own)."""
    if first is None:
        return search(queries, rows, k)
    heads = np.flatnonzero(first == np.arange(len(first)))
    s, r = search(queries, np.asarray(rows)[heads], k)
    s, r = np.asarray(s, np.float32), np.asarray(r, np.int64)
    order = np.argsort(first, kind="stable")  # rows grouped by their first row, ascending inside a group
    start = np.searchsorted(first[order], heads)
    count = np.bincount(first, minlength=len(first))[heads]
    # result column p of query i is copy number p - (cum[i, j] - size[i, j]) of its hit j, the first hit whose
    # cumulative size passes p (each group counted at most k times: no more are ever listed)
    size = np.where(r >= 0, np.minimum(count[np.maximum(r, 0)], k), 0)
    cum = np.cumsum(size, axis=1)
    nq, width = r.shape
    span = k * width + 1  # more than any row's cumulative size: rows of cum stay apart once shifted by it
    shift = (np.arange(nq, dtype=np.int64) * span)[:, None]
    p = np.broadcast_to(np.arange(k, dtype=np.int64), (nq, k))
    j = np.searchsorted((cum + shift).ravel(), (p + shift).ravel(), side="right").reshape(nq, k) - \
        np.arange(nq, dtype=np.int64)[:, None] * width
    ok = p < cum[:, -1:]
    j = np.minimum(j, width - 1)
    hit = np.take_along_axis(r, j, 1)
    within = p - (np.take_along_axis(cum, j, 1) - np.take_along_axis(size, j, 1))
    found = np.where(ok, order[np.where(ok, start[np.maximum(hit, 0)] + within, 0)], -1)
    sims = np.where(ok, np.take_along_axis(s, j, 1), -np.inf).astype(np.float32)
    return sims, found.astype(np.int64)


def knn_rows(queries: np.ndarray, rows: np.ndarray, k: int, block: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Each query's ``k`` rows with the largest inner product: (similarities, row numbers), best first, the lower
    row first among ties (copies of one vector always tie), -inf / -1 where there are fewer rows (NumPy's matrix
    product, ``block`` queries at a time)."""
    return search_with_copies(lambda q, x, kk: _knn_rows(q, x, kk, block), queries, rows, k, copies(rows))


def _knn_rows(queries: np.ndarray, rows: np.ndarray, k: int, block: int) -> tuple[np.ndarray, np.ndarray]:
    q = np.asarray(queries, np.float32)
    x = np.asarray(rows, np.float32)
    sims = np.full((len(q), k), -np.inf, np.float32)
    found = np.full((len(q), k), -1, np.int64)
    numbers = np.arange(len(x), dtype=np.int64)
    for i0 in range(0, len(q), block):
        s = q[i0:i0 + block] @ x.T
        sims[i0:i0 + block], found[i0:i0 + block] = top_k_rows(s, np.broadcast_to(numbers, s.shape), k)
    return sims, found
