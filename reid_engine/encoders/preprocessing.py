"""Batch preprocessing: resize each crop, then normalise a whole batch at once.

Splitting ``images.preprocess`` in two lets the decode threads do the per-image
work (decode + resize, both release the GIL) on uint8 data, and lets a runtime
that can embed normalisation in its graph (OpenVINO) receive the uint8 batch.
Both halves together equal ``images.preprocess`` (tested).
"""
from __future__ import annotations

from typing import Optional

import cv2
import numpy as np

from ..images import INTERPOLATIONS, PreprocessSpec


def resize_to_spec(img_bgr: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """uint8 BGR (h, w, 3) -> uint8 BGR (height, width, 3) as the spec asks."""
    if img_bgr.shape[0] == spec.height and img_bgr.shape[1] == spec.width:
        return img_bgr
    return cv2.resize(img_bgr, (spec.width, spec.height), interpolation=INTERPOLATIONS[spec.interpolation])


def channel_affine(spec: PreprocessSpec) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Per output channel ``a, b, src`` such that ``out[c] = bgr[..., src[c]] * a[c] + b[c]``."""
    mean = np.asarray(spec.mean, dtype=np.float64)
    std = np.asarray(spec.std, dtype=np.float64)
    a = (spec.scale / std).astype(np.float32)
    b = (-mean / std).astype(np.float32)
    src = [2, 1, 0] if spec.color == "RGB" else [0, 1, 2]
    return a, b, src


def normalize_batch(batch_bgr: np.ndarray, spec: PreprocessSpec, out: Optional[np.ndarray] = None) -> np.ndarray:
    """uint8 BGR (B, H, W, 3) -> float32 (B, 3, H, W): colour order, scale, mean and std applied.

    ``out``: a float32 (B, 3, H, W) array to write into (e.g. a slice of a larger batch).
    """
    a, b, src = channel_affine(spec)
    n, h, w = batch_bgr.shape[:3]
    if out is None:
        out = np.empty((n, 3, h, w), dtype=np.float32)
    for c in range(3):
        # one fused pass per channel: uint8 -> float32 multiply straight into the output plane
        np.multiply(batch_bgr[..., src[c]], a[c], out=out[:, c], dtype=np.float32)
        if b[c] != 0.0:
            out[:, c] += b[c]
    return out
