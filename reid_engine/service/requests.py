"""Request objects shared by the CLI and the HTTP API; each validates itself on construction.

A request holds only what a caller may choose. Invalid values raise the
library's typed errors (``InvalidInputError`` and children), and fields that do
not fit together raise ``RequestError`` (the CLI's usage errors).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np

from ..attributes import AttributeQuery, resolve_fusion
from ..attributes.search import DEFAULT_THRESHOLD
from ..errors import InvalidInputError
from ..index.db import MAX_ID, TEXT_LIMITS
from ..ingest.crops import parse_time
from .errors import RequestError

#: the most hits one request may ask for
K_MAX = 10_000
#: the most query images (or crop ids) in one request
QUERIES_MAX = 64
#: bounds of the per-query search parameters: IVF lists probed, graph beam, candidates re-ranked
NPROBE_MAX = 65_536
EF_SEARCH_MAX = 4096
POOL_MAX = 10_000

QueryImage = Union[str, Path, np.ndarray]


def check_preset(name: str) -> None:
    """Raise ``UnknownNameError`` (listing the valid names) unless ``name`` is a re-ranking preset."""
    try:
        from ..engine import resolve_pipeline
    except ImportError:  # the engine of the older, config-based re-ranking
        from ..rerank import get_preset

        get_preset(name)
        return
    resolve_pipeline(name)


def preset_names() -> list[str]:
    """The re-ranking presets a request may name."""
    try:
        from .. import rerank  # noqa: F401  imported for its side effect: registers the presets
        from ..rerank.base import list_pipelines
    except ImportError:
        from ..rerank import PRESETS

        return sorted(PRESETS)
    return list_pipelines()


def _strings(values: Any, what: str, split: bool = True) -> tuple[str, ...]:
    """A tuple of names from None, a string (comma-separated unless ``split`` is False: sources are paths, which
    may hold commas) or an iterable of strings.

    An empty name (``--camera ''``, ``"a,"``) is an ``InvalidInputError`` naming ``what``:
    dropping it would quietly widen a filter, or narrow a removal's criteria.
    """
    if values is None:
        return ()
    if isinstance(values, str):
        values = [values]
    out: list[str] = []
    for v in values:
        if v is None:
            continue
        parts = [part.strip() for part in (str(v).split(",") if split else [str(v)])]
        if not all(parts):
            listed = " (or comma-separated names)" if split else ""
            raise InvalidInputError(f"{what} {str(v)!r}: expected a name{listed}, not an empty one")
        out.extend(parts)
    return tuple(out)


def _check_name(value: Any, what: str) -> None:
    """Raise ``InvalidInputError`` when an optional name (a camera, a pid) is given but empty or longer than
    its column holds."""
    if value is not None and not str(value).strip():
        raise InvalidInputError(f"{what} {value!r}: expected a name, not an empty one (leave it out for none)")
    limit = TEXT_LIMITS.get(what)
    if value is not None and limit is not None and len(str(value)) > limit:
        raise InvalidInputError(f"{what} {str(value)[:20]!r}...: longer than {limit} characters")


#: the integer search parameters a request may set, with their upper bounds
_SEARCH_INTS = (("nprobe", NPROBE_MAX), ("ef_search", EF_SEARCH_MAX), ("pool", POOL_MAX))


def _search_ints(req: Any) -> dict[str, int]:
    """The integer search parameters ``req`` sets (its ``nprobe``, ``ef_search``, ``pool``), or
    ``InvalidInputError`` naming one that is not an integer from 1 to its bound."""
    out: dict[str, int] = {}
    for name, top in _SEARCH_INTS:
        value = getattr(req, name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 1 <= int(value) <= top:
            raise InvalidInputError(f"{name} {value!r}: expected an integer from 1 to {top}")
        out[name] = int(value)
    return out


def _check_k(k: Any) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= int(k) <= K_MAX:
        raise InvalidInputError(f"k {k!r}: expected an integer from 1 to {K_MAX}")
    return int(k)


def _filter_time(value: Union[None, str, float], what: str) -> Optional[float]:
    """A filter's bound in epoch seconds; an empty text is an error (it would quietly drop the bound)."""
    if isinstance(value, str) and not value.strip():
        raise InvalidInputError(f"{what} {value!r}: expected ISO-8601 (e.g. 2024-05-01T12:00:00) or epoch seconds")
    return parse_time(value)


