"""Re-rankers: steps that re-score a candidate pool (see ``base.Reranker``).

Every step works one query row at a time on that row's pool, the hook states
and the vectors / fields of the pool's candidates and of their stored
neighbours, so a query's list never depends on the other queries of the call
(``same_person`` pooling is the explicit exception).

* ``Expand``: completes an approximate first stage: the stored neighbours of the
  pool's first ``top`` candidates are scored by cosine and enter the pool where they
  beat its last candidate by more than rounding (so an exact pool never changes).
  A gallery's neighbour lists hold the same person's other crops, which a graph's
  pruned links and a narrow beam tend to miss; with it the first stage can walk a
  beam half as wide (``first_stage_beam``) when the search has no filter.
* ``CameraNormalize``: removes each camera's mean vector (``camera_stats``)
  from the query and the candidates before matching; only for queries whose
  camera has statistics in the index (``unknown_strength`` otherwise, 0 by
  default: centring both sides with the gallery's global mean was measured to
  hurt on the development sets). Later steps match in the same normalised space.
* ``Centralize``: each candidate becomes the re-normalised sum of itself, the
  other crops of its track (certain: weight ``track_weight``), and its mutual
  stored neighbours weighted by a trust decided per query: a neighbour counts
  only as far as its similarity to the candidate exceeds the query's own best
  match by ``margin`` (ramp ``ramp``), scaled by ``alpha``. On a single-shot
  gallery a row's nearest neighbours are no closer to it than a true
  cross-camera match, so nothing is pooled and the ranking stays cosine; on a
  multi-shot gallery the same person's crops are much closer and are pooled.
  ``trust="full"`` (weight 1 for every mutual neighbour) is Pose2ID's NFC.
* ``QueryExpansion``: alpha-QE with the query's top-``n`` candidates.
* ``KReciprocal``: k-reciprocal re-ranking of each query within its pool; gated per
  query in the default (only where the gallery around the query is multi-shot).
* ``AttributeFusion``: ``attributes.fusion.fuse_rank`` on the pool.
* ``SiteSplit`` / ``SiteMerge``: the candidates of cameras not linked to the query's
  camera (another site, ``camera_links``) skip the steps between them and keep their places.
* ``SamePersonPool``: with ``ctx.same_person``, one list for all the queries.
"""
from __future__ import annotations

from typing import Any, Callable, Optional

import numpy as np

from ..errors import InvalidInputError
from .base import Candidates, RerankContext, Reranker
from .hooks import CameraLinks, CameraStats, NeighbourTable

#: candidates re-scored by the neighbour-based steps for ``k`` answers: max(k, POOL)
POOL = 100


def _normalize(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), np.float32(1e-12))


class _ById:
    """Arrays read from the gallery by id, kept for the rest of one call: every step reads the same candidates
    (re-ordered, or a part of them), so each id is read from the gallery once per call."""

    def __init__(self, read: Callable[[np.ndarray], dict[str, Any]]):
        self.read = read
        self.ids = np.zeros(0, np.int64)
        self.data: dict[str, np.ndarray] = {}

    def get(self, ids: np.ndarray) -> dict[str, np.ndarray]:
        ids = np.asarray(ids, np.int64)
        new = np.setdiff1d(ids, self.ids)
        if len(new):
            got = {k: np.asarray(v) for k, v in self.read(new).items() if v is not None}
            if self.data:
                got = {k: np.concatenate([self.data[k], v]) for k, v in got.items() if k in self.data}
            all_ids = np.concatenate([self.ids, new])
            order = np.argsort(all_ids, kind="stable")
            self.ids, self.data = all_ids[order], {k: v[order] for k, v in got.items()}
        pos = np.searchsorted(self.ids, ids)
        return {k: v[pos] for k, v in self.data.items()}


def _vectors(ctx: RerankContext, ids: np.ndarray) -> np.ndarray:
    """Stored vectors of candidates (float32), read from the gallery once per call."""
    if len(ids) == 0:
        return np.zeros((0, 0), np.float32)
    cache = ctx.options.setdefault(
        "_vectors", _ById(lambda i: {"v": np.asarray(ctx.gallery.vectors(i), np.float32)}))
    return cache.get(ids)["v"]


