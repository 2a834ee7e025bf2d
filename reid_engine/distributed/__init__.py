"""Running the engine's heavy work on a cluster (Ray) while one writer commits in order."""
from __future__ import annotations

from .ray_runner import index_with_ray, ingest_with_ray

__all__ = ["index_with_ray", "ingest_with_ray"]
