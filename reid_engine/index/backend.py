"""The vector backend interface: where the gallery's vectors live and how they are searched.

The store (``index.store``) owns the commit protocol; a backend only stores and
searches vectors. Nothing outside a backend module calls FAISS (or Milvus)
itself. A change is made in two steps so that the SQL commit stays the single
commit point of an index:

1. ``prepare(generation, changes)`` makes the change durable *beside* the
   committed state (new segment files, rows tagged with the new generation...)
   and returns the new state as a small JSON-able dict; what readers see does
   not change.
2. The store records that dict in the same SQL transaction as the rows. Once
   committed, ``load(state)`` makes it the visible state (a reader calls
   ``load`` too when it sees a newer generation). If the transaction fails,
   ``discard(state)`` removes what ``prepare`` wrote.

``cleanup(state)`` (only called by the writer that holds the index's write
lock) removes what no committed state refers to: leftovers of crashed writers.
Readers of older states keep working while a writer commits: no byte a
state reads ever changes once written (files are immutable, or only appended
past what every state reads), and files are removed only after a grace period.

Every backend passes ``tests/backend_conformance.py``.
"""
from __future__ import annotations

import dataclasses
import math
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Optional, Sequence, Union

import numpy as np

from ..errors import InvalidInputError, UnknownNameError
from .topk import knn_rows

#: gallery ids as given to the read methods: a sequence or a 1-D integer array
IdsLike = Union[Sequence[int], np.ndarray]

#: scalar fields every backend stores per vector so that filters run inside the search
FIELDS = ("camera", "timestamp", "source", "track")


@dataclass(frozen=True)
class SearchFilter:
    """Which gallery rows a search may return (all given conditions hold).

    ``ids`` is an explicit allow-list (sorted int64), e.g. from an SQL or attribute
    pre-filter; the other conditions are on the scalar fields stored with the vectors.
    A row whose camera is unknown (None) passes ``exclude_cameras``.
    """

    ids: Optional[np.ndarray] = None
    cameras: Optional[tuple[str, ...]] = None
    exclude_cameras: tuple[str, ...] = ()
    sources: Optional[tuple[str, ...]] = None
    tracks: Optional[tuple[str, ...]] = None
    time_from: Optional[float] = None
    time_to: Optional[float] = None

    def __post_init__(self) -> None:
        for name in ("time_from", "time_to"):
            v = getattr(self, name)
            if v is not None and not math.isfinite(float(v)):
                raise InvalidInputError(f"{name} {v!r}: expected a finite time")
        if self.ids is not None:
            object.__setattr__(self, "ids", np.unique(np.asarray(self.ids, np.int64)))

    @property
    def is_empty(self) -> bool:
        """True when no condition is set (every row passes)."""
        return (
            self.ids is None and self.cameras is None and not self.exclude_cameras and self.sources is None
            and self.tracks is None and self.time_from is None and self.time_to is None
        )

    def mask(self, ids: np.ndarray, fields: dict[str, np.ndarray]) -> np.ndarray:
        """Boolean mask of rows (``ids`` with their ``fields`` arrays) that pass; a reference for backends."""
        keep = np.ones(len(ids), bool)
        if self.ids is not None:
            keep &= np.isin(ids, self.ids)
        cam = fields.get("camera")
        if self.cameras is not None and cam is not None:
            keep &= np.isin(cam.astype(object), list(self.cameras))
        if self.exclude_cameras and cam is not None:
            keep &= ~np.isin(cam.astype(object), list(self.exclude_cameras))
        if self.sources is not None and fields.get("source") is not None:
            keep &= np.isin(fields["source"].astype(object), list(self.sources))
        if self.tracks is not None and fields.get("track") is not None:
            keep &= np.isin(fields["track"].astype(object), list(self.tracks))
        ts = fields.get("timestamp")
        if ts is not None and (self.time_from is not None or self.time_to is not None):
            t = ts.astype(np.float64)
            ok = ~np.isnan(t)
            if self.time_from is not None:
                ok &= t >= self.time_from
            if self.time_to is not None:
                ok &= t <= self.time_to
            keep &= ok
        return keep


def is_positive_int(v: Any) -> bool:
    """``v`` is an integer >= 1 (Python or NumPy; not a bool)."""
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool) and bool(v >= 1)