def _fields(ctx: RerankContext, ids: np.ndarray) -> dict[str, np.ndarray]:
    """Scalar fields (camera, track, ...) of candidates, read from the gallery once per call."""
    return ctx.options.setdefault("_fields", _ById(ctx.gallery.fields)).get(ids)


class _Space:
    """The matching space of one query: camera-mean removal (strength ``lam``) then re-normalisation."""

    def __init__(self, ctx: RerankContext, row: int):
        cam = ctx.options.get("_camera")
        self.lam = 0.0 if cam is None else float(cam["lam"][row])
        self.stats: Optional[CameraStats] = None if cam is None else cam["stats"]
        self.qmean = None if cam is None else cam["qmean"][row]
        self.min_count = 1 if cam is None else cam["min_count"]
        self.ctx = ctx

    def query(self, q: np.ndarray) -> np.ndarray:
        if self.lam == 0.0 or self.qmean is None:
            return _normalize(q)
        return _normalize(q - self.lam * self.qmean)

    def candidates(self, ids: np.ndarray, vecs: Optional[np.ndarray] = None) -> np.ndarray:
        ids = np.asarray(ids, np.int64)
        if vecs is None:
            vecs = _vectors(self.ctx, ids)
        if self.lam == 0.0 or self.stats is None or len(ids) == 0:
            return _normalize(vecs)
        cams = _fields(self.ctx, ids).get("camera")
        glob = self.stats.global_mean()
        means = np.empty_like(vecs)
        for c in set(cams.tolist() if cams is not None else [None]):
            m = self.stats.mean(c, self.min_count)
            m = glob if m is None else m
            sel = cams == c if cams is not None else slice(None)
            means[sel] = 0.0 if m is None else m
        return _normalize(vecs - self.lam * means)


def _rows(pool: Candidates) -> list[np.ndarray]:
    return [pool.ids[r][pool.ids[r] >= 0] for r in range(len(pool.ids))]


def _replace_row(ids_out: np.ndarray, sc_out: np.ndarray, r: int, ids: np.ndarray, scores: np.ndarray) -> None:
    ids_out[r] = -1
    sc_out[r] = -np.inf
    ids_out[r, :len(ids)] = ids
    sc_out[r, :len(ids)] = scores


class Expand(Reranker):
    """The first stage's pool completed with the stored neighbours of its best candidates (module docstring)."""

    name = "expand"
    hooks = ("neighbours",)
    #: a neighbour enters only when its cosine beats the pool's last by more than two float32 products of the
    #: same vectors can differ, so the pool of an exact search stays as it is
    MARGIN = 1e-5

    def __init__(self, top: int = 20, beam: float = 0.5, pool: int = POOL):
        if top < 1 or pool < 1 or not 0 < beam <= 1:
            raise InvalidInputError(f"Expand: top and pool must be >= 1 and beam in (0, 1], got {top}, {pool}, {beam}")
        self.top, self.beam, self.pool = int(top), float(beam), int(pool)

    def pool_size(self, k: int) -> int:
        return max(k, self.pool)

    def first_stage_beam(self, where: Any, k: int) -> Optional[float]:
        # neighbour lists ignore filters: under one, few neighbours pass and the beam keeps its width
        return self.beam if where is None or getattr(where, "is_empty", False) else 1.0

    def rerank(self, queries: np.ndarray, pool: Candidates, ctx: RerankContext) -> Candidates:
        table = ctx.gallery.state("neighbours")
        if not isinstance(table, NeighbourTable) or table.width == 0:
            return pool
        where = ctx.where if ctx.where is not None and not getattr(ctx.where, "is_empty", False) else None
        ids_out, sc_out = pool.ids.copy(), pool.scores.copy()
        width = pool.ids.shape[1]
        for r, ids in enumerate(_rows(pool)):
            nb = table.lists(ids[:self.top])[0]
            new = np.setdiff1d(nb[nb >= 0], ids)
            if where is not None and len(new):  # past the call's cache too (below)
                new = new[where.mask(new, ctx.gallery.fields(new))]
            if not len(new):
                continue
            # read past the call's cache: most of them never enter, and a call of many queries would keep them all
            sims = np.asarray(ctx.gallery.vectors(new), np.float32) @ np.asarray(queries[r], np.float32)
            last = float(pool.scores[r, len(ids) - 1]) if len(ids) == width else -np.inf
            enter = sims > last + self.MARGIN
            if not enter.any():
                continue
            # the pool first, then the entering ids (ascending): among equal scores the pool's order is kept
            row = Candidates.sorted(np.concatenate([ids, new[enter]])[None],
                                    np.concatenate([pool.scores[r, :len(ids)], sims[enter]])[None])
            _replace_row(ids_out, sc_out, r, row.ids[0, :width], row.scores[0, :width])
        return Candidates.sorted(ids_out, sc_out)


