"""The service layer shared by the CLI and the HTTP API.

Request objects validate themselves (``requests``), one table maps each error
type to a CLI exit code and an HTTP status (``errors``), and one function per
request runs it on an Engine (``ops``).
"""
from __future__ import annotations

from .errors import (
    ERROR_MAP,
    AuthError,
    NoPixelsError,
    NotFoundError,
    Outcome,
    PayloadTooLargeError,
    RequestError,
    UnsupportedMediaError,
    WritesDisabledError,
    error_body,
    message_of,
    outcome_of,
)
from .ops import (
    capabilities,
    crop_image,
    get_crop,
    get_track,
    open_engine,
    refresh,
    run_add,
    run_compact,
    run_find,
    run_index,
    run_info,
    run_query,
    run_remove,
    track_frame,
)
from .requests import (
    EF_SEARCH_MAX,
    K_MAX,
    NPROBE_MAX,
    POOL_MAX,
    AddRequest,
    CropRequest,
    Filters,
    FindRequest,
    IndexRequest,
    QueryRequest,
    RemoveRequest,
    TrackRequest,
)

__all__ = [
    "AddRequest", "AuthError", "CropRequest", "EF_SEARCH_MAX", "ERROR_MAP", "Filters", "FindRequest",
    "IndexRequest", "K_MAX", "NPROBE_MAX", "NoPixelsError", "NotFoundError", "Outcome", "POOL_MAX",
    "PayloadTooLargeError", "QueryRequest", "RemoveRequest", "RequestError", "TrackRequest",
    "UnsupportedMediaError", "WritesDisabledError", "capabilities", "crop_image", "error_body", "get_crop",
    "get_track", "message_of", "open_engine", "outcome_of", "refresh", "run_add", "run_compact", "run_find",
    "run_index", "run_info", "run_query", "run_remove", "track_frame",
]