@dataclass(frozen=True)
class SearchParams:
    """Per-search knobs; None means the index's stored default.

    ``exact``: force (True) or forbid (False) exhaustive search. ``nprobe``: lists
    visited by an IVF search; ``ef_search``: HNSW beam width; ``refine``: candidates
    re-scored exactly per result wanted (approximate first stage only). ``beam_scale``:
    a multiple of the default graph beam (the one the index picks for the graph's size
    and k; a beam set by ``ef_search`` is used as given); a re-ranking step that refines
    the first stage asks for a narrower one (``Reranker.first_stage_beam``). Backends
    without such a beam ignore it. ``approx_tail``: in an approximate index, also search
    the small segments not yet merged into the approximate structure approximately (a
    batch search that tolerates a missed row: the neighbour hook's); backends without
    such a tail ignore it. ``pool``: how many first-stage candidates the re-ranking
    re-scores per query (the engine's, not a backend's: every backend ignores it; None:
    the preset's own, 200 for the default with up to 100 answers).
    """

    exact: Optional[bool] = None
    nprobe: Optional[int] = None
    ef_search: Optional[int] = None
    refine: Optional[int] = None
    beam_scale: Optional[float] = None
    approx_tail: Optional[bool] = None
    pool: Optional[int] = None

    def __post_init__(self) -> None:
        for name in ("nprobe", "ef_search", "refine", "pool"):
            v = getattr(self, name)
            if v is not None and not is_positive_int(v):
                raise InvalidInputError(f"search parameter {name}={v!r}: expected a positive integer")
        v = self.beam_scale
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float, np.number))
                              or not math.isfinite(float(v)) or float(v) <= 0):
            raise InvalidInputError(f"search parameter beam_scale={v!r}: expected a positive number")
        for name in ("exact", "approx_tail"):
            v = getattr(self, name)
            if v is not None and not isinstance(v, (bool, np.bool_)):
                raise InvalidInputError(f"search parameter {name}={v!r}: expected true or false")

    @classmethod
    def from_dict(cls, params: Any) -> "SearchParams":
        """Parameters from a mapping of their names (None or an empty mapping: all defaults)."""
        if params is None:
            return cls()
        if not isinstance(params, Mapping):
            raise InvalidInputError(f"search parameters {params!r}: expected a mapping of names to values")
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(str(k) for k in params if k not in names)
        if unknown:
            raise InvalidInputError(f"search parameter {unknown[0]!r}: unknown; expected one of {', '.join(names)}")
        return cls(**params)

    def merged(self, defaults: dict[str, Any]) -> "SearchParams":
        """These parameters with the unset ones taken from ``defaults``."""
        vals = {k: getattr(self, k)
                for k in ("exact", "nprobe", "ef_search", "refine", "beam_scale", "approx_tail", "pool")}
        return SearchParams(**{k: (v if v is not None else defaults.get(k)) for k, v in vals.items()})

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


@dataclass
class Changes:
    """One commit's worth of changes for ``VectorBackend.prepare``."""

    add_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    add_vectors: Optional[np.ndarray] = None  # (N, D) float32, L2-normalised
    add_fields: dict[str, np.ndarray] = field(default_factory=dict)  # FIELDS -> (N,) arrays (object/float)
    remove_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))