class CameraNormalize(Reranker):
    """Cosine after removing per-camera mean vectors (query camera known to the index; see module docstring)."""

    name = "camera_normalize"
    hooks = ("camera_stats",)

    def __init__(self, strength: float = 1.0, unknown_strength: float = 0.0, min_count: int = 10):
        if strength < 0 or unknown_strength < 0 or min_count < 1:
            raise InvalidInputError("CameraNormalize: strengths must be >= 0 and min_count >= 1")
        self.strength, self.unknown_strength, self.min_count = float(strength), float(unknown_strength), int(min_count)

    def pool_size(self, k: int) -> int:
        return k

    def rerank(self, queries: np.ndarray, pool: Candidates, ctx: RerankContext) -> Candidates:
        stats = ctx.gallery.state("camera_stats")
        if not isinstance(stats, CameraStats) or int(stats.counts.sum()) == 0:
            return pool
        nq = len(queries)
        cams = list(ctx.query_cameras) + [None] * (nq - len(ctx.query_cameras))
        glob = stats.global_mean()
        lam = np.zeros(nq, np.float32)
        qmean = np.zeros_like(np.asarray(queries, np.float32))
        for r in range(nq):
            m = stats.mean(cams[r], self.min_count) if cams[r] is not None else None
            lam[r], qmean[r] = (self.strength, m) if m is not None else (self.unknown_strength, glob)
        ctx.options["_camera"] = {"lam": lam, "qmean": qmean, "stats": stats, "min_count": self.min_count}
        ids_out, sc_out = pool.ids.copy(), pool.scores.copy()
        for r, ids in enumerate(_rows(pool)):
            if lam[r] == 0.0 or len(ids) == 0:
                continue
            space = _Space(ctx, r)
            _replace_row(ids_out, sc_out, r, ids, space.candidates(ids) @ space.query(queries[r]))
        return Candidates.sorted(ids_out, sc_out)


