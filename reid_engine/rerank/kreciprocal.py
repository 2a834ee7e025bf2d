"""k-reciprocal re-ranking (Zhong et al., CVPR 2017) on sparse neighbour lists.

The textbook formulation builds several dense (Q+G)^2 matrices. Here every
step only touches top-k neighbour lists and sparse rows:

1. exact top-(k1+1) lists of every query and gallery row, plus each row's
   farthest distance (the textbook version scales each row by it);
2. k-reciprocal sets R(i, k1), expanded with the R(c, k1/2) of members c that
   overlap R(i, k1) by more than two thirds;
3. sparse Gaussian-weighted rows V, averaged over the k2 nearest rows;
4. the Jaccard distance of each query to the gallery rows that share support
   with it (an inverted index over V's columns), blended with the original
   distance; every other gallery row keeps ``(1 - lambda) + lambda * d``.

Memory is O((Q+G) * k1 * k2) besides the features and, when it fits in
``QG_MAX_BYTES``, the Q x G similarity matrix that step 1 computes anyway
(kept for the original-distance term of step 4). Distances are squared
Euclidean on L2-normalised features (``2 - 2 cos``), which is what the
textbook version computes from Euclidean input distances.

``candidates=K`` re-ranks each block of queries within the union of their top-K
gallery rows only, for galleries too large for exact neighbour lists.
"""
from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor

import faiss
import numpy as np
import scipy.sparse as sp

from ..errors import InvalidInputError
from .knn import as_feature_matrix, knn_search, row_dots

log = logging.getLogger(__name__)

#: Rows processed together in the vectorised set-overlap steps.
ROW_BLOCK = 2048
#: Upper bound on (query, support column, gallery row) triples joined at once.
TRIPLE_BUDGET = 2_000_000


#: Rows of each square block of the symmetric neighbour pass (float32 block of 16 MB).
SELF_BLOCK = 2048
#: The query x gallery similarities of the neighbour pass are kept for the final
#: blend when they fit in this many bytes; otherwise each query block recomputes them.
QG_MAX_BYTES = 512 * 2**20


