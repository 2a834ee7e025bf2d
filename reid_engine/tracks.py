"""Track-level answers: one hit per appearance of a person (camera, start and end time, best crop).

Every track of ingested footage has a row in the ``tracks`` table with the
normalised mean embedding of its kept crops. A track query ranks those
embeddings instead of the crops, so fifty near-identical crops of one walk past
a camera come back as one hit.

The candidates come from the vector backend: the query's nearest crops (at
least ``TRACK_POOL_MIN``, ``TRACK_POOL_PER_HIT`` per track wanted, filtered
inside the search) name the tracks that are then scored by their mean
embeddings, read from SQL for those tracks only. A gallery no larger than the
pool therefore gives exactly the ranking of every track; a larger one misses a
track only when none of its crops is among the query's nearest.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Optional, Sequence, Union

import numpy as np
import sqlalchemy as sa

from .errors import InvalidInputError
from .index import db
from .index.backend import SearchFilter, SearchParams
from .ingest.crops import parse_time
from .results import Hit, check_queries

if TYPE_CHECKING:
    from .index.store import IndexStore

#: tracks scored per matrix product; keeps memory flat for large galleries
_BLOCK = 65536
#: nearest crops a track query looks at: at least this many, and this many per track wanted
TRACK_POOL_MIN = 1000
TRACK_POOL_PER_HIT = 50
#: tracks read from SQL per statement
_SQL_CHUNK = 500


@dataclass
class TrackHit:
    """One appearance of a person in a ranked answer."""

    rank: int
    track: str
    distance: float  # cosine distance between the query and the track's mean embedding
    camera: Optional[str]
    source: Optional[str]
    start_time: Optional[float]
    end_time: Optional[float]
    start_frame: Optional[int]
    end_frame: Optional[int]
    n_frames: int
    crop_ids: list[int]
    best: Hit  # the track's best crop (box and frame for showing it)
    extra: Optional[dict[str, Any]] = None

    # what showing an answer needs, with the same names as a crop hit
    @property
    def frame(self) -> Optional[int]:
        return self.best.frame

    @property
    def box(self) -> Optional[tuple[float, float, float, float]]:
        return self.best.box

    @property
    def path(self) -> str:
        return self.best.path

    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if k != "best"}
        d["best"] = self.best.to_dict()
        return d


@dataclass
class TrackResult:
    """The ranked tracks for one query image."""

    query: str
    hits: list[TrackHit] = field(default_factory=list)
    camera: Optional[str] = None

    def to_dict(self) -> dict[str, Any]:
        return {"query": self.query, "camera": self.camera, "hits": [h.to_dict() for h in self.hits]}


def track_row(store: "IndexStore", key: str) -> Optional[dict[str, Any]]:
    """One track's row (embedding removed) when it has crops still in the index, else None; its crop list and
    best crop are those still indexed."""
    rows, _ = _track_rows(store, [str(key)])
    if not rows:
        return None
    live = _with_live_crops(store, rows)
    return live[0] if live[0]["crop_ids"] else None


def _with_live_crops(store: "IndexStore", rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The track rows with ``crop_ids`` cut to the crops still indexed and, when the best crop was removed, the
    first of those as the best (None when none is left): a removed crop must not hide its track."""
    ids = sorted({int(i) for r in rows for i in (r.get("crop_ids") or [])} | {_best_crop(r) for r in rows} - {-1})
    indexed = set(store.rows(ids)) if ids else set()
    out = []
    for r in rows:
        kept = [int(i) for i in (r.get("crop_ids") or []) if int(i) in indexed]
        best = _best_crop(r)
        if best not in indexed:
            best = kept[0] if kept else -1
        out.append({**r, "crop_ids": kept, "best_crop": None if best < 0 else best})
    return out


def _mask(
    rows: list[dict[str, Any]],
    cameras: Optional[Sequence[str]],
    exclude_cameras: Sequence[str],
    sources: Optional[Sequence[str]],
    time_from: Optional[float],
    time_to: Optional[float],
) -> np.ndarray:
    """Which tracks pass the filters; a time filter keeps tracks that overlap the interval."""
    cams = set(map(str, cameras)) if cameras is not None else None
    excl = set(map(str, exclude_cameras))
    srcs = set(map(str, sources)) if sources is not None else None
    out = np.ones(len(rows), bool)
    for i, r in enumerate(rows):
        cam = r["camera"]
        if cams is not None and cam not in cams or cam is not None and cam in excl:
            out[i] = False
        elif srcs is not None and r["source"] not in srcs:
            out[i] = False
        elif time_from is not None and (r["end_time"] is None or r["end_time"] < time_from):
            out[i] = False
        elif time_to is not None and (r["start_time"] is None or r["start_time"] > time_to):
            out[i] = False
    return out


