"""What a query returns."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import numpy as np

from .errors import InvalidInputError, printable
from .index.vectors import l2_normalize, zero_rows


def box_of(row: dict[str, Any]) -> Optional[tuple[float, float, float, float]]:
    """A crop row's (x, y, w, h) box, or None unless all four are recorded."""
    values = [float(v) for v in (row.get(k) for k in ("box_x", "box_y", "box_w", "box_h")) if v is not None]
    if len(values) < 4:
        return None
    x, y, w, h = values
    return x, y, w, h


@dataclass
class Hit:
    """One gallery crop in a ranked answer."""

    rank: int
    id: int
    distance: float  # cosine distance (1 - cosine similarity), after any re-ranking
    path: str
    sha256: str
    pid: Optional[str] = None
    camera: Optional[str] = None
    timestamp: Optional[float] = None
    frame: Optional[int] = None
    box: Optional[tuple[float, float, float, float]] = None  # x, y, w, h
    track: Optional[str] = None
    source: Optional[str] = None
    extra: Optional[dict[str, Any]] = None

    @classmethod
    def from_row(cls, rank: int, distance: float, row: dict[str, Any]) -> "Hit":
        box = box_of(row)
        return cls(
            rank=rank,
            id=int(row["id"]),
            distance=float(distance),
            path=row["path"],
            sha256=row["sha256"],
            pid=row.get("pid"),
            camera=row.get("camera"),
            timestamp=row.get("timestamp"),
            frame=row.get("frame"),
            box=box,
            track=row.get("track"),
            source=row.get("source"),
            extra=row.get("extra"),
        )

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["box"] = list(self.box) if self.box else None
        return d


@dataclass
class QueryResult:
    """The ranked hits for one query image."""

    query: str  # the query's path, or "<array N>" for in-memory images
    hits: list[Hit] = field(default_factory=list)
    camera: Optional[str] = None  # the query's camera, when known

    def to_dict(self) -> dict[str, Any]:
        return {"query": self.query, "camera": self.camera, "hits": [h.to_dict() for h in self.hits]}


def check_queries(
    features: np.ndarray,
    dim: int,
    k: int,
    labels: Optional[Sequence[str]] = None,
    cameras: Optional[Sequence[Optional[str]]] = None,
) -> tuple[np.ndarray, list[str], list[Optional[str]]]:
    """Validated query inputs: L2-normalised (N, dim) features, N labels and N cameras (None when unknown)."""
    check_k(k)
    try:
        arr = np.atleast_2d(np.asarray(features, np.float32))
    except (TypeError, ValueError):
        what = type(features).__name__
        raise InvalidInputError(f"query features of type {what}: expected an (N, {dim}) array") from None
    if arr.ndim != 2 or arr.shape[1] != dim:
        raise InvalidInputError(
            f"query features of dimension {arr.shape[-1]} (shape {arr.shape}): "
            f"the index holds {dim}, expected (N, {dim})"
        )
    if not np.isfinite(arr).all():
        raise InvalidInputError("query features hold NaN or infinite values")
    q = l2_normalize(arr)
    zero = zero_rows(q)
    if len(zero):
        raise InvalidInputError(f"query features row {zero[0]} is all zeros: expected an embedding of non-zero length")
    n = len(q)
    # labels are shown and serialised: undecodable file-name bytes are escaped
    names = [printable(str(x)) for x in labels] if labels is not None else [f"<features {i}>" for i in range(n)]
    cams: list[Optional[str]] = list(cameras) if cameras is not None else [None] * n
    if len(names) != n or len(cams) != n:
        raise InvalidInputError(f"{n} queries but {len(names)} labels and {len(cams)} cameras")
    return q, names, cams


def check_k(k: object) -> int:
    """``k`` as a positive int; refuses floats, text and booleans rather than rounding them."""
    if isinstance(k, (bool, np.bool_)) or not isinstance(k, (int, np.integer)):
        raise InvalidInputError(f"k {k!r}: expected a positive integer")
    if k < 1:
        raise InvalidInputError(f"k {k}: expected a positive integer")
    return int(k)


def clip_k(k: object, gallery_size: int) -> int:
    """A validated ``k`` no larger than the gallery (at least 1), so no k-sized array is ever made."""
    return min(check_k(k), max(1, int(gallery_size)))