class Centralize(Reranker):
    """Candidates centralized with their track and trusted mutual neighbours (see module docstring)."""

    name = "centralize"
    hooks = ("neighbours",)

    def __init__(self, k1: int = 2, k2: int = 4, alpha: float = 0.3, margin: float = 0.15, ramp: float = 0.05,
                 trust: str = "adaptive", track_weight: float = 1.0, pool: int = POOL):
        if trust not in ("adaptive", "full"):
            raise InvalidInputError(f"Centralize: trust must be 'adaptive' or 'full', got {trust!r}")
        if k1 < 1 or k2 < 1 or alpha < 0 or ramp <= 0 or track_weight < 0:
            raise InvalidInputError("Centralize: k1, k2 >= 1, alpha, track_weight >= 0, ramp > 0")
        self.k1, self.k2 = int(k1), int(k2)
        self.alpha, self.margin, self.ramp = float(alpha), float(margin), float(ramp)
        self.trust, self.track_weight, self.pool = trust, float(track_weight), int(pool)

    def pool_size(self, k: int) -> int:
        return max(k, self.pool)

    def weights(self, ids: np.ndarray, raw_top1: float, table: Optional[NeighbourTable]
                ) -> tuple[np.ndarray, np.ndarray]:
        """(P, k1) neighbour ids (-1 none) and their weights for one query (``raw_top1``: its best raw cosine)."""
        if table is None or table.width == 0:
            return np.full((len(ids), 0), -1, np.int64), np.zeros((len(ids), 0), np.float32)
        k1 = min(self.k1, table.width)
        nb, ns = table.lists(ids)
        nb, ns = nb[:, :k1], ns[:, :k1]
        back = table.lists(np.maximum(nb, 0))[0][..., :min(self.k2, table.width)]
        mutual = (back == ids[:, None, None]).any(-1) & (nb >= 0)
        if self.trust == "full":
            w: np.ndarray = np.ones(nb.shape, np.float32)
        else:
            w = self.alpha * np.clip((ns - (raw_top1 + self.margin)) / self.ramp, 0.0, 1.0)
        return np.where(mutual, nb, -1), np.where(mutual, w, 0.0).astype(np.float32)

    def rerank(self, queries: np.ndarray, pool: Candidates, ctx: RerankContext) -> Candidates:
        table = ctx.gallery.state("neighbours")
        table = table if isinstance(table, NeighbourTable) else None
        ids_out, sc_out = pool.ids.copy(), pool.scores.copy()
        for r, ids in enumerate(_rows(pool)):
            if len(ids) == 0:
                continue
            space = _Space(ctx, r)
            raw = _vectors(ctx, ids)
            raw_top1 = float((raw @ np.asarray(queries[r], np.float32)).max())
            nb, w = self.weights(ids, raw_top1, table)
            tracks = _fields(ctx, ids).get("track")
            members: dict[str, np.ndarray] = {}
            if tracks is not None and self.track_weight > 0:
                named = sorted({str(t) for t in tracks if t is not None})
                members = ctx.gallery.track_members(named) if named else {}
                if members:  # same-track neighbours are counted with the track
                    no_members = np.zeros(0, np.int64)
                    same = np.array([[t is not None and int(j) in set(members.get(str(t), no_members).tolist())
                                      for j in row] for t, row in zip(tracks, nb)], np.bool_).reshape(nb.shape)
                    w = np.where(same, 0.0, w)
            need = np.unique(np.concatenate([ids, nb[w > 0]] + [m for m in members.values()]).astype(np.int64))
            vec = space.candidates(need)
            at = {int(i): t for t, i in enumerate(need)}
            cent = vec[[at[int(i)] for i in ids]].copy()
            pr, pc = np.nonzero(w > 0)
            if len(pr):
                np.add.at(cent, pr, w[pr, pc, None] * vec[[at[int(j)] for j in nb[pr, pc]]])
            if members and tracks is not None:
                for p, (gid, t) in enumerate(zip(ids, tracks)):
                    if t is None or str(t) not in members:
                        continue
                    others = [at[int(m)] for m in members[str(t)] if int(m) != int(gid)]
                    if others:
                        cent[p] += self.track_weight * vec[others].sum(0)
            _replace_row(ids_out, sc_out, r, ids, _normalize(cent) @ space.query(queries[r]))
        return Candidates.sorted(ids_out, sc_out)


class QueryExpansion(Reranker):
    """Alpha-QE: the query plus its top-``n`` candidates weighted by max(score, 0) ** alpha, then re-scored."""

    name = "query_expansion"

    def __init__(self, n: int = 3, alpha: float = 3.0, pool: int = POOL):
        if n < 0 or alpha < 0:
            raise InvalidInputError("QueryExpansion: n and alpha must be >= 0")
        self.n, self.alpha, self.pool = int(n), float(alpha), int(pool)

    def pool_size(self, k: int) -> int:
        return max(k, self.pool)

    def rerank(self, queries: np.ndarray, pool: Candidates, ctx: RerankContext) -> Candidates:
        ids_out, sc_out = pool.ids.copy(), pool.scores.copy()
        for r, ids in enumerate(_rows(pool)):
            if len(ids) == 0 or self.n == 0:
                continue
            space = _Space(ctx, r)
            vec = space.candidates(ids)
            top = min(self.n, len(ids))
            w = np.maximum(pool.scores[r, :top], 0.0) ** self.alpha
            q = _normalize(space.query(queries[r]) + (w[:, None] * vec[:top]).sum(0))
            _replace_row(ids_out, sc_out, r, ids, vec @ q)
        return Candidates.sorted(ids_out, sc_out)


