"""The JSON shapes of the HTTP API (pydantic models: validation and the OpenAPI description)."""
from __future__ import annotations

from typing import Any, Optional, Union

from pydantic import BaseModel, ConfigDict, Field

from ..attributes.search import DEFAULT_THRESHOLD
from ..service.requests import EF_SEARCH_MAX, K_MAX, NPROBE_MAX, POOL_MAX, QUERIES_MAX

TimeValue = Union[float, str]
Name = Field(max_length=256)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FilterFields(_Strict):
    cameras: list[str] = Field(default_factory=list, max_length=256, description="Only crops of these cameras.")
    exclude_cameras: list[str] = Field(default_factory=list, max_length=256, description="Leave out these cameras.")
    sources: list[str] = Field(default_factory=list, max_length=256, description="Only crops of these sources.")
    time_from: Optional[TimeValue] = Field(None, description="ISO-8601 or epoch seconds.")
    time_to: Optional[TimeValue] = Field(None, description="ISO-8601 or epoch seconds.")


class QueryBody(FilterFields):
    """A query by indexed crops (JSON); uploads go as multipart/form-data with the same fields plus ``images``."""

    crop_ids: list[int] = Field(default_factory=list, max_length=QUERIES_MAX,
                                description="Query with the stored embeddings of these crops.")
    k: int = Field(10, ge=1, le=K_MAX, description="Hits per query.")
    exclude_same_camera: bool = False
    query_camera: Optional[str] = Field(None, max_length=256)
    rerank: Optional[str] = Field(None, max_length=64, description="Re-ranking preset (see /info); 'none' = cosine.")
    fusion: Optional[str] = Field(None, max_length=64, description="Attribute fusion mode (see /info).")
    attributes: list[str] = Field(default_factory=list, max_length=32, description="Required attribute terms.")
    attribute_threshold: float = Field(DEFAULT_THRESHOLD, gt=0, lt=1)
    by_track: bool = Field(False, description="One hit per track of ingested footage.")
    nprobe: Optional[int] = Field(None, ge=1, le=NPROBE_MAX, description="IVF lists probed by this search.")
    ef_search: Optional[int] = Field(None, ge=1, le=EF_SEARCH_MAX,
                                     description="Beam of this search in a graph index.")
    pool: Optional[int] = Field(None, ge=1, le=POOL_MAX,
                                description="First-stage candidates the re-ranking re-scores per query.")
    exact: bool = Field(False, description="Exhaustive first-stage search instead of the approximate index.")


class QueryUpload(QueryBody):
    """The multipart form of POST /query: ``images`` files plus the fields of the JSON body."""

    images: list[bytes] = Field(default_factory=list, max_length=QUERIES_MAX,
                                json_schema_extra={"items": {"type": "string", "format": "binary"}})


class FindBody(FilterFields):
    attributes: list[str] = Field(min_length=1, max_length=32, description="Attribute terms, e.g. male, backpack.")
    k: int = Field(10, ge=1, le=K_MAX)
    threshold: float = Field(DEFAULT_THRESHOLD, gt=0, lt=1)


class CropOut(BaseModel):
    id: int
    name: str = Field(description="The crop's file name (or video#frame for footage).")
    sha256: str
    pid: Optional[str] = None
    camera: Optional[str] = None
    timestamp: Optional[float] = None
    frame: Optional[int] = None
    box: Optional[list[float]] = None
    track: Optional[str] = None
    source: Optional[str] = Field(None, description="The source's file name.")
    extra: Optional[dict[str, Any]] = None
    image_url: str
    frame_url: Optional[str] = None
    track_url: Optional[str] = None


class HitOut(CropOut):
    rank: int
    distance: float


class TrackSpanOut(BaseModel):
    """Where and when a track was seen (shared by track hits and track pages)."""

    camera: Optional[str] = None
    source: Optional[str] = None
    start_time: Optional[float] = None
    end_time: Optional[float] = None
    start_frame: Optional[int] = None
    end_frame: Optional[int] = None
    start_offset: Optional[float] = None
    end_offset: Optional[float] = None
    n_frames: int


class TrackHitOut(TrackSpanOut):
    rank: int
    track: str
    distance: float
    crop_ids: list[int]
    best: HitOut
    track_url: str


class ResultOut(BaseModel):
    query: str
    camera: Optional[str] = None
    kind: str = Field(description="'crops' or 'tracks'.")
    hits: list[HitOut] = Field(default_factory=list)
    tracks: list[TrackHitOut] = Field(default_factory=list)


class QueryOut(BaseModel):
    k: int
    by_track: bool
    results: list[ResultOut]
    seconds: float


class TrackOut(TrackSpanOut):
    key: str
    best_crop: Optional[int] = None
    frame_url: str
    crops: list[CropOut]


class AddOut(BaseModel):
    added: int
    duplicates: int
    ids: list[int]
    failed: list[dict[str, str]]
    total: int


class RemoveOut(BaseModel):
    removed: int
    total: int


class HealthOut(BaseModel):
    status: str
    crops: int
    generation: Optional[int] = None


class ErrorOut(BaseModel):
    error: str = Field(description="The one-line message the CLI prints.")
    type: str = Field(description="The error class.")
