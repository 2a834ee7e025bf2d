"""Vector helpers shared by the index and the query path (no backend specifics here)."""
from __future__ import annotations

import numpy as np


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero), as contiguous float32.

    A row whose length over- or underflows float32 (values past about 1e19, or below 1e-19) is scaled in
    float64, so it is not mistaken for a zero row."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    with np.errstate(over="ignore", under="ignore"):  # such rows are redone below
        norms = np.linalg.norm(x, axis=1, keepdims=True)
    odd = ~np.isfinite(norms[:, 0]) | (norms[:, 0] == 0)
    norms[odd] = 1.0
    out = x / norms
    if odd.any():
        wide = x[odd].astype(np.float64)
        wide_norms = np.linalg.norm(wide, axis=1, keepdims=True)
        wide_norms[wide_norms == 0] = 1.0
        out[odd] = wide / wide_norms
    return out


def zero_rows(x: np.ndarray) -> np.ndarray:
    """Indices of the rows of ``x`` that are all zeros."""
    return np.flatnonzero(~np.asarray(x).any(axis=1))