def _self_neighbours(feats: np.ndarray, nq: int, k: int, block: int | None = None,
                     keep_qg: bool = True
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """Top-``k`` inner-product neighbours of every row among all rows, in one symmetric pass.

    Each square block ``feats[Ri] @ feats[Rj].T`` with i <= j is computed once
    and serves both its rows (a FAISS heap per row) and its columns (entries
    above the column row's current k-th best, pushed with their ids), so the
    BLAS work is half of the full product. Returns ``(idx, sims, min_sims, qg)``:
    (n, k) int64 neighbours by descending similarity and those similarities, each row's smallest
    similarity, and the (nq, n - nq) float32 similarities of the first ``nq``
    rows (queries) to the others (gallery), which the pass computes anyway
    (None unless ``keep_qg``).
    """
    n = len(feats)
    block = SELF_BLOCK if block is None else block
    bounds = sorted(set(list(range(0, nq, block)) + list(range(nq, n, block)) + [n]))
    spans = list(zip(bounds[:-1], bounds[1:]))
    vals = np.empty((n, k), np.float32)
    idx = np.empty((n, k), np.int64)
    mins = np.full(n, np.inf, np.float32)
    qg = np.empty((nq, n - nq), np.float32) if keep_qg else None
    heap = faiss.float_minheap_array_t()  # a min-heap keeps the k largest values
    heap.k, heap.nh = k, n
    heap.val, heap.ids = faiss.swig_ptr(vals), faiss.swig_ptr(idx)
    heap.heapify()
    # Diagonal blocks first, so every row's heap holds a good threshold early.
    order = [(a, a) for a in range(len(spans))]
    order += [(a, b) for a in range(len(spans)) for b in range(a + 1, len(spans))]

    def absorb(a: int, b: int, s: np.ndarray) -> None:
        (r0, r1), (c0, c1) = spans[a], spans[b]
        heap.addn(c1 - c0, faiss.swig_ptr(s), c0, r0, r1 - r0)  # type: ignore[call-arg]  # the stub omits the optional j0, i0, ni
        np.minimum(mins[r0:r1], s.min(axis=1), out=mins[r0:r1])
        if qg is not None and r1 <= nq < c1:
            qg[r0:r1, c0 - nq:c1 - nq] = s
        if a == b:
            return
        np.minimum(mins[c0:c1], s.min(axis=0), out=mins[c0:c1])
        # Column side: only entries that beat the column row's current k-th best.
        rr, cc = _true_cells(s > vals[c0:c1, 0][None, :])
        if len(rr) == 0:
            return
        srt = np.argsort(cc, kind="stable")
        rr, cc = rr[srt], cc[srt]
        counts = np.bincount(cc, minlength=c1 - c0)
        width = int(counts.max())
        pos = np.arange(len(cc)) - np.repeat(np.cumsum(counts) - counts, counts)
        pv = np.full((c1 - c0, width), -np.inf, np.float32)
        pi = np.full((c1 - c0, width), -1, np.int64)
        pv[cc, pos] = s[rr, cc]
        pi[cc, pos] = rr + r0
        heap.addn_with_ids(  # type: ignore[call-arg]  # the stub omits id_stride, i0, ni
            width, faiss.swig_ptr(pv), faiss.swig_ptr(pi), width, c0, c1 - c0
        )

    # One helper thread folds block t into the heaps while BLAS computes block
    # t + 1; blocks are folded in order, so the result is that of a serial loop.
    # Two block buffers, alternated: fresh 16 MB arrays per block would be
    # page-faulted in again every time.
    size = max(r1 - r0 for r0, r1 in spans) ** 2
    bufs = (np.empty(size, np.float32), np.empty(size, np.float32))
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = None
        for t, (a, b) in enumerate(order):
            (r0, r1), (c0, c1) = spans[a], spans[b]
            s = bufs[t % 2][:(r1 - r0) * (c1 - c0)].reshape(r1 - r0, c1 - c0)
            np.matmul(feats[r0:r1], feats[c0:c1].T, out=s)
            if pending is not None:
                pending.result()
            pending = pool.submit(absorb, a, b, s)
        if pending is not None:
            pending.result()
    heap.reorder()
    return idx, vals, mins, qg


def _true_cells(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``np.nonzero`` of a 2-D bool mask that is almost all False, scanning 8 cells at a time."""
    flat = mask.reshape(-1)
    if flat.size % 8:
        rows, cols = np.nonzero(mask)
        return rows, cols
    words = np.flatnonzero(flat.view(np.uint64))
    cells = (words[:, None] * 8 + np.arange(8)).ravel()
    cells = cells[flat[cells]]
    return np.divmod(cells, mask.shape[1])


def _reciprocal_mask(nn: np.ndarray, width: int) -> np.ndarray:
    """mask[i, r]: row i is within the first ``width`` neighbours of nn[i, r]."""
    n = len(nn)
    mask = np.empty((n, width), bool)
    for r0 in range(0, n, ROW_BLOCK):
        fwd = nn[r0:r0 + ROW_BLOCK, :width]
        back = nn[fwd, :width]  # (b, width, width)
        own = np.arange(r0, r0 + len(fwd))[:, None, None]
        mask[r0:r0 + ROW_BLOCK] = (back == own).any(axis=2)
    return mask


def _expanded_pairs(nn: np.ndarray, k1: int) -> tuple[np.ndarray, np.ndarray]:
    """(row, member) pairs of the expanded k-reciprocal sets, sorted by row then member."""
    n = len(nn)
    width = min(k1 + 1, nn.shape[1])
    half = min(int(np.around(k1 / 2.0)) + 1, width)

    def members(w: int) -> sp.csr_matrix:
        # R(i, w - 1) as a 0/1 sparse row per i (neighbours that have i in their first w)
        rec = _reciprocal_mask(nn, w)
        counts = rec.sum(axis=1)
        indptr = np.concatenate([[0], np.cumsum(counts)])
        return sp.csr_matrix((np.ones(int(indptr[-1]), np.float32), nn[:, :w][rec], indptr),
                             shape=(n, n))

    full = members(width)  # R(i, k1)
    part = members(half)   # R(c, k1/2)
    # |R(c, k1/2) & R(i, k1)| for every member c of R(i, k1); c joins when that
    # exceeds two thirds of |R(c, k1/2)|.
    shared = (full @ part.T).multiply(full).tocsr()
    shared.eliminate_zeros()
    size = np.diff(part.indptr)
    fr = np.repeat(np.arange(n), np.diff(full.indptr))
    look = sp.csr_matrix((shared.data, shared.indices, shared.indptr), shape=(n, n))
    got = np.asarray(look[fr, full.indices]).ravel()
    grow = got > (2.0 / 3.0) * size[full.indices]
    grown = sp.csr_matrix((np.ones(int(grow.sum()), np.float32), (fr[grow], full.indices[grow])),
                          shape=(n, n))
    union = (full + grown @ part).tocsr()
    union.sort_indices()
    rows = np.repeat(np.arange(n, dtype=np.int64), np.diff(union.indptr))
    return rows, union.indices.astype(np.int64)


def _pair_sims(feats: np.ndarray, nn: np.ndarray, nn_sims: np.ndarray, rows: np.ndarray,
               cols: np.ndarray) -> np.ndarray:
    """feats[rows] . feats[cols], read from the neighbour lists where the pair is in them."""
    n, w = nn.shape
    slot = sp.csr_matrix((np.arange(1, n * w + 1, dtype=np.float64), nn.ravel(),
                          np.arange(0, n * w + 1, w)), shape=(n, n))
    pos = np.asarray(slot[rows, cols]).ravel().astype(np.int64)
    out = nn_sims.ravel()[np.maximum(pos - 1, 0)]
    miss = np.flatnonzero(pos == 0)
    if len(miss):
        out[miss] = row_dots(feats, feats, rows[miss], cols[miss])
    return out


def _encoding(feats: np.ndarray, nn: np.ndarray, row_scale: np.ndarray,
              k1: int, k2: int, nn_sims: np.ndarray | None = None) -> sp.csr_matrix:
    """Sparse k-reciprocal encoding V of every row, averaged over its k2 nearest rows."""
    n = len(feats)
    rows, cols = _expanded_pairs(nn, k1)
    sims = row_dots(feats, feats, rows, cols) if nn_sims is None else \
        _pair_sims(feats, nn, nn_sims, rows, cols)
    dist = np.maximum(2.0 - 2.0 * sims, 0.0) / row_scale[rows]
    weight = np.exp(-dist).astype(np.float32)
    totals = np.bincount(rows, weights=weight, minlength=n)
    v = sp.csr_matrix(((weight / totals[rows]).astype(np.float32), (rows, cols)), shape=(n, n))
    width = min(k2, nn.shape[1])
    if width > 1:
        avg = sp.csr_matrix(
            (np.full(n * width, 1.0 / width, np.float32),
             (np.repeat(np.arange(n), width), nn[:, :width].ravel())),
            shape=(n, n),
        )
        v = (avg @ v).tocsr()
    v.sort_indices()
    return v


def _query_blocks(support_counts: np.ndarray, max_rows: int) -> list[tuple[int, int]]:
    """Split query rows into consecutive blocks whose join size stays under budget."""
    blocks, start, acc = [], 0, 0
    for i, c in enumerate(support_counts.tolist()):
        if i > start and (acc + c > TRIPLE_BUDGET or i - start >= max_rows):
            blocks.append((start, i))
            start, acc = i, 0
        acc += c
    blocks.append((start, len(support_counts)))
    return blocks


def _rerank_exact(qf: np.ndarray, gf: np.ndarray, k: int, k1: int, k2: int,
                  lambda_value: float, block_size: int) -> tuple[np.ndarray, np.ndarray]:
    """k-reciprocal re-ranking of all queries against the whole gallery."""
    nq, ng = len(qf), len(gf)
    feats = np.concatenate([qf, gf])
    n = len(feats)
    keep_qg = nq * ng * 4 <= QG_MAX_BYTES
    nn, nn_sims, min_sims, qg = _self_neighbours(feats, nq, min(max(k1 + 1, k2), n),
                                                 keep_qg=keep_qg)
    row_scale = np.maximum(2.0 - 2.0 * min_sims.astype(np.float64), 1e-12)
    v = _encoding(feats, nn, row_scale, k1, k2, nn_sims)
    del nn, nn_sims
    # Inverted index: for each support column, the gallery rows using it.
    inv = v[nq:].T.tocsr()
    inv_len = np.diff(inv.indptr)
    vq = v[:nq]
    support_counts = np.asarray(sp.csr_matrix(
        (np.ones_like(vq.data), vq.indices, vq.indptr), shape=vq.shape) @ inv_len).ravel()

    out_d = np.empty((nq, k), np.float32)
    out_p = np.empty((nq, k), np.int64)
    scale32 = row_scale.astype(np.float32)
    lam, rest = np.float32(lambda_value), np.float32(1.0 - lambda_value)

    def finish(span: tuple[int, int]) -> None:
        q0, q1 = span
        blk = vq[q0:q1]
        b = q1 - q0
        ent_row = np.repeat(np.arange(b), np.diff(blk.indptr))
        lengths = inv_len[blk.indices]
        total = int(lengths.sum())
        starts = np.repeat(inv.indptr[blk.indices] - (np.cumsum(lengths) - lengths), lengths)
        flat = starts + np.arange(total)
        shared = np.minimum(np.repeat(blk.data, lengths), inv.data[flat])
        # Sum of minima per (query, gallery row), accumulated densely over the block.
        overlap = np.bincount(np.repeat(ent_row * ng, lengths) + inv.indices[flat],
                              weights=shared, minlength=b * ng).reshape(b, ng)
        # final = lambda * original + (1 - lambda) * jaccard: the original term
        # max(2 - 2 cos, 0) / row_scale from the first pass's similarities, and
        # jaccard = 1 for gallery rows sharing no support with the query ...
        coef = (lam / scale32[q0:q1])[:, None]
        sims = qg[q0:q1] if qg is not None else qf[q0:q1] @ gf.T
        final = sims * (np.float32(-2.0) * coef)
        final += np.float32(2.0) * coef
        np.maximum(final, np.float32(0.0), out=final)
        final += rest
        # ... and (1 - lambda) * (1 - o / (2 - o)) where the overlap o is positive.
        hit = np.flatnonzero(overlap)
        o = overlap.ravel()[hit]
        del overlap
        final.ravel()[hit] -= (rest * (o / (2.0 - o))).astype(np.float32)
        del sims
        out_d[q0:q1], out_p[q0:q1] = _smallest(final, k)

    # Query blocks are independent; two threads overlap their numpy work.
    with ThreadPoolExecutor(max_workers=2) as pool:
        list(pool.map(finish, _query_blocks(support_counts, block_size)))
    return out_d, out_p


def _smallest(values: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` smallest entries of each row, ascending, and their column numbers."""
    nr, nc = values.shape
    if k >= nc:
        idx = np.argsort(values, axis=1, kind="stable")
    elif 8 * k <= nc:  # a max-heap per row: one streaming pass, most entries rejected at once
        vals = np.empty((nr, k), np.float32)
        idx = np.empty((nr, k), np.int64)
        heap = faiss.float_maxheap_array_t()
        heap.k, heap.nh = k, nr
        heap.val, heap.ids = faiss.swig_ptr(vals), faiss.swig_ptr(idx)
        heap.heapify()
        heap.addn(nc, faiss.swig_ptr(values), 0, 0, nr)  # type: ignore[call-arg]  # the stub omits the optional j0, i0, ni
        heap.reorder()
        return vals, idx
    else:
        idx = np.argpartition(values, k - 1, axis=1)[:, :k]
        part = np.take_along_axis(values, idx, 1)
        order = np.argsort(part, axis=1, kind="stable")
        idx = np.take_along_axis(idx, order, 1)
    return np.take_along_axis(values, idx, 1), idx.astype(np.int64, copy=False)


def k_reciprocal_rerank(
    query_feats: np.ndarray,
    gallery_feats: np.ndarray,
    k: int,
    *,
    k1: int = 20,
    k2: int = 6,
    lambda_value: float = 0.3,
    candidates: int | None = None,
    block_size: int = 256,
    candidate_block: int = 32,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` gallery rows of each query after k-reciprocal re-ranking.

    Features must be L2-normalised. Returns ``(distances, positions)``, both
    (Q, min(k, G)): re-ranked distances ascending (float32) and gallery row
    numbers (int64). ``candidates=None`` is exact over the whole gallery (the
    neighbour graph holds all queries and gallery rows); ``candidates=K``
    re-ranks blocks of ``candidate_block`` queries within the union of their
    top-K gallery rows (cost per query grows with candidate_block * K^2), which
    equals the exact mode when K >= G and Q <= candidate_block.
    """
    qf = as_feature_matrix(query_feats, "query_feats")
    gf = as_feature_matrix(gallery_feats, "gallery_feats", qf.shape[1])
    if k1 < 1 or k2 < 1:
        raise InvalidInputError(f"k1 and k2 must be >= 1, got k1={k1}, k2={k2}")
    if not 0.0 <= lambda_value <= 1.0:
        raise InvalidInputError(f"lambda_value must be in [0, 1], got {lambda_value}")
    if min(k, block_size, candidate_block) < 1:
        raise InvalidInputError(f"k, block_size and candidate_block must be >= 1, got "
                                f"{k}, {block_size}, {candidate_block}")
    k = min(k, len(gf))
    if len(qf) == 0 or k == 0:
        return np.empty((len(qf), k), np.float32), np.empty((len(qf), k), np.int64)
    if candidates is None:
        return _rerank_exact(qf, gf, k, k1, k2, lambda_value, block_size)
    if candidates < 1:
        raise InvalidInputError(f"candidates must be >= 1 or None, got {candidates}")
    num_cand = min(max(candidates, k), len(gf))
    out_d = np.empty((len(qf), k), np.float32)
    out_p = np.empty((len(qf), k), np.int64)
    _, cand = knn_search(qf, gf, num_cand)  # one pass over the gallery for all queries
    for q0 in range(0, len(qf), candidate_block):
        qb = qf[q0:q0 + candidate_block]
        local = np.unique(cand[q0:q0 + candidate_block])
        d, p = _rerank_exact(qb, gf[local], k, k1, k2, lambda_value, block_size)
        out_d[q0:q0 + len(qb)], out_p[q0:q0 + len(qb)] = d, local[p]
    return out_d, out_p


#: pools up to this size are re-ranked by the dense ``k_reciprocal_pool`` (a few (n, n) matrices)
DENSE_POOL_MAX = 512


def k_reciprocal_pool(query: np.ndarray, pool: np.ndarray, k1: int = 20, k2: int = 6,
                      lambda_value: float = 0.3) -> np.ndarray:
    """k-reciprocal distances of one query to a small candidate pool, with dense (n, n) matrices.

    The same definitions as ``k_reciprocal_rerank`` (the query and the pool are the
    whole set: neighbour lists, row scales, expanded k-reciprocal sets, k2 averaging,
    Jaccard blended with the scaled original distance), without the sparse machinery
    that only pays off for large galleries. ``query`` (D,) and ``pool`` (P, D) are
    L2-normalised; returns (P,) distances, lower is better.
    """
    if not 0.0 <= lambda_value <= 1.0:
        raise InvalidInputError(f"lambda_value must be in [0, 1], got {lambda_value}")
    jaccard, dist = k_reciprocal_pool_parts(query, pool, k1, k2)
    return ((1.0 - lambda_value) * jaccard + lambda_value * dist).astype(np.float32)


def nearest_columns(sims: np.ndarray, m: int) -> np.ndarray:
    """Per row of ``sims``, its ``m`` highest columns, best first, ties by ascending column: the first ``m``
    columns of a stable descending argsort, found by sorting only the columns at or above each row's m-th value
    (a full sort of a (201, 201) pool matrix costs about 4x more). Rows with ties at their m-th value, or
    values that are not finite, take the full sort."""
    n = sims.shape[1]
    if m >= n or m < 1 or not np.isfinite(sims).all():
        return np.argsort(-sims, axis=1, kind="stable")[:, :max(m, 0)]
    neg = -sims
    kth = np.partition(neg, m - 1, axis=1)[:, m - 1:m]
    inside = neg <= kth
    if not (inside.sum(axis=1) == m).all():  # a tie at the m-th value: which of the tied come first needs the sort
        return np.argsort(neg, axis=1, kind="stable")[:, :m]
    cols = np.nonzero(inside)[1].reshape(len(sims), m)  # ascending columns per row
    order = np.argsort(np.take_along_axis(neg, cols, 1), axis=1, kind="stable")
    return np.take_along_axis(cols, order, 1)


def k_reciprocal_pool_parts(query: np.ndarray, pool: np.ndarray, k1: int = 20, k2: int = 6
                            ) -> tuple[np.ndarray, np.ndarray]:
    """The two terms ``k_reciprocal_pool`` blends, (P,) each: the Jaccard distance of the query's and each
    candidate's expanded k-reciprocal sets, and the query's scaled original distance to each candidate.
    One computation serves any number of blends (``(1 - lambda) * jaccard + lambda * dist``)."""
    feats = np.concatenate([np.asarray(query, np.float32)[None], np.asarray(pool, np.float32)])
    n = len(feats)
    if k1 < 1 or k2 < 1:
        raise InvalidInputError(f"k1 and k2 must be >= 1, got {k1}, {k2}")
    sims = feats @ feats.T
    nn = nearest_columns(sims, min(max(k1 + 1, k2), n))
    row_scale = np.maximum(2.0 - 2.0 * sims.min(axis=1).astype(np.float64), 1e-12)
    width = min(k1 + 1, nn.shape[1])
    half = min(int(np.around(k1 / 2.0)) + 1, width)
    rows = np.arange(n)[:, None]

    def reciprocal(w: int) -> np.ndarray:
        first = np.zeros((n, n), bool)  # first[i, j]: j is among i's first w neighbours
        first[rows, nn[:, :w]] = True
        return first & first.T

    full, part = reciprocal(width), reciprocal(half)
    fullf, partf = full.astype(np.float32), part.astype(np.float32)
    shared = fullf @ partf.T  # |R(i, k1) & R(c, k1/2)|
    grow = full & (shared > (2.0 / 3.0) * part.sum(axis=1)[None, :])
    union = full | (grow.astype(np.float32) @ partf > 0)
    dist = np.maximum(2.0 - 2.0 * sims.astype(np.float64), 0.0) / row_scale[:, None]
    v = np.where(union, np.exp(-dist), 0.0)
    v /= v.sum(axis=1, keepdims=True)
    avg = min(k2, nn.shape[1])
    if avg > 1:
        v = v[nn[:, :avg]].mean(axis=1)
    overlap = np.minimum(v[0][None, :], v[1:]).sum(axis=1)
    jaccard = 1.0 - overlap / (2.0 - overlap)
    return jaccard, dist[0, 1:]