def _topk(q: np.ndarray, emb: np.ndarray, allowed: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k (similarities, row indices) per query over the allowed rows, block by block."""
    n = len(q)
    best_s = np.full((n, 0), -np.inf, np.float32)
    best_i = np.full((n, 0), -1, np.int64)
    for start in range(0, len(emb), _BLOCK):
        block = emb[start : start + _BLOCK]
        s = q @ block.T
        s[:, ~allowed[start : start + _BLOCK]] = -np.inf
        idx = np.broadcast_to(np.arange(start, start + len(block)), s.shape)
        cat_s = np.concatenate([best_s, s], axis=1)
        cat_i = np.concatenate([best_i, idx], axis=1)
        kk = min(k, cat_s.shape[1])
        part = np.argpartition(-cat_s, kk - 1, axis=1)[:, :kk]
        best_s = np.take_along_axis(cat_s, part, axis=1)
        best_i = np.take_along_axis(cat_i, part, axis=1)
    order = np.argsort(-best_s, axis=1, kind="stable")
    return np.take_along_axis(best_s, order, axis=1), np.take_along_axis(best_i, order, axis=1)


def _track_rows(store: "IndexStore", keys: Sequence[str]) -> tuple[list[dict[str, Any]], np.ndarray]:
    """The rows and embeddings of the given tracks (those that have a row), in the order of ``keys``."""
    dim = store.manifest.dim
    found: dict[str, dict[str, Any]] = {}
    with store.sql.connect() as conn:
        for start in range(0, len(keys), _SQL_CHUNK):
            chunk = list(keys[start : start + _SQL_CHUNK])
            for m in conn.execute(sa.select(db.tracks).where(db.tracks.c.key.in_(chunk))).mappings():
                found[m["key"]] = dict(m)
    rows = [found[k] for k in keys if k in found]
    emb = np.zeros((len(rows), dim), np.float32)
    for i, r in enumerate(rows):
        v = np.frombuffer(r.pop("embedding"), dtype=np.float32)
        if v.shape[0] != dim:
            raise InvalidInputError(f"track {r['key']}: embedding of dimension {v.shape[0]}, the index holds {dim}")
        emb[i] = v
    return rows, emb


def _candidate_tracks(store: "IndexStore", q: np.ndarray, k: int, where: SearchFilter,
                      params: Optional[SearchParams] = None) -> list[str]:
    """Tracks with a crop among the query's nearest crops that pass ``where`` (one query row), searched with
    ``params`` over the index's defaults."""
    pool = int(min(max(store.count, 1), max(TRACK_POOL_MIN, TRACK_POOL_PER_HIT * k)))
    _, ids = store.search(q, pool, where=where, params=params)
    ids = np.asarray(ids[0], np.int64)
    ids = ids[ids >= 0]
    if not len(ids):
        return []
    tracks = store.fields(ids).get("track")
    if tracks is None:
        return []
    return sorted({str(t) for t in tracks if t is not None})


def search_tracks(
    store: "IndexStore",
    features: np.ndarray,
    k: int = 10,
    *,
    query_labels: Optional[Sequence[str]] = None,
    query_cameras: Optional[Sequence[Optional[str]]] = None,
    cameras: Optional[Sequence[str]] = None,
    exclude_cameras: Optional[Sequence[str]] = None,
    sources: Optional[Sequence[str]] = None,
    time_from: Union[None, str, float] = None,
    time_to: Union[None, str, float] = None,
    exclude_same_camera: bool = False,
    search_params: Union[None, dict[str, Any], SearchParams] = None,
) -> list[TrackResult]:
    """Rank the index's tracks for each query feature row; filters as in ``Engine.query``, and the first stage's
    ``search_params`` (``exact``, ``nprobe``, ``ef_search``) for the crops whose tracks are ranked."""
    params = store.search_params(search_params)  # validated before anything is searched
    q, labels, qcams = check_queries(features, store.manifest.dim, k, query_labels, query_cameras)
    n = len(q)
    if exclude_same_camera and any(c is None for c in qcams):
        raise InvalidInputError("a query's camera is unknown, so it cannot be excluded; pass the query camera")
    t_from, t_to = parse_time(time_from), parse_time(time_to)
    excl = [str(c) for c in (exclude_cameras or [])]
    results = []
    best_ids: set[int] = set()
    ranked: list[list[tuple[float, dict[str, Any]]]] = []
    for qi in range(n):
        q_excl = excl + ([str(qcams[qi])] if exclude_same_camera else [])
        # crops of tracks that can pass: the camera and source filters hold for a track's crops too (a time
        # filter is on the track's interval, so it is applied to the tracks, not to their crops' times)
        where = SearchFilter(cameras=None if cameras is None else tuple(map(str, cameras)),
                             exclude_cameras=tuple(q_excl),
                             sources=None if sources is None else tuple(map(str, sources)))
        keys = _candidate_tracks(store, q[qi : qi + 1], k, where, params)
        rows, emb = _track_rows(store, keys)
        allowed = _mask(rows, cameras, q_excl, sources, t_from, t_to)
        if not len(rows) or not allowed.any():
            ranked.append([])
            continue
        s, idx = _topk(q[qi : qi + 1], emb, allowed, k)
        found = [(float(si), rows[int(ii)]) for si, ii in zip(s[0], idx[0]) if np.isfinite(si)]
        live = _with_live_crops(store, [r for _, r in found])
        hits = [(si, r) for (si, _), r in zip(found, live)]
        ranked.append(hits)
        best_ids.update(_best_crop(r) for _, r in hits)
    crop_rows = store.rows(sorted(best_ids - {-1}))
    for qi in range(n):
        track_hits: list[TrackHit] = []
        for sim, r in ranked[qi]:
            crop = crop_rows.get(_best_crop(r))
            if crop is None:
                continue
            track_hits.append(TrackHit(
                rank=len(track_hits) + 1, track=r["key"], distance=float(1.0 - sim), camera=r["camera"],
                source=r["source"], start_time=r["start_time"], end_time=r["end_time"], start_frame=r["start_frame"],
                end_frame=r["end_frame"], n_frames=int(r["n_frames"] or 0), crop_ids=list(r["crop_ids"] or []),
                best=Hit.from_row(len(track_hits) + 1, float(1.0 - sim), crop), extra=r["extra"],
            ))
        results.append(TrackResult(labels[qi], track_hits, None if qcams[qi] is None else str(qcams[qi])))
    return results


def _best_crop(row: dict[str, Any]) -> int:
    return int(row["best_crop"]) if row["best_crop"] is not None else -1
