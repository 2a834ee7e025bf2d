"""Retrieval metrics: CMC, mAP and mINP under the standard ReID rules.

Rules (those of torchreid's ``evaluate_rank`` with the Market-1501 metric):

* gallery items of the query's person seen by the query's camera are ignored
  ("junk"); with ``clothes_changing=True`` those in the query's clothes are too;
* every other gallery item of the query's person is a correct match;
* queries without any correct match in the gallery are skipped and counted.

Two entries share one scoring core: :func:`evaluate_distmat` ranks a full
distance matrix; :func:`evaluate_ranked` scores top-K lists (what a search
engine returns), where correct matches beyond K count as never retrieved.
On ties the lower gallery index ranks first (a stable sort). All rates are
fractions in [0, 1]; :meth:`EvalResult.to_dict` gives percent.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from ..errors import InvalidInputError

log = logging.getLogger(__name__)

CMC_RANKS = (1, 5, 10, 20)


@dataclass(frozen=True)
class EvalResult:
    """Scores of one query set against one gallery; rates are fractions in [0, 1]."""

    cmc: np.ndarray  # (max_rank,): share of valid queries with a correct match within rank k + 1
    mAP: float
    mINP: float
    num_queries: int
    num_valid: int
    ap: np.ndarray  # (Q,) average precision per query, NaN for skipped queries
    inp: np.ndarray  # (Q,) inverse negative penalty per query, NaN for skipped queries
    first_match: np.ndarray  # (Q,) 0-based rank of the first correct match, -1 if none was retrieved
    num_relevant: np.ndarray  # (Q,) correct matches the gallery holds for each query

    @property
    def num_skipped(self) -> int:
        return self.num_queries - self.num_valid

    def rank(self, k: int) -> float:
        """CMC at rank k (1-based)."""
        if not 1 <= k <= len(self.cmc):
            raise InvalidInputError(f"rank {k}: expected 1..{len(self.cmc)} (raise max_rank)")
        return float(self.cmc[k - 1])

    @property
    def rank1(self) -> float:
        return self.rank(1)

    @property
    def rank5(self) -> float:
        return self.rank(5)

    @property
    def rank10(self) -> float:
        return self.rank(10)

    @property
    def rank20(self) -> float:
        return self.rank(20)

    @property
    def valid(self) -> np.ndarray:
        """(Q,) bool: the queries that were scored."""
        return self.num_relevant > 0

    def to_dict(self, percent: bool = True, cmc_length: int = 20) -> dict[str, Any]:
        """Plain-type summary for JSON; rates in percent unless ``percent=False``."""
        scale = 100.0 if percent else 1.0
        out: dict[str, Any] = {
            f"rank{k}": float(self.cmc[k - 1]) * scale for k in CMC_RANKS if k <= len(self.cmc)
        }
        out.update(
            mAP=self.mAP * scale,
            mINP=self.mINP * scale,
            num_queries=self.num_queries,
            num_valid=self.num_valid,
            num_skipped=self.num_skipped,
            cmc=[float(x) * scale for x in self.cmc[:cmc_length]],
            unit="percent" if percent else "fraction",
        )
        return out


# -- label handling -----------------------------------------------------------------------------
@dataclass(frozen=True)
class _Labels:
    q_pids: np.ndarray
    g_pids: np.ndarray
    q_camids: np.ndarray
    g_camids: np.ndarray
    q_clothes: Optional[np.ndarray]
    g_clothes: Optional[np.ndarray]

    @property
    def num_query(self) -> int:
        return len(self.q_pids)

    @property
    def num_gallery(self) -> int:
        return len(self.g_pids)


def _labels(q_pids, g_pids, q_camids, g_camids, q_clothes, g_clothes, clothes_changing: bool) -> _Labels:
    # a None stays None (len() below rejects it)
    arrays: list[Any] = [
        np.asarray(a).reshape(-1) if a is not None else None for a in (q_pids, g_pids, q_camids, g_camids)
    ]
    qp, gp, qc, gc = arrays
    if len(qp) != len(qc):
        raise InvalidInputError(f"{len(qp)} query person ids but {len(qc)} query camera ids")
    if len(gp) != len(gc):
        raise InvalidInputError(f"{len(gp)} gallery person ids but {len(gc)} gallery camera ids")
    if len(qp) == 0 or len(gp) == 0:
        raise InvalidInputError(f"empty query ({len(qp)}) or gallery ({len(gp)}) set")
    qcl = gcl = None
    if clothes_changing:
        if q_clothes is None or g_clothes is None:
            raise InvalidInputError("clothes_changing=True needs q_clothes and g_clothes")
        qcl, gcl = np.asarray(q_clothes).reshape(-1), np.asarray(g_clothes).reshape(-1)
        if len(qcl) != len(qp) or len(gcl) != len(gp):
            raise InvalidInputError(
                f"clothes ids: {len(qcl)} query / {len(gcl)} gallery, expected {len(qp)} / {len(gp)}"
            )
    return _Labels(qp, gp, qc, gc, qcl, gcl)


def _same_person_pairs(lab: _Labels) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every (query, gallery) pair of the same person, ordered by query then gallery index.

    Returns (query index, gallery index, is-junk) arrays.
    """
    g_order = np.argsort(lab.g_pids, kind="stable")
    g_sorted = lab.g_pids[g_order]
    lo = np.searchsorted(g_sorted, lab.q_pids, side="left")
    hi = np.searchsorted(g_sorted, lab.q_pids, side="right")
    counts = hi - lo
    qi = np.repeat(np.arange(lab.num_query), counts)
    starts = np.cumsum(counts) - counts
    offsets = np.arange(len(qi)) - starts[qi]
    gj = g_order[lo[qi] + offsets]
    junk = lab.g_camids[gj] == lab.q_camids[qi]
    if lab.q_clothes is not None and lab.g_clothes is not None:
        junk |= lab.g_clothes[gj] == lab.q_clothes[qi]
    return qi, gj, junk


