"""Track-level answers: one hit per appearance of a person (camera, start and end time, best crop).

Every track of ingested footage has a row in the ``tracks`` table with the
normalised mean embedding of its kept crops. A track query ranks those
embeddings instead of the crops, so fifty near-identical crops of one walk past
a camera come back as one hit.
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Optional, Sequence, Union

import numpy as np
import sqlalchemy as sa

from .errors import InvalidInputError
from .index import db
from .ingest.crops import parse_time
from .results import Hit, check_queries

if TYPE_CHECKING:
    from .index.store import IndexStore

#: tracks scored per matrix product; keeps memory flat for large galleries
_BLOCK = 65536


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


@dataclass
class _TrackTable:
    generation: int
    keys: list[str]
    emb: np.ndarray  # (T, D) float32
    rows: list[dict[str, Any]]


_CACHE: "weakref.WeakKeyDictionary[IndexStore, _TrackTable]" = weakref.WeakKeyDictionary()


def load_tracks(store: "IndexStore") -> _TrackTable:
    """The tracks whose crops are still in the index, with their embeddings (cached per generation)."""
    cached = _CACHE.get(store)
    if cached is not None and cached.generation == store.generation:
        return cached
    t = db.tracks
    live = sa.select(db.crops.c.track).where(db.crops.c.track.is_not(None)).distinct()
    with store.sql.connect() as conn:
        rows = [dict(r) for r in conn.execute(sa.select(t).where(t.c.key.in_(live)).order_by(t.c.key)).mappings()]
    dim = store.manifest.dim
    emb = np.zeros((len(rows), dim), np.float32)
    for i, r in enumerate(rows):
        v = np.frombuffer(r.pop("embedding"), dtype=np.float32)
        if v.shape[0] != dim:
            raise InvalidInputError(f"track {r['key']}: embedding of dimension {v.shape[0]}, the index holds {dim}")
        emb[i] = v
    table = _TrackTable(store.generation, [r["key"] for r in rows], emb, rows)
    _CACHE[store] = table
    return table


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
) -> list[TrackResult]:
    """Rank the index's tracks for each query feature row; filters as in ``Engine.query``."""
    q, labels, qcams = check_queries(features, store.manifest.dim, k, query_labels, query_cameras)
    n = len(q)
    if exclude_same_camera and any(c is None for c in qcams):
        raise InvalidInputError("a query's camera is unknown, so it cannot be excluded; pass the query camera")
    table = load_tracks(store)
    base = _mask(table.rows, cameras, list(exclude_cameras or []), sources, parse_time(time_from), parse_time(time_to))
    results = []
    best_ids: set[int] = set()
    ranked: list[list[tuple[float, int]]] = []
    for qi in range(n):
        allowed = base
        if exclude_same_camera:
            allowed = base & np.array([r["camera"] != str(qcams[qi]) for r in table.rows], bool)
        if not len(table.rows) or not allowed.any():
            ranked.append([])
            continue
        s, idx = _topk(q[qi : qi + 1], table.emb, allowed, k)
        hits = [(float(si), int(ii)) for si, ii in zip(s[0], idx[0]) if np.isfinite(si)]
        ranked.append(hits)
        best_ids.update(_best_crop(table.rows[i]) for _, i in hits)
    crop_rows = store.rows(sorted(best_ids - {-1}))
    for qi in range(n):
        track_hits: list[TrackHit] = []
        for sim, i in ranked[qi]:
            r = table.rows[i]
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
