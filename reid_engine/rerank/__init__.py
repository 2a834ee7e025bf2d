"""Query-time re-ranking: pure functions over L2-normalised feature arrays.

``rerank_search`` is the entry point; ``RerankConfig`` and ``PRESETS`` say
what it does. The building blocks (neighbour feature centralization,
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

__all__ = [
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