class KReciprocal(Reranker):
    """k-reciprocal re-ranking (Zhong et al.) of each query within its own candidate pool.

    With ``gate_margin`` set it is gated per query (the default preset): it re-ranks only when the
    gallery around the query is multi-shot, that is when at least ``gate_share`` of the query's top
    ``gate_top`` candidates have a stored nearest neighbour closer to them (raw cosine) than the
    query's own best match plus ``gate_margin``. On a single-shot gallery a candidate's nearest
    gallery neighbour is another person, no closer than the query's match, so the gate stays shut
    and the previous steps' ranking stands (a ``gate_share`` above 1 never opens it). Re-ranked rows
    score ``1 - distance``.

    With ``tail_lambda`` set, a re-ranked list has a safe head and a strong tail: its first ``head``
    answers are the best by the ``lambda_value`` blend (mostly the original distance, which protects
    Rank-1 and Rank-5), the rest of the pool follows by the ``tail_lambda`` blend (mostly the
    k-reciprocal Jaccard distance, which finds the deeper matches that mAP counts). An answer is a
    track where candidates have one: the head runs in its own order until it holds ``head``
    distinct tracks (crops without a track count one each), so the first ``head`` tracks of a
    footage gallery are protected as the first ``head`` crops of a crop gallery are. The tail has a
    gate of its own, ``tail_share`` (None: the same as ``gate_share``): where only the tail's gate
    opens, the head is the first ``head`` of the incoming order. The tail's scores are shifted below
    the head's lowest, keeping their differences.

    With ``head_pool`` set, the head's blend is computed among the pool's best ``head_pool``
    candidates by raw cosine (the first stage's top ``head_pool``) and the tail's among the whole
    pool (``pool``): a tail pool larger than the head's finds deeper matches, and the head is what a
    pool of ``head_pool`` gives.
    """

    name = "k_reciprocal"
    hooks = ("neighbours",)

    def __init__(self, k1: int = 20, k2: int = 6, lambda_value: float = 0.3, pool: int = POOL,
                 gate_margin: Optional[float] = None, gate_share: float = 0.8, gate_top: int = 10,
                 head: int = 0, tail_lambda: Optional[float] = None, tail_share: Optional[float] = None,
                 head_pool: Optional[int] = None):
        if k1 < 1 or k2 < 1 or not 0.0 <= lambda_value <= 1.0 or gate_top < 1 or gate_share < 0 or head < 0 \
                or (tail_lambda is not None and not 0.0 <= tail_lambda <= 1.0) \
                or (tail_share is not None and tail_share < 0) or (head_pool is not None and head_pool < 2):
            raise InvalidInputError("KReciprocal: k1, k2, gate_top >= 1, head >= 0, lambda_value and tail_lambda "
                                    "in [0, 1], gate_share and tail_share >= 0, head_pool >= 2 or None")
        self.k1, self.k2, self.lambda_value, self.pool = int(k1), int(k2), float(lambda_value), int(pool)
        self.gate_margin = None if gate_margin is None else float(gate_margin)
        self.gate_share, self.gate_top = float(gate_share), int(gate_top)
        self.head, self.tail_lambda = int(head), None if tail_lambda is None else float(tail_lambda)
        self.tail_share = self.gate_share if tail_share is None else float(tail_share)
        self.head_pool = None if head_pool is None else int(head_pool)

    def pool_size(self, k: int) -> int:
        return max(k, self.pool)

    def first_stage_beam(self, where: Any, k: int) -> Optional[float]:
        """With a head pool, a first stage of at most ``pool`` results needs the recall of only the head's:
        its beam is the one for ``head_pool`` results (a graph's default beam grows with k as twice k, so
        ``head_pool / k`` of it). The tail's candidates past the head's are re-ranked by k-reciprocal
        evidence and may miss a few; results past the pool are answers in cosine order, which keep it."""
        if self.head_pool is None or not self.head_pool < k <= self.pool:
            return None
        return self.head_pool / k

    def share(self, query: np.ndarray, ids: np.ndarray, ctx: RerankContext, raw: Optional[np.ndarray] = None
              ) -> float:
        """The gate's statistic for one query's pool (``ids``, best first; ``raw``: their stored vectors): the
        share of its top ``gate_top`` whose nearest stored neighbour beats the query's best match by
        ``gate_margin``; 1 when ungated, 0 when the index keeps no neighbour lists."""
        if self.gate_margin is None:
            return 1.0
        table = ctx.gallery.state("neighbours")
        if not isinstance(table, NeighbourTable) or table.width == 0:
            return 0.0
        raw = np.asarray(_vectors(ctx, ids) if raw is None else raw, np.float32)
        raw_top1 = float((raw @ np.asarray(query, np.float32)).max())
        first = table.lists(ids[:self.gate_top])[1][:, 0]
        return float(np.mean(first > raw_top1 + self.gate_margin))

    def gate(self, query: np.ndarray, ids: np.ndarray, ctx: RerankContext, raw: Optional[np.ndarray] = None) -> bool:
        """Whether this query's pool is re-ranked by the ``lambda_value`` blend (see the class docstring)."""
        return self.share(query, ids, ctx, raw) >= self.gate_share

    def rerank(self, queries: np.ndarray, pool: Candidates, ctx: RerankContext) -> Candidates:
        ids_out, sc_out = pool.ids.copy(), pool.scores.copy()
        for r, ids in enumerate(_rows(pool)):
            if len(ids) < 2:
                continue
            raw = _vectors(ctx, ids)  # the gate and the space use them
            share = self.share(queries[r], ids, ctx, raw)
            main, tail = share >= self.gate_share, self.tail_lambda is not None and share >= self.tail_share
            if not (main or tail):
                continue
            space = _Space(ctx, r)
            cands = space.candidates(ids, raw)
            query = space.query(queries[r])
            blend = self._blend(query, cands)
            if not main:
                head_s = pool.scores[r, :len(ids)]
            elif self.head_pool is None or self.head_pool >= len(ids):
                head_s = 1.0 - blend(self.lambda_value)
            else:  # among the first stage's best head_pool (incoming order); the others cannot enter the head
                best = np.sort(np.argsort(-(raw @ np.asarray(queries[r], np.float32)), kind="stable")[:self.head_pool])
                part = 1.0 - self._blend(query, cands[best])(self.lambda_value)
                head_s = np.full(len(ids), part.min() - 1.0, np.float32)
                head_s[best] = part
            if not tail or self.tail_lambda is None:
                _replace_row(ids_out, sc_out, r, ids, head_s)
                continue
            order, scores = head_tail_order(head_s, 1.0 - blend(self.tail_lambda), self.head,
                                            _answer_units(_fields(ctx, ids).get("track")))
            _replace_row(ids_out, sc_out, r, ids[order], scores)
        return Candidates.sorted(ids_out, sc_out)

    def _blend(self, query: np.ndarray, cands: np.ndarray) -> Callable[[float], np.ndarray]:
        """lambda -> (P,) k-reciprocal distances of one query to its pool, in pool order."""
        from .kreciprocal import DENSE_POOL_MAX, k_reciprocal_pool_parts, k_reciprocal_rerank

        if len(cands) <= DENSE_POOL_MAX:  # the usual pools: dense matrices, one computation for every blend
            parts: list[np.ndarray] = []  # on the first blend asked for (a head on a smaller pool may need none)

            def dense(lam: float) -> np.ndarray:
                if not parts:
                    parts.extend(k_reciprocal_pool_parts(query, cands, self.k1, self.k2))
                return ((1.0 - lam) * parts[0] + lam * parts[1]).astype(np.float32)
            return dense

        def sparse(lam: float) -> np.ndarray:
            d, pos = k_reciprocal_rerank(query[None], cands, len(cands), k1=self.k1, k2=self.k2, lambda_value=lam)
            out = np.empty(len(cands), np.float32)
            out[pos[0]] = d[0]
            return out
        return sparse


