"""reid-engine: person re-identification retrieval over a persistent gallery index."""
from __future__ import annotations

from .attributes import FUSION_MODES, AttributeQuery, AttributesNotIndexedError, FusionConfig
from .encoders import create_encoder, list_encoders
from .engine import AddReport, Engine, resolve_index_path
from .errors import (
    EncoderMismatchError,
    ImageReadError,
    IndexCorruptError,
    IndexNotFoundError,
    InvalidInputError,
    ReidEngineError,
    UnknownEncoderError,
    WeightsError,
)
from .ingest import CropItem, scan_source
from .results import Hit, QueryResult

__version__ = "0.1.0"

__all__ = [
    "AddReport",
    "AttributeQuery",
    "AttributesNotIndexedError",
    "CropItem",
    "EncoderMismatchError",
    "Engine",
    "FUSION_MODES",
    "FusionConfig",
    "Hit",
    "ImageReadError",
    "IndexCorruptError",
    "IndexNotFoundError",
    "InvalidInputError",
    "QueryResult",
    "ReidEngineError",
    "UnknownEncoderError",
    "WeightsError",
    "create_encoder",
    "list_encoders",
    "resolve_index_path",
    "scan_source",
]