# -- the scoring core --------------------------------------------------------------------------------
def _score(qi: np.ndarray, pos: np.ndarray, num_relevant: np.ndarray, max_rank: int) -> EvalResult:
    """Metrics from the ranks of the retrieved correct matches.

    ``qi``/``pos``: query index and 0-based rank (junk excluded) of every retrieved
    correct match, sorted by query then rank; ``num_relevant``: correct matches in
    the gallery per query (retrieved or not).
    """
    n_q = len(num_relevant)
    valid = num_relevant > 0
    num_valid = int(valid.sum())
    if num_valid == 0:
        raise InvalidInputError("no query has a correct match in the gallery: nothing to score")
    found = np.bincount(qi, minlength=n_q)
    starts = np.cumsum(found) - found
    nth = np.arange(len(qi)) - starts[qi]  # 0-based index of the match among this query's matches
    precision = (nth + 1) / (pos + 1.0)
    ap_sum = np.bincount(qi, weights=precision, minlength=n_q)
    with np.errstate(invalid="ignore", divide="ignore"):
        ap = np.where(valid, ap_sum / np.maximum(num_relevant, 1), np.nan)
    has = found > 0
    first = np.full(n_q, -1, dtype=np.int64)
    last = np.full(n_q, -1, dtype=np.int64)
    first[has] = pos[starts[has]]
    last[has] = pos[starts[has] + found[has] - 1]
    all_found = has & (found == num_relevant)
    inp = np.zeros(n_q, dtype=np.float64)
    inp[all_found] = num_relevant[all_found] / (last[all_found] + 1.0)
    inp[~valid] = np.nan
    hits = first[valid & has]
    per_rank = np.bincount(np.minimum(hits, max_rank), minlength=max_rank + 1)[:max_rank]
    cmc = np.cumsum(per_rank) / float(num_valid)
    return EvalResult(
        cmc=cmc,
        mAP=float(np.mean(ap[valid])),
        mINP=float(np.mean(inp[valid])),
        num_queries=n_q,
        num_valid=num_valid,
        ap=ap,
        inp=inp,
        first_match=first,
        num_relevant=num_relevant.astype(np.int64),
    )


