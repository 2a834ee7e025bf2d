"""Ingest: turn folders, manifests (and footage) into crops with metadata."""
from __future__ import annotations

from .crops import CropItem, parse_time, scan_source

__all__ = ["CropItem", "parse_time", "scan_source"]