def _answer_units(tracks: Optional[np.ndarray]) -> Optional[np.ndarray]:
    """What counts as one answer in a list: a track (its crops are one person seen once), else a crop. None when
    no candidate has a track."""
    if tracks is None or all(t is None for t in tracks):
        return None
    return np.array([f"t:{t}" if t is not None else f"c:{p}" for p, t in enumerate(tracks)], dtype=object)


def head_tail_order(head_s: np.ndarray, tail_s: np.ndarray, head: int, units: Optional[np.ndarray] = None
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Positions and scores of a list whose first ``head`` answers are the best by ``head_s`` and whose rest
    follows by ``tail_s`` (both scores of the same items, higher is better, ties by position); the head keeps
    its scores, the tail's are shifted strictly below the head's lowest. ``units`` (one label per item): an
    answer is a unit, so the head runs in ``head_s`` order until it holds ``head`` distinct units (the crops of
    one track count once); None: an answer is an item."""
    ranked = np.argsort(-np.asarray(head_s, np.float64), kind="stable")
    if units is None:
        first = ranked[:min(head, len(head_s))]
    else:
        seen: set[Any] = set()
        stop = len(ranked)
        for pos, item in enumerate(ranked):
            if units[item] not in seen and len(seen) == head:  # the first item of answer head + 1
                stop = pos
                break
            seen.add(units[item])
        first = ranked[:stop]
    rest = np.setdiff1d(np.arange(len(tail_s)), first)
    rest = rest[np.argsort(-np.asarray(tail_s, np.float64)[rest], kind="stable")]
    top = np.asarray(head_s, np.float32)[first]
    low = np.asarray(tail_s, np.float64)[rest]
    if len(first) and len(rest):
        floor = np.nextafter(np.float32(top.min()), np.float32(-np.inf))
        low = np.minimum(low - max(0.0, float(low[0]) - float(floor)), floor)
    return np.concatenate([first, rest]), np.concatenate([top, low.astype(np.float32)])


class AttributeFusion(Reranker):
    """Attribute fusion (``attributes.fusion.fuse_rank``) of the first max(k, FUSION_POOL) of the pool; query
    attributes from the context."""

    name = "attribute_fusion"

    def __init__(self, mode: Any = "clothes-change"):
        from ..attributes import fusion

        self.config = fusion.resolve_fusion(mode)

    def pool_size(self, k: int) -> int:
        from ..attributes.fusion import FUSION_POOL

        return max(k, FUSION_POOL)

    def rerank(self, queries: np.ndarray, pool: Candidates, ctx: RerankContext) -> Candidates:
        from ..attributes import fusion

        if self.config is None:
            return pool
        if ctx.query_attributes is None:
            raise InvalidInputError("attribute fusion needs the queries' attributes (ctx.query_attributes)")
        # the first max(k, FUSION_POOL) of the re-ranked pool (a preset's pool can be larger); the caller lists
        # the rest of the first stage after them
        ids = pool.ids[:, :self.pool_size(ctx.k)]
        cand = self._candidate_attributes(ids, ctx)
        qa = np.asarray(ctx.query_attributes, np.float32)
        if ctx.same_person and len(qa) > 1:  # one person: one attribute estimate, as one list
            qa = np.repeat(np.nanmean(qa, axis=0, keepdims=True), len(qa), axis=0)
        dist = np.where(ids >= 0, 1.0 - pool.scores[:, :ids.shape[1]], np.inf).astype(np.float32)
        d, pos = fusion.fuse_rank(dist, ids, qa, cand, ids.shape[1], self.config)
        return Candidates.sorted(pos, np.where(pos >= 0, 1.0 - d, -np.inf))

    def _candidate_attributes(self, ids: np.ndarray, ctx: RerankContext) -> np.ndarray:
        """(Q, P, WIDTH) stored attributes of the candidates, smoothed over their mutual gallery
        neighbours (from the ``neighbours`` index hook) for the attributes the mode names."""
        from ..attributes import fusion
        from ..attributes.groups import notes_to_matrix
        from ..attributes.model import ANNOTATOR_NAME

        assert self.config is not None  # rerank() returns early without a config
        cands = np.unique(ids[ids >= 0])
        table = ctx.gallery.state("neighbours") if self.config.smooth else None
        k = self.config.smooth_k
        rows = cands
        if table is not None and len(cands):
            nb, _ = table.lists(cands)
            rows = np.unique(np.concatenate([cands, nb[:, :k].reshape(-1)]))
            rows = rows[rows >= 0]
        found = ctx.gallery.rows(rows.tolist())
        attrs = notes_to_matrix([(found.get(int(i), {}).get("extra") or {}).get(ANNOTATOR_NAME) for i in rows])
        if table is not None and len(rows):
            nb, _ = table.lists(rows)
            nb = nb[:, :k]
            local = np.searchsorted(rows, nb)
            local = np.where((nb >= 0) & (rows[np.clip(local, 0, len(rows) - 1)] == nb), local, -1)
            attrs = fusion.smooth_attributes(attrs, local, self.config.smooth)
        width = attrs.shape[1] if attrs.ndim == 2 else notes_to_matrix([None]).shape[1]
        out = np.full((*ids.shape, width), np.nan, np.float32)
        if len(rows):
            at = np.clip(np.searchsorted(rows, ids), 0, len(rows) - 1)
            out[:] = attrs[at]
            out[ids < 0] = np.nan
        return out


class SiteSplit(Reranker):
    """Keeps the candidates of cameras not linked to the query's camera (``CameraLinks``: their crops' nearest
    neighbours of other cameras rarely fall there, so they see other people: another site) out of the steps
    that follow, until ``SiteMerge`` puts them back where they came in. An index that mixes sites then re-ranks
    only the query's own site, and other sites' crops keep their places, so the camera means of other sites
    (and their neighbours) cannot lift them. With no query camera, no link statistics for it, or every
    candidate linked, the pool goes on unchanged."""

    name = "site_split"
    hooks = ("camera_links",)

    def __init__(self, share: float = 0.5, min_links: int = 20):
        if not 0.0 < share <= 1.0 or min_links < 1:
            raise InvalidInputError("SiteSplit: share in (0, 1], min_links >= 1")
        self.share, self.min_links = float(share), int(min_links)

    def rerank(self, queries: np.ndarray, pool: Candidates, ctx: RerankContext) -> Candidates:
        links = ctx.gallery.state("camera_links")
        held: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        ctx.options["_site"] = held
        if not isinstance(links, CameraLinks) or not links.cameras:
            return pool
        cams = list(ctx.query_cameras) + [None] * (len(queries) - len(ctx.query_cameras))
        ids_out, sc_out = pool.ids.copy(), pool.scores.copy()
        for r, ids in enumerate(_rows(pool)):
            if cams[r] is None or len(ids) == 0:
                continue
            ok = links.linked(cams[r], _fields(ctx, ids).get("camera"), self.share, self.min_links)
            if ok.all():
                continue
            held[r] = (ids.copy(), pool.scores[r, :len(ids)].copy(), ok)
            _replace_row(ids_out, sc_out, r, ids[ok], pool.scores[r, :len(ids)][ok])
        return Candidates(ids_out, sc_out) if held else pool


class SiteMerge(Reranker):
    """Puts the candidates ``SiteSplit`` held back into their incoming places: each place of a linked candidate
    takes the next one of the re-ranked list, each other place keeps its candidate; the scores are the incoming
    ones by place (one descending list)."""

    name = "site_merge"

    def rerank(self, queries: np.ndarray, pool: Candidates, ctx: RerankContext) -> Candidates:
        held = ctx.options.pop("_site", None)
        if not held:
            return pool
        ids_out, sc_out = pool.ids.copy(), pool.scores.copy()
        for r, (ids, scores, ok) in held.items():
            ranked = pool.ids[r][pool.ids[r] >= 0]
            if len(ranked) == int(ok.sum()):
                merged = ids.copy()
                merged[ok] = ranked
                _replace_row(ids_out, sc_out, r, merged, scores)
            else:  # a step changed the row's size (none of the shipped ones does): the held ones follow it
                rest = ids[~ok][~np.isin(ids[~ok], ranked)]
                floor = float(pool.scores[r, :len(ranked)].min()) if len(ranked) else 0.0
                _replace_row(ids_out, sc_out, r, np.concatenate([ranked, rest]), np.concatenate(
                    [pool.scores[r, :len(ranked)], floor - 1.0 - np.arange(len(rest), dtype=np.float32)]))
        return Candidates(ids_out, sc_out)


class SamePersonPool(Reranker):
    """With ``ctx.same_person``: every row becomes one list, scored by the mean over the queries
    (a candidate missing from a query's pool counts that pool's lowest score)."""

    name = "same_person"

    def pool_size(self, k: int) -> int:
        return max(k, 100)  # several views of one person: a deep pool lets their lists overlap

    def rerank(self, queries: np.ndarray, pool: Candidates, ctx: RerankContext) -> Candidates:
        if not ctx.same_person or len(pool.ids) < 2:
            return pool
        rows = _rows(pool)
        union = np.unique(np.concatenate(rows)) if rows else np.zeros(0, np.int64)
        total = np.zeros(len(union), np.float64)
        for r, ids in enumerate(rows):
            sc = pool.scores[r, :len(ids)]
            floor = float(sc.min()) if len(sc) else 0.0
            row = np.full(len(union), floor)
            row[np.searchsorted(union, ids)] = sc
            total += row
        width = max(pool.ids.shape[1], len(union))
        ids_out = np.full((len(rows), width), -1, np.int64)
        sc_out = np.full((len(rows), width), -np.inf, np.float32)
        ids_out[:, :len(union)] = union
        sc_out[:, :len(union)] = (total / len(rows)).astype(np.float32)
        return Candidates.sorted(ids_out, sc_out)
