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

Memory is O((Q+G) * k1 * k2) besides the features. Distances are squared
Euclidean on L2-normalised features (``2 - 2 cos``), which is what the
textbook version computes from Euclidean input distances.

``candidates=K`` re-ranks each block of queries within the union of their top-K
gallery rows only, for galleries too large for exact neighbour lists.
"""
from __future__ import annotations

import logging

import numpy as np
import scipy.sparse as sp

from ..errors import InvalidInputError
from .knn import as_feature_matrix, knn_search, row_dots

log = logging.getLogger(__name__)

#: Rows processed together in the vectorised set-overlap steps.
ROW_BLOCK = 2048
#: Upper bound on (query, support column, gallery row) triples joined at once.
TRIPLE_BUDGET = 2_000_000


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
    recip = _reciprocal_mask(nn, width)
    recip_half = _reciprocal_mask(nn, half)
    keys = []
    for r0 in range(0, n, ROW_BLOCK):
        fwd = nn[r0:r0 + ROW_BLOCK, :width]  # (b, w)
        rec = recip[r0:r0 + ROW_BLOCK]  # R(i, k1) as a mask over fwd
        rows = np.arange(r0, r0 + len(fwd), dtype=np.int64)
        cand_nn = nn[fwd, :half]  # (b, w, h): first neighbours of each member c
        cand_rec = recip_half[fwd]  # R(c, k1/2) as a mask over cand_nn
        in_set = ((cand_nn[..., None] == fwd[:, None, None, :]) & rec[:, None, None, :]).any(axis=3)
        overlap = (in_set & cand_rec).sum(axis=2)
        size = cand_rec.sum(axis=2)
        grow = rec & (overlap > (2.0 / 3.0) * size)
        base_i, base_r = np.nonzero(rec)
        keys.append(rows[base_i] * n + fwd[base_i, base_r])
        gi, gr, gs = np.nonzero(grow[:, :, None] & cand_rec)
        keys.append(rows[gi] * n + cand_nn[gi, gr, gs])
    uniq = np.unique(np.concatenate(keys))
    return uniq // n, uniq % n


def _encoding(feats: np.ndarray, nn: np.ndarray, row_scale: np.ndarray,
              k1: int, k2: int) -> sp.csr_matrix:
    """Sparse k-reciprocal encoding V of every row, averaged over its k2 nearest rows."""
    n = len(feats)
    rows, cols = _expanded_pairs(nn, k1)
    dist = np.maximum(2.0 - 2.0 * row_dots(feats, feats, rows, cols), 0.0) / row_scale[rows]
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
    _, nn, min_sims = knn_search(feats, feats, min(max(k1 + 1, k2), n), return_min=True)
    row_scale = np.maximum(2.0 - 2.0 * min_sims.astype(np.float64), 1e-12)
    v = _encoding(feats, nn, row_scale, k1, k2)
    del nn
    # Inverted index: for each support column, the gallery rows using it.
    inv = v[nq:].T.tocsr()
    inv_len = np.diff(inv.indptr)
    vq = v[:nq]
    support_counts = np.asarray(sp.csr_matrix(
        (np.ones_like(vq.data), vq.indices, vq.indptr), shape=vq.shape) @ inv_len).ravel()

    out_d = np.empty((nq, k), np.float32)
    out_p = np.empty((nq, k), np.int64)
    for q0, q1 in _query_blocks(support_counts, block_size):
        blk = vq[q0:q1]
        b = q1 - q0
        ent_row = np.repeat(np.arange(b), np.diff(blk.indptr))
        lengths = inv_len[blk.indices]
        total = int(lengths.sum())
        starts = np.repeat(inv.indptr[blk.indices] - (np.cumsum(lengths) - lengths), lengths)
        flat = starts + np.arange(total)
        shared = np.minimum(np.repeat(blk.data, lengths), inv.data[flat])
        overlap = sp.csr_matrix((shared, (np.repeat(ent_row, lengths), inv.indices[flat])),
                                shape=(b, ng))  # duplicates are summed
        overlap.sum_duplicates()
        o_row = np.repeat(np.arange(b), np.diff(overlap.indptr))
        o_dist = np.maximum(
            2.0 - 2.0 * row_dots(feats, gf, o_row + q0, overlap.indices), 0.0) / row_scale[o_row + q0]
        jaccard = 1.0 - overlap.data / (2.0 - overlap.data)
        cand_final = ((1.0 - lambda_value) * jaccard + lambda_value * o_dist).astype(np.float32)

        n_cand = np.diff(overlap.indptr)
        list_len = min(ng, k + int(n_cand.max(initial=0)))
        list_sims, list_idx = knn_search(qf[q0:q1], gf, list_len)
        for r in range(b):
            c0, c1 = overlap.indptr[r], overlap.indptr[r + 1]
            cand = overlap.indices[c0:c1]
            rest = ~np.isin(list_idx[r], cand, assume_unique=True)
            rest_idx = list_idx[r][rest][:k]
            rest_dist = np.maximum(2.0 - 2.0 * list_sims[r][rest][:k].astype(np.float64), 0.0)
            rest_final = (1.0 - lambda_value) + lambda_value * rest_dist / row_scale[q0 + r]
            all_idx = np.concatenate([cand, rest_idx])
            all_final = np.concatenate([cand_final[c0:c1], rest_final.astype(np.float32)])
            order = np.argsort(all_final, kind="stable")[:k]
            out_d[q0 + r], out_p[q0 + r] = all_final[order], all_idx[order]
    return out_d, out_p


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
