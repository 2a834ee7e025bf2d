"""Alpha-weighted query expansion (alpha-QE) and database-side augmentation (DBA).

Both replace a feature by the re-normalised sum of itself (weight 1) and its
top-``n`` neighbours in the gallery, each weighted by ``max(sim, 0) ** alpha``
(``alpha = 0`` gives plain average expansion).
"""
from __future__ import annotations

import numpy as np

from ..errors import InvalidInputError
from .knn import as_feature_matrix, knn_search, normalize_rows
from .nfc import neighbour_lists


def _check(n: int, alpha: float) -> None:
    if int(n) < 0:
        raise InvalidInputError(f"n must be >= 0, got {n}")
    if alpha < 0:
        raise InvalidInputError(f"alpha must be >= 0, got {alpha}")


def _expand(feats: np.ndarray, base: np.ndarray, sims: np.ndarray, idx: np.ndarray,
            alpha: float) -> np.ndarray:
    weights = np.maximum(sims, 0.0).astype(np.float32) ** np.float32(alpha)
    out = feats.astype(np.float32, copy=True)
    for r in range(idx.shape[1]):  # a few neighbours: one gather per rank
        out += weights[:, r:r + 1] * base[idx[:, r]]
    return normalize_rows(out)


def query_expansion(query_feats: np.ndarray, gallery_feats: np.ndarray, n: int = 2,
                    alpha: float = 3.0) -> np.ndarray:
    """Each query plus its top-``n`` gallery neighbours weighted by sim**alpha, re-normalised."""
    _check(n, alpha)
    qf = as_feature_matrix(query_feats, "query_feats")
    gf = as_feature_matrix(gallery_feats, "gallery_feats", qf.shape[1])
    if n == 0 or len(gf) == 0 or len(qf) == 0:
        return qf.copy()
    sims, idx = knn_search(qf, gf, n)
    return _expand(qf, gf, sims, idx, alpha)


def database_augmentation(gallery_feats: np.ndarray, n: int = 2, alpha: float = 3.0) -> np.ndarray:
    """Each gallery row plus its top-``n`` other gallery rows weighted by sim**alpha, re-normalised."""
    _check(n, alpha)
    gf = as_feature_matrix(gallery_feats, "gallery_feats")
    if n == 0 or len(gf) < 2:
        return gf.copy()
    sims, idx = neighbour_lists(gf, n)
    return _expand(gf, gf, sims, idx, alpha)