class VectorBackend(ABC):
    """Stores L2-normalised vectors under int64 ids and finds the nearest by inner product."""

    #: the name recorded in the manifest
    name: ClassVar[str]

    def __init__(self, folder: Path, dim: int, options: dict[str, Any]):
        self.folder = Path(folder)
        self.dim = int(dim)
        self.options = dict(options)

    # -- lifecycle ------------------------------------------------------------------------
    @classmethod
    def default_options(cls, dim: int) -> dict[str, Any]:
        """Options recorded in the manifest when an index is created with this backend."""
        return {}

    @abstractmethod
    def empty_state(self) -> dict[str, Any]:
        """The state of an index with no vectors (what ``create`` commits)."""

    @abstractmethod
    def load(self, state: dict[str, Any]) -> None:
        """Make a committed state the visible one (cheap: memory-map, do not read every vector)."""

    @abstractmethod
    def prepare(self, generation: int, changes: Changes) -> dict[str, Any]:
        """Write ``changes`` durably beside the visible state; return the state to commit."""

    @abstractmethod
    def discard(self, state: dict[str, Any]) -> None:
        """Undo a ``prepare`` whose commit failed (remove what only that state refers to)."""

    def files(self, state: dict[str, Any]) -> set[str]:
        """Names of the files in the index folder that ``state`` refers to (none for a remote store).

        The store marks the files a commit stopped referring to as retired at that moment, so that
        ``cleanup``'s grace period runs from then (readers of the previous state may still open them).
        """
        return set()

    def cleanup(self, state: dict[str, Any], grace_seconds: float = 60.0) -> None:  # noqa: B027  optional hook, no-op
        """Remove storage no committed state refers to (writer only, under the write lock)."""

    def compact(self, generation: int, force: bool = False) -> Optional[dict[str, Any]]:
        """Merge storage when worth it (or ``force``); return the state to commit, or None if nothing to do."""
        return None

    # merges off the write lock: plan on the visible state, build without the lock, apply to the state visible then
    def plan_merge(self, generation: int, force: bool = False, background: bool = False) -> Optional[Any]:
        """A merge due on the visible state (of ``generation``), or None (also: this backend only merges inside
        ``compact``). ``background``: it will be built while the process serves, so it should hold little memory
        beside what the searches keep paged in."""
        return None

    def build_merge(self, job: Any, threads: Optional[int] = None) -> None:
        """Write what a planned merge makes, without the write lock (files no committed state refers to)."""
        raise NotImplementedError(f"{self.name} backend plans no background merges")

    def apply_merge(self, job: Any, generation: int) -> Optional[dict[str, Any]]:
        """Under the write lock: the visible state with a built merge applied, to commit as ``generation``;
        None (and the merge's files removed) when commits since its plan make it obsolete."""
        raise NotImplementedError(f"{self.name} backend plans no background merges")

    def abandon_merge(self, job: Any) -> None:  # noqa: B027  optional hook, no-op by default
        """Remove what a merge that will not be committed wrote."""

    def close(self) -> None:  # noqa: B027  optional hook, no-op by default
        """Release files and connections."""

    # -- reading --------------------------------------------------------------------------
    @property
    @abstractmethod
    def count(self) -> int:
        """How many live vectors the visible state holds."""

    @abstractmethod
    def search(
        self,
        queries: np.ndarray,
        k: int,
        where: Optional[SearchFilter] = None,
        params: Optional[SearchParams] = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` (similarities (Q, k) float32 descending, ids (Q, k) int64); missing results are id -1."""

    @abstractmethod
    def reconstruct(self, ids: IdsLike) -> np.ndarray:
        """The stored vectors of live ids, in the order asked; an unknown id raises ``InvalidInputError``."""

    @abstractmethod
    def contains(self, ids: IdsLike) -> np.ndarray:
        """Boolean array: which of ``ids`` are live."""

    def stored_fields(self, ids: IdsLike) -> Optional[dict[str, np.ndarray]]:
        """The scalar ``FIELDS`` of live ids in the order asked (strings as object arrays, time as float64 with
        NaN), when the backend keeps them for its filters; an unknown id raises ``InvalidInputError``. ``None``
        (the default): the backend keeps none, and the store reads them from SQL."""
        return None

    def knn(self, queries: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-``k`` of vectors that are not in the index (``rows``) for each query: (similarities, row
        numbers), best first, the lower row first among ties, -inf / -1 where there are fewer rows. Index hooks
        use it for a commit's new rows among themselves; a backend overrides it with its fastest exact search."""
        return knn_rows(queries, rows, k)

    def track_members(self, tracks: Sequence[str]) -> Optional[dict[str, np.ndarray]]:
        """The live ids of each named track, ascending (empty for a track with none), when the backend keeps the
        tracks for its filters. ``None`` (the default): the store reads them from SQL."""
        return None

    @abstractmethod
    def describe(self) -> dict[str, Any]:
        """What ``reid-engine info`` shows: backend, index type, parameters, segments, sizes."""

    def live_ids(self) -> np.ndarray:
        """Every live id, ascending (checks and compaction only; touches every row)."""
        raise NotImplementedError


_BACKENDS: dict[str, type[VectorBackend]] = {}


def register_backend(cls: type[VectorBackend]) -> type[VectorBackend]:
    """Class decorator: make a backend available under ``cls.name``."""
    _BACKENDS[cls.name] = cls
    return cls


def get_backend(name: str) -> type[VectorBackend]:
    """The backend class called ``name``; an unknown name lists the valid ones."""
    _load_builtin()
    try:
        return _BACKENDS[name]
    except KeyError:
        raise UnknownNameError(
            f"unknown vector backend {name!r}; valid names: {', '.join(sorted(_BACKENDS))}"
        ) from None


def list_backends() -> list[str]:
    _load_builtin()
    return sorted(_BACKENDS)


def _load_builtin() -> None:
    import importlib

    for module in ("faiss_backend", "milvus_backend"):  # each registers itself; milvus needs pymilvus
        try:
            importlib.import_module(f"{__package__}.{module}")
        except ImportError as exc:
            if module == "faiss_backend" and "faiss" in str(exc) and "faiss_backend" not in str(exc):
                raise


def fields_of(rows: Sequence[dict[str, Any]]) -> dict[str, np.ndarray]:
    """The scalar FIELDS of SQL rows as arrays (strings as object arrays, time as float64 with NaN)."""
    out: dict[str, np.ndarray] = {}
    for name in FIELDS:
        if name == "timestamp":
            out[name] = np.array([np.nan if r.get(name) is None else float(r[name]) for r in rows], np.float64)
        else:
            out[name] = np.array([None if r.get(name) is None else str(r[name]) for r in rows], dtype=object)
    return out