def _row_searchsorted(sorted_rows: np.ndarray, rows: np.ndarray, values: np.ndarray, right: bool) -> np.ndarray:
    """Vectorised ``np.searchsorted(sorted_rows[r], v)`` for many (row, value) pairs at once."""
    n = sorted_rows.shape[1]
    lo = np.zeros(len(rows), dtype=np.int64)
    hi = np.full(len(rows), n, dtype=np.int64)
    for _ in range(int(np.ceil(np.log2(n + 1))) + 1):
        active = lo < hi
        if not active.any():
            break
        mid = (lo + hi) // 2
        probe = sorted_rows[rows, np.minimum(mid, n - 1)]
        go_right = (probe <= values) if right else (probe < values)
        lo = np.where(active & go_right, mid + 1, lo)
        hi = np.where(active & ~go_right, mid, hi)
    return lo


def _check_max_rank(max_rank: int) -> int:
    if int(max_rank) < 1:
        raise InvalidInputError(f"max_rank {max_rank}: expected a positive integer")
    return int(max_rank)


def evaluate_distmat(
    distmat: np.ndarray,
    q_pids: np.ndarray,
    g_pids: np.ndarray,
    q_camids: np.ndarray,
    g_camids: np.ndarray,
    *,
    max_rank: int = 50,
    q_clothes: Optional[np.ndarray] = None,
    g_clothes: Optional[np.ndarray] = None,
    clothes_changing: bool = False,
    block_size: int = 64,
) -> EvalResult:
    """CMC, mAP and mINP of a (Q, G) distance matrix (smaller = more similar).

    Equals torchreid's ``evaluate_rank`` (Market-1501 rules) up to float
    rounding when no two distances in a row tie. Rows are processed in blocks.
    """
    max_rank = _check_max_rank(max_rank)
    dist = np.asarray(distmat)
    lab = _labels(q_pids, g_pids, q_camids, g_camids, q_clothes, g_clothes, clothes_changing)
    if dist.shape != (lab.num_query, lab.num_gallery):
        raise InvalidInputError(
            f"distance matrix of shape {dist.shape}: expected ({lab.num_query}, {lab.num_gallery})"
        )
    if not np.issubdtype(dist.dtype, np.number):
        raise InvalidInputError(f"distance matrix of type {dist.dtype}: expected numbers")
    qi, gj, junk = _same_person_pairs(lab)
    num_relevant = np.bincount(qi[~junk], minlength=lab.num_query)
    ranks = np.empty(len(qi), dtype=np.int64)
    bounds = np.searchsorted(qi, np.arange(0, lab.num_query + block_size, block_size))
    for b, start in enumerate(range(0, lab.num_query, block_size)):
        block = dist[start : start + block_size]
        if not np.all(np.isfinite(block)):
            raise InvalidInputError(f"distance matrix rows {start}..{start + len(block) - 1} hold NaN or inf")
        p0, p1 = bounds[b], bounds[b + 1]
        if p0 == p1:
            continue
        rows = qi[p0:p1] - start
        cols = gj[p0:p1]
        values = block[rows, cols]
        srt = np.sort(block, axis=1)
        less = _row_searchsorted(srt, rows, values, right=False)
        less_eq = _row_searchsorted(srt, rows, values, right=True)
        for t in np.flatnonzero(less_eq - less > 1):  # exact ties: lower gallery index first
            less[t] += int(np.count_nonzero(block[rows[t], : cols[t]] == values[t]))
        ranks[p0:p1] = less
    order = np.lexsort((ranks, qi))
    qi_s, ranks_s, junk_s = qi[order], ranks[order], junk[order]
    per_query = np.bincount(qi_s, minlength=lab.num_query)
    seg_start = np.cumsum(per_query) - per_query
    junk_cum = np.cumsum(junk_s)
    junk_before = junk_cum - junk_s - (junk_cum - junk_s)[seg_start[qi_s]]
    keep = ~junk_s
    pos = ranks_s[keep] - junk_before[keep]
    return _score(qi_s[keep], pos, num_relevant, max_rank)


