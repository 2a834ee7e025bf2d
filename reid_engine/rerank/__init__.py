"""Query-time re-ranking.

The engine's path: a cosine candidate pool from the vector backend, then a
registered ``Pipeline`` of ``Reranker`` steps (``get_pipeline``; ``presets``,
``steps``), reading index-time state kept by ``IndexHook``s (``hooks``).
``MemoryGallery`` runs the same path over NumPy arrays (tools, tests).

The older pure functions stay for tools and references: ``rerank_search`` with
``RerankConfig`` / ``PRESETS`` over whole arrays. The building blocks (neighbour feature centralization,
k-reciprocal re-ranking, query expansion, database augmentation) are exported
for the index (incremental NFC) and for experiments.
"""
from .config import PRESETS, QUERY_NFC_MODES, RerankConfig, get_preset
from .expansion import database_augmentation, query_expansion
from .knn import knn_search
from .kreciprocal import k_reciprocal_rerank
from .nfc import (CentralizedUpdate, NeighbourState, centralize, centralize_queries,
                  update_centralized)
from .search import rerank_search
from .base import (Candidates, GalleryView, IndexHook, Pipeline, RerankContext, Reranker, get_hook,
                   get_pipeline, list_hooks, list_pipelines, register_hook, register_pipeline)
from .hooks import CameraLinks, CameraLinksHook, CameraStats, CameraStatsHook, NeighbourTable, NeighboursHook
from .steps import (AttributeFusion, CameraNormalize, Centralize, Expand, KReciprocal, QueryExpansion,
                    SamePersonPool, SiteMerge, SiteSplit)
from . import presets as _presets  # noqa: F401  registers the pipelines
from .memory import MemoryGallery

__all__ = [
    "AttributeFusion",
    "CameraLinks",
    "CameraLinksHook",
    "CameraNormalize",
    "CameraStats",
    "CameraStatsHook",
    "Candidates",
    "Centralize",
    "Expand",
    "GalleryView",
    "IndexHook",
    "KReciprocal",
    "MemoryGallery",
    "NeighbourTable",
    "NeighboursHook",
    "Pipeline",
    "QueryExpansion",
    "RerankContext",
    "Reranker",
    "SamePersonPool",
    "SiteMerge",
    "SiteSplit",
    "get_hook",
    "get_pipeline",
    "list_hooks",
    "list_pipelines",
    "register_hook",
    "register_pipeline",
    "PRESETS",
    "QUERY_NFC_MODES",
    "CentralizedUpdate",
    "NeighbourState",
    "RerankConfig",
    "centralize",
    "centralize_queries",
    "database_augmentation",
    "get_preset",
    "k_reciprocal_rerank",
    "knn_search",
    "query_expansion",
    "rerank_search",
    "update_centralized",
]
