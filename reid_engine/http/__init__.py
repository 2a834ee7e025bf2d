"""The HTTP API and web page of ``reid-engine serve`` (FastAPI app factory, routes, upload checks)."""
from __future__ import annotations

from .app import create_app, static_dir
from .deps import ServeConfig

__all__ = ["ServeConfig", "create_app", "static_dir"]