@dataclass(frozen=True)
class Filters:
    """Which gallery crops may be returned: cameras, sources and a time range (epoch seconds)."""

    cameras: tuple[str, ...] = ()
    exclude_cameras: tuple[str, ...] = ()
    sources: tuple[str, ...] = ()
    time_from: Optional[float] = None
    time_to: Optional[float] = None

    @classmethod
    def build(
        cls,
        cameras: Any = None,
        exclude_cameras: Any = None,
        sources: Any = None,
        time_from: Union[None, str, float] = None,
        time_to: Union[None, str, float] = None,
    ) -> "Filters":
        """Filters from loose values: comma-separated strings or lists, ISO-8601 or epoch times."""
        return cls(
            _strings(cameras, "camera"), _strings(exclude_cameras, "camera"), _strings(sources, "source", split=False),
            _filter_time(time_from, "time_from"), _filter_time(time_to, "time_to"),
        )

    def __post_init__(self) -> None:
        for t in (self.time_from, self.time_to):
            if t is not None and not np.isfinite(t):
                raise InvalidInputError(f"time {t!r}: expected a finite time")
        if self.time_from is not None and self.time_to is not None and self.time_from > self.time_to:
            raise InvalidInputError("the time range ends before it starts (time_from is after time_to)")

    def engine_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of ``Engine.query`` / ``find`` / ``query_tracks``."""
        return dict(
            cameras=list(self.cameras) or None, exclude_cameras=list(self.exclude_cameras) or None,
            sources=list(self.sources) or None, time_from=self.time_from, time_to=self.time_to,
        )


@dataclass(frozen=True)
class QueryRequest:
    """Rank the gallery for query images and/or indexed crops, or search by attributes alone.

    ``images`` are files (CLI) or decoded BGR arrays (uploads), named by ``labels``;
    ``crop_ids`` query with the stored embedding of indexed crops. Without either,
    ``attributes`` terms list the crops that match them.
    """

    images: tuple[QueryImage, ...] = ()
    labels: tuple[str, ...] = ()
    crop_ids: tuple[int, ...] = ()
    k: int = 10
    filters: Filters = field(default_factory=Filters)
    exclude_same_camera: bool = False
    query_camera: Optional[str] = None
    rerank: Optional[str] = None
    fusion: Optional[str] = None
    attributes: tuple[str, ...] = ()
    attribute_threshold: float = DEFAULT_THRESHOLD
    by_track: bool = False
    same_person: bool = False  # all query images show one person: one pooled answer
    nprobe: Optional[int] = None  # IVF cells visited (search parameter)
    exact: bool = False  # exact search instead of the index's approximate one
    ef_search: Optional[int] = None  # graph beam width (search parameter)
    pool: Optional[int] = None  # first-stage candidates the re-ranking re-scores

    def __post_init__(self) -> None:
        object.__setattr__(self, "k", _check_k(self.k))
        object.__setattr__(self, "attributes", _strings(self.attributes, "attribute"))
        _search_ints(self)
        _check_name(self.query_camera, "query camera")
        if self.same_person and self.by_track:
            raise RequestError("same-person pooling applies to crop queries, not to by-track queries")
        if self.labels and len(self.labels) != len(self.images):
            raise InvalidInputError(f"{len(self.images)} query images but {len(self.labels)} labels")
        if len(self.images) + len(self.crop_ids) > QUERIES_MAX:
            raise InvalidInputError(
                f"{len(self.images) + len(self.crop_ids)} queries: at most {QUERIES_MAX} per request"
            )
        for cid in self.crop_ids:
            if isinstance(cid, bool) or not isinstance(cid, (int, np.integer)) or cid < 0:
                raise InvalidInputError(f"crop id {cid!r}: expected a non-negative integer")
            if cid > MAX_ID:
                raise InvalidInputError(f"crop id {cid}: out of range (crop ids are 64-bit integers)")
        has_query = bool(self.images or self.crop_ids)
        if not has_query and not self.attributes:
            raise RequestError("give query images (or crop ids), or attribute terms to search by attributes alone")
        if self.by_track and (self.fusion is not None or self.attributes):
            raise RequestError("fusion and attribute terms apply to crop queries, not to by-track queries")
        if self.by_track and self.pool is not None:
            raise RequestError("a candidate pool applies to re-ranked crop queries, not to by-track queries")
        if self.by_track and self.rerank not in (None, "none"):
            raise RequestError("re-ranking applies to crop queries, not to by-track queries")
        if not has_query and (self.fusion is not None or self.exclude_same_camera or self.rerank is not None):
            raise RequestError("fusion, re-ranking and exclude-same-camera need query images")
        if self.rerank is not None:
            check_preset(self.rerank)  # unknown names list the valid ones
        if self.fusion is not None:
            resolve_fusion(self.fusion)
        if self.attributes:
            AttributeQuery.parse(list(self.attributes), self.attribute_threshold)
        elif not 0.0 < float(self.attribute_threshold) < 1.0:
            raise InvalidInputError(f"attribute threshold {self.attribute_threshold}: expected a probability in (0, 1)")

    @property
    def attributes_only(self) -> bool:
        """An attribute search with no query image."""
        return not (self.images or self.crop_ids)

    def search_params(self) -> Optional[dict[str, Any]]:
        """``Engine.query``'s per-query search parameters, or None for the index's defaults."""
        params: dict[str, Any] = dict(_search_ints(self))
        if self.exact:
            params["exact"] = True
        return params or None

    def image_labels(self) -> list[str]:
        return list(self.labels) if self.labels else [
            str(im) if not isinstance(im, np.ndarray) else f"<array {i}>" for i, im in enumerate(self.images)
        ]


@dataclass(frozen=True)
class FindRequest:
    """Crops whose stored attributes match every term, most probable first."""

    attributes: tuple[str, ...]
    k: int = 10
    threshold: float = DEFAULT_THRESHOLD
    filters: Filters = field(default_factory=Filters)

    def __post_init__(self) -> None:
        object.__setattr__(self, "k", _check_k(self.k))
        object.__setattr__(self, "attributes", _strings(self.attributes, "attribute"))
        if not self.attributes:
            raise RequestError("attribute search needs at least one attribute term")
        AttributeQuery.parse(list(self.attributes), self.threshold)


@dataclass(frozen=True)
class IndexRequest:
    """Encode the crops of a folder, CSV manifest or image and add them (creating the index when missing)."""

    source: Path
    index: str
    encoder: Optional[str] = None
    weights: Optional[Path] = None
    factory: Optional[str] = None  # None: the backend picks the index type from the gallery's size
    db_url: Optional[str] = None
    backend: Optional[str] = None  # None: faiss for a new index, whatever an existing one has
    backend_uri: Optional[str] = None  # Milvus: a Milvus Lite file or http://host:19530
    nprobe: Optional[int] = None  # stored default search parameters of a new index
    ef_search: Optional[int] = None
    pool: Optional[int] = None
    ray: Optional[str] = None  # encode on a Ray cluster: "" = a local one, else its address
    glob: str = "**/*"
    pattern: str = "auto"
    camera: Optional[str] = None
    role: Optional[str] = None
    source_name: Optional[str] = None
    strict: bool = False
    batch_size: int = 32
    commit_every: int = 4096
    attributes: bool = False
    device: Optional[str] = None

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.commit_every < 1:
            raise InvalidInputError("batch size and commit-every must be positive integers")
        if not str(self.index).strip():
            raise RequestError("name the index (a folder or a bare name)")
        for name, what in ((self.camera, "camera"), (self.role, "role"), (self.source_name, "source")):
            _check_name(name, what)
        _search_ints(self)

    def create_options(self) -> dict[str, Any]:
        """Keyword arguments for ``Engine.create`` beyond the encoder."""
        opts: dict[str, Any] = {"factory": self.factory, "db_url": self.db_url}
        if self.backend is not None:
            opts["backend"] = self.backend
        if self.backend_uri:
            opts["backend_options"] = {"uri": self.backend_uri}
        stored = _search_ints(self)
        if stored:
            opts["search_params"] = stored
        return opts


@dataclass(frozen=True)
class AddRequest:
    """Index uploaded images (already decoded) with metadata shared by all of them."""

    images: tuple[np.ndarray, ...]
    data: tuple[bytes, ...]
    kinds: tuple[str, ...]  # sniffed image types, one per image ("png", "jpeg", ...)
    labels: tuple[str, ...]
    camera: Optional[str] = None
    pid: Optional[str] = None
    timestamp: Optional[float] = None
    track: Optional[str] = None

    def __post_init__(self) -> None:
        n = len(self.images)
        if n == 0:
            raise RequestError("upload at least one image to index")
        if not (len(self.data) == len(self.kinds) == len(self.labels) == n):
            raise InvalidInputError("one encoded file, type and label per image expected")
        if n > QUERIES_MAX:
            raise InvalidInputError(f"{n} images: at most {QUERIES_MAX} per request")
        for name, what in ((self.camera, "camera"), (self.pid, "pid"), (self.track, "track")):
            _check_name(name, what)
        if self.timestamp is not None and not np.isfinite(self.timestamp):
            raise InvalidInputError(f"time {self.timestamp!r}: expected a finite time")


@dataclass(frozen=True)
class RemoveRequest:
    """Remove the crops matching every given criterion."""

    ids: tuple[int, ...] = ()
    cameras: tuple[str, ...] = ()
    sources: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "cameras", _strings(self.cameras, "camera"))
        object.__setattr__(self, "sources", _strings(self.sources, "source", split=False))
        if not (self.ids or self.cameras or self.sources):
            raise RequestError("say what to remove: --id, --camera or --source (ids, cameras or sources)")
        for i in self.ids:
            if isinstance(i, bool) or not isinstance(i, (int, np.integer)) or i < 0:
                raise InvalidInputError(f"crop id {i!r}: expected a non-negative integer")


@dataclass(frozen=True)
class CropRequest:
    """One indexed crop by id."""

    id: int

    def __post_init__(self) -> None:
        if isinstance(self.id, bool) or not isinstance(self.id, (int, np.integer)) or self.id < 0:
            raise InvalidInputError(f"crop id {self.id!r}: expected a non-negative integer")


@dataclass(frozen=True)
class TrackRequest:
    """One track of ingested footage by key; ``crop_id`` picks which of its crops to show (default: the best)."""

    key: str
    crop_id: Optional[int] = None

    def __post_init__(self) -> None:
        if not self.key or len(self.key) > 512:
            raise InvalidInputError("track key: expected 1 to 512 characters")
        if self.crop_id is not None:
            CropRequest(self.crop_id)
