"""The HTTP API and web page of ``reid-engine serve`` (FastAPI app factory, routes, upload checks)."""
from __future__ import annotations

from .app import create_app, static_dir
from .deps import ServeConfig
from .listen import check_listen

__all__ = ["ServeConfig", "check_listen", "create_app", "static_dir"]