def evaluate_ranked(
    ranked_gallery_idx: np.ndarray,
    q_pids: np.ndarray,
    g_pids: np.ndarray,
    q_camids: np.ndarray,
    g_camids: np.ndarray,
    *,
    max_rank: int = 50,
    q_clothes: Optional[np.ndarray] = None,
    g_clothes: Optional[np.ndarray] = None,
    clothes_changing: bool = False,
    block_size: Optional[int] = None,
) -> EvalResult:
    """CMC, mAP and mINP of ranked top-K gallery lists, shape (Q, K).

    ``ranked_gallery_idx[q]`` holds gallery indices, best first; -1 pads short
    lists. Correct matches missing from a list count as never retrieved: AP
    divides by every correct match in the gallery, CMC only sees the list, and
    mINP is 0 unless all of them were retrieved. With K = G (a full ranking)
    the result equals :func:`evaluate_distmat`.
    """
    max_rank = _check_max_rank(max_rank)
    lab = _labels(q_pids, g_pids, q_camids, g_camids, q_clothes, g_clothes, clothes_changing)
    ranked = np.asarray(ranked_gallery_idx)
    if ranked.ndim != 2 or ranked.shape[0] != lab.num_query:
        raise InvalidInputError(f"ranked lists of shape {ranked.shape}: expected ({lab.num_query}, K)")
    if ranked.size and not np.issubdtype(ranked.dtype, np.integer):
        raise InvalidInputError(f"ranked lists of type {ranked.dtype}: expected integer gallery indices")
    if ranked.size and (ranked.max() >= lab.num_gallery or ranked.min() < -1):
        raise InvalidInputError(
            f"ranked lists hold indices {ranked.min()}..{ranked.max()}: expected 0..{lab.num_gallery - 1} or -1"
        )
    qi_all, _, junk_all = _same_person_pairs(lab)
    num_relevant = np.bincount(qi_all[~junk_all], minlength=lab.num_query)
    qi_parts: list[np.ndarray] = []
    pos_parts: list[np.ndarray] = []
    if block_size is None:  # about a million list entries per block keeps the temporaries in cache
        block_size = max(1, (1 << 20) // max(1, ranked.shape[1]))
    for start in range(0, lab.num_query, block_size):
        idx = ranked[start : start + block_size]
        pad = idx < 0
        safe = np.where(pad, 0, idx)
        srt = np.sort(idx, axis=1)
        dup = (srt[:, 1:] == srt[:, :-1]) & (srt[:, 1:] >= 0)
        if dup.any():
            row = int(np.flatnonzero(dup.any(axis=1))[0]) + start
            raise InvalidInputError(f"ranked list of query {row} holds a gallery index twice")
        q_slice = slice(start, start + len(idx))
        same = (lab.g_pids[safe] == lab.q_pids[q_slice, None]) & ~pad
        junk = same & (lab.g_camids[safe] == lab.q_camids[q_slice, None])
        if lab.q_clothes is not None and lab.g_clothes is not None:
            junk |= same & (lab.g_clothes[safe] == lab.q_clothes[q_slice, None])
        scored = ~pad & ~junk
        rank_in_list = np.cumsum(scored, axis=1, dtype=np.int32) - 1
        rows, cols = np.nonzero(same & ~junk)
        qi_parts.append(rows + start)
        pos_parts.append(rank_in_list[rows, cols])
    qi = np.concatenate(qi_parts) if qi_parts else np.zeros(0, np.int64)
    pos = np.concatenate(pos_parts) if pos_parts else np.zeros(0, np.int64)
    return _score(qi.astype(np.int64), pos.astype(np.int64), num_relevant, max_rank)
