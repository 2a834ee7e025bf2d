"""Ingest: turn folders, manifests and footage into crops with metadata.

Footage flows video -> detect -> track -> select -> pipeline (into the index); show
draws answers back onto the footage.
"""
from __future__ import annotations

from .crops import CropItem, parse_time, scan_source
from .detect import Detections, create_detector, list_detectors, register_detector
from .pipeline import IngestReport, ingest_video
from .track import create_tracker, list_trackers, register_tracker

__all__ = [
    "CropItem",
    "Detections",
    "IngestReport",
    "create_detector",
    "create_tracker",
    "ingest_video",
    "list_detectors",
    "list_trackers",
    "parse_time",
    "register_detector",
    "register_tracker",
    "scan_source",
]
