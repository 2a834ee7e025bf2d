"""The one entry point the engine calls: ranked gallery rows for a batch of queries."""
from __future__ import annotations

import logging

import numpy as np

from ..errors import InvalidInputError
from .config import RerankConfig
from .expansion import database_augmentation, query_expansion
from .kreciprocal import k_reciprocal_rerank
from .knn import as_feature_matrix, knn_search
from .nfc import NeighbourState, centralize, centralize_queries

log = logging.getLogger(__name__)


def rerank_search(
    query_feats: np.ndarray,
    gallery_feats: np.ndarray,
    k: int,
    config: RerankConfig | None = None,
    gallery_centralized: np.ndarray | None = None,
    gallery_state: NeighbourState | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` gallery rows of each query under ``config``.

    ``query_feats`` (Q, D) and ``gallery_feats`` (G, D) are L2-normalised.
    ``gallery_centralized`` (G, D) and ``gallery_state`` are the NFC gallery
    vectors and neighbour lists stored at index time (computed here when the
    config needs them and they are not given). Returns ``(distances,
    positions)``, both (Q, min(k, G)): float32 distances in ascending order
    (smaller is better; ``1 - cos`` without k-reciprocal re-ranking) and int64
    row numbers into the gallery.
    """
    cfg = config if config is not None else RerankConfig()
    qf = as_feature_matrix(query_feats, "query_feats")
    gf = as_feature_matrix(gallery_feats, "gallery_feats", qf.shape[1])
    if int(k) < 1:
        raise InvalidInputError(f"k must be >= 1, got {k}")
    k = min(int(k), len(gf))
    if len(qf) == 0 or k == 0:
        return np.empty((len(qf), k), np.float32), np.empty((len(qf), k), np.int64)

    if cfg.nfc:
        raw_gf = gf
        if gallery_centralized is None:
            if len(raw_gf) > cfg.kr_max_exact_gallery:
                log.warning("centralizing %d gallery rows at query time (exact all-rows kNN); "
                            "store them at index time and pass gallery_centralized", len(raw_gf))
            gf, gallery_state = centralize(raw_gf, cfg.nfc_k1, cfg.nfc_k2, weight=cfg.nfc_weight)
        else:
            gf = as_feature_matrix(gallery_centralized, "gallery_centralized", qf.shape[1])
            if len(gf) != len(raw_gf):
                raise InvalidInputError(f"gallery_centralized has {len(gf)} rows, "
                                        f"gallery_feats has {len(raw_gf)}")
        if cfg.nfc_query != "none":
            qf = centralize_queries(qf, raw_gf, k1=cfg.nfc_k1, k2=cfg.nfc_k2, mode=cfg.nfc_query,
                                    weight=cfg.nfc_weight, gallery_state=gallery_state)
    if cfg.dba_n:
        gf = database_augmentation(gf, cfg.dba_n, cfg.dba_alpha)
    if cfg.qe_n:
        qf = query_expansion(qf, gf, cfg.qe_n, cfg.qe_alpha)

    if not cfg.kr:
        sims, pos = knn_search(qf, gf, k)
        return (1.0 - sims).astype(np.float32), pos
    candidates = cfg.kr_candidates
    if candidates is None and len(gf) > cfg.kr_max_exact_gallery:
        candidates = cfg.kr_auto_candidates
        log.info("gallery of %d rows: k-reciprocal re-ranking within the top %d candidates",
                 len(gf), candidates)
    return k_reciprocal_rerank(qf, gf, k, k1=cfg.kr_k1, k2=cfg.kr_k2, lambda_value=cfg.kr_lambda,
                               candidates=candidates, block_size=cfg.block_size,
                               candidate_block=cfg.kr_candidate_block)
