"""Neighbour feature centralization (NFC, from Pose2ID, CVPR 2025).

Each feature is replaced by the re-normalised sum of itself and its mutual
nearest neighbours within its own set: j counts for i when j is among i's
first ``k1`` neighbours and i among j's first ``k2`` (self excluded). The sum
pulls the crops of one identity towards their common centre.

The gallery side is computed once at index time (``centralize``) and kept up
to date when crops are added (``update_centralized``), which recomputes only
the rows whose mutual neighbours can have changed. ``NeighbourState`` is what
the index must store beside the vectors for that.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from ..errors import InvalidInputError
from .knn import as_feature_matrix, knn_search, normalize_rows

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class NeighbourState:
    """Top neighbour lists of a set (self excluded), enough to update NFC incrementally.

    ``indices`` (N, W) int64 row numbers and ``sims`` (N, W) float32 inner
    products in descending order, with W = max(k1, k2) (fewer if N - 1 < W).
    """

    indices: np.ndarray
    sims: np.ndarray
    k1: int
    k2: int

    def __len__(self) -> int:
        return len(self.indices)


@dataclass(frozen=True)
class CentralizedUpdate:
    """Result of ``update_centralized``: rows to (re)write and the new state.

    ``rows`` are row numbers in the grown set (old rows first, then the new
    ones); ``vectors[t]`` is the new centralized vector of ``rows[t]``.
    Every other old row keeps its stored centralized vector.
    """

    rows: np.ndarray
    vectors: np.ndarray
    state: NeighbourState


def _check_ks(k1: int, k2: int) -> None:
    if int(k1) < 1 or int(k2) < 1:
        raise InvalidInputError(f"k1 and k2 must be >= 1, got k1={k1}, k2={k2}")


def _drop_self(sims: np.ndarray, idx: np.ndarray, own: np.ndarray, width: int
               ) -> tuple[np.ndarray, np.ndarray]:
    """Remove each row's own id from its neighbour list and keep ``width`` entries."""
    is_self = idx == own[:, None]
    # Rows where self was not found (exact duplicates ranked first) drop their last entry.
    missing = ~is_self.any(axis=1)
    is_self[missing, -1] = True
    keep = ~is_self
    n = len(idx)
    sims = sims[keep].reshape(n, -1)[:, :width]
    idx = idx[keep].reshape(n, -1)[:, :width]
    return np.ascontiguousarray(sims), np.ascontiguousarray(idx)


def neighbour_lists(feats: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Each row's top-``width`` inner-product neighbours in ``feats``, self excluded."""
    n = len(feats)
    width = min(width, max(n - 1, 0))
    if width == 0:
        return np.empty((n, 0), np.float32), np.empty((n, 0), np.int64)
    sims, idx = knn_search(feats, feats, width + 1)
    return _drop_self(sims, idx, np.arange(n), width)


def mutual_mask(indices: np.ndarray, rows: np.ndarray, k1: int, k2: int) -> np.ndarray:
    """mask[t, r]: ``indices[rows[t], r]`` is a mutual neighbour of row ``rows[t]``."""
    fwd = indices[rows, :k1]
    back = indices[fwd, :k2]  # (len(rows), k1', k2')
    return (back == rows[:, None, None]).any(axis=2)


def _sum_rows(feats: np.ndarray, rows: np.ndarray, nbrs: np.ndarray, mask: np.ndarray,
              weight: float) -> np.ndarray:
    """normalise(f_row + weight * sum of the masked neighbours ``nbrs[row, r]``)."""
    out = feats[rows].astype(np.float32, copy=True)
    t, r = np.nonzero(mask)
    if len(t):
        np.add.at(out, t, np.float32(weight) * feats[nbrs[rows[t], r]])
    return normalize_rows(out)


def centralize(feats: np.ndarray, k1: int = 2, k2: int = 2, *, weight: float = 1.0
               ) -> tuple[np.ndarray, NeighbourState]:
    """Neighbour-feature-centralized copy of ``feats`` (N, D) and its neighbour state.

    Row i becomes ``normalise(f_i + weight * sum f_j)`` over its mutual
    neighbours j (j in i's top-k1, i in j's top-k2, self excluded).
    """
    _check_ks(k1, k2)
    feats = as_feature_matrix(feats, "feats")
    sims, idx = neighbour_lists(feats, max(k1, k2))
    state = NeighbourState(indices=idx, sims=sims, k1=int(k1), k2=int(k2))
    rows = np.arange(len(feats))
    if len(feats) == 0:
        return feats.copy(), state
    cent = _sum_rows(feats, rows, idx, mutual_mask(idx, rows, k1, k2), weight)
    return cent, state


def update_centralized(old_feats: np.ndarray, old_state: NeighbourState, new_feats: np.ndarray,
                       *, weight: float = 1.0) -> CentralizedUpdate:
    """Incremental ``centralize`` after appending ``new_feats`` to ``old_feats``.

    Finds which old rows gain a new row in their neighbour list, then
    recomputes the centralized vector of the new rows, of those old rows, and
    of every row that has one of them among its first k1 neighbours (their
    mutual test may flip). Equals ``centralize(concat(old, new))`` up to ties.
    """
    old = as_feature_matrix(old_feats, "old_feats")
    new = as_feature_matrix(new_feats, "new_feats", old.shape[1] if len(old) else None)
    if len(old_state) != len(old):
        raise InvalidInputError(
            f"old_state describes {len(old_state)} rows but old_feats has {len(old)}")
    k1, k2 = old_state.k1, old_state.k2
    n_old, n_new = len(old), len(new)
    allf = np.concatenate([old, new]) if n_old else new
    width = min(max(k1, k2), n_old + n_new - 1)
    if n_new == 0:
        return CentralizedUpdate(np.empty(0, np.int64), np.empty((0, old.shape[1]), np.float32),
                                 old_state)

    # New rows: exact lists over the grown set.
    new_sims, new_idx = knn_search(new, allf, width + 1)
    new_sims, new_idx = _drop_self(new_sims, new_idx, np.arange(n_old, n_old + n_new), width)

    # Old rows: merge their stored list with their best matches among the new rows.
    if n_old:
        cand_sims, cand_idx = knn_search(old, new, min(width, n_new))
        merged_sims = np.concatenate([old_state.sims, cand_sims], axis=1)
        merged_idx = np.concatenate([old_state.indices, cand_idx + n_old], axis=1)
        order = np.argsort(-merged_sims, axis=1, kind="stable")[:, :width]
        old_sims = np.take_along_axis(merged_sims, order, axis=1)
        old_idx = np.take_along_axis(merged_idx, order, axis=1)
        if old_state.indices.shape[1] == width:
            changed = np.nonzero((old_idx != old_state.indices).any(axis=1))[0]
        else:  # the lists grew (the old set was smaller than the list width)
            changed = np.arange(n_old)
    else:
        old_sims = np.empty((0, width), np.float32)
        old_idx = np.empty((0, width), np.int64)
        changed = np.empty(0, np.int64)

    idx = np.concatenate([old_idx, new_idx])
    sims = np.concatenate([old_sims, new_sims])
    state = NeighbourState(indices=idx, sims=sims, k1=k1, k2=k2)

    listed = np.concatenate([changed, np.arange(n_old, n_old + n_new)])
    depends = np.nonzero(np.isin(idx[:n_old, :k1], listed).any(axis=1))[0]
    rows = np.union1d(listed, depends).astype(np.int64)
    vectors = _sum_rows(allf, rows, idx, mutual_mask(idx, rows, k1, k2), weight)
    log.debug("NFC update: %d new rows, %d rows recomputed", n_new, len(rows))
    return CentralizedUpdate(rows=rows, vectors=vectors, state=state)


def centralize_queries(
    query_feats: np.ndarray,
    gallery_feats: np.ndarray | None = None,
    *,
    k1: int = 2,
    k2: int = 2,
    mode: str = "batch",
    weight: float = 1.0,
    gallery_state: NeighbourState | None = None,
) -> np.ndarray:
    """Centralize a batch of query features.

    ``mode="batch"``: mutual neighbours within the query batch (Pose2ID).
    ``mode="gallery"``: mutual neighbours among the gallery rows, where q is in
    a gallery row j's top-k2 when it beats j's k2-th gallery neighbour (taken
    from ``gallery_state`` or computed). ``mode="joint"``: mutual neighbours
    within the union of the batch and the gallery.
    """
    _check_ks(k1, k2)
    qf = as_feature_matrix(query_feats, "query_feats")
    if mode == "batch":
        return centralize(qf, k1, k2, weight=weight)[0]
    if gallery_feats is None:
        raise InvalidInputError(f"mode={mode!r} needs gallery_feats")
    gf = as_feature_matrix(gallery_feats, "gallery_feats", qf.shape[1])
    if len(qf) == 0 or len(gf) == 0:
        return qf.copy()
    if mode == "joint":
        allf = np.concatenate([qf, gf])
        sims, idx = neighbour_lists(allf, max(k1, k2))
        rows = np.arange(len(qf))
        return _sum_rows(allf, rows, idx, mutual_mask(idx, rows, k1, k2), weight)
    if mode != "gallery":
        raise InvalidInputError(f"unknown query centralization mode {mode!r}: "
                                "expected 'batch', 'gallery' or 'joint'")
    if gallery_state is None or gallery_state.indices.shape[1] < k2:
        g_sims, _ = neighbour_lists(gf, k2)
    else:
        g_sims = gallery_state.sims
    sims, idx = knn_search(qf, gf, k1)
    if g_sims.shape[1] >= k2:
        threshold = g_sims[idx, k2 - 1]
    else:  # fewer than k2 other gallery rows: every row has room for q
        threshold = np.full(idx.shape, -np.inf, np.float32)
    mask = sims >= threshold
    out = qf.copy()
    t, r = np.nonzero(mask)
    np.add.at(out, t, np.float32(weight) * gf[idx[t, r]])
    return normalize_rows(out)
