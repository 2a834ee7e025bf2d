"""Which crops of a track to keep: a quality score and a best-few selection spread over time."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import cv2
import numpy as np

#: person height (pixels) at which a crop counts as full size
FULL_HEIGHT = 160.0
#: Laplacian variance at which the sharpness term reaches one half
HALF_SHARPNESS = 60.0


def cut(frame: np.ndarray, box: np.ndarray) -> Optional[np.ndarray]:
    """The crop of ``frame`` under an (x1, y1, x2, y2) box, clipped; None when empty."""
    h, w = frame.shape[:2]
    x1, y1 = max(0, int(np.floor(box[0]))), max(0, int(np.floor(box[1])))
    x2, y2 = min(w, int(np.ceil(box[2]))), min(h, int(np.ceil(box[3])))
    if x2 - x1 < 2 or y2 - y1 < 2:
        return None
    return np.ascontiguousarray(frame[y1:y2, x1:x2])


def sharpness(crop: np.ndarray) -> float:
    """Variance of the Laplacian of the grey crop: higher is sharper."""
    grey = cv2.cvtColor(crop, cv2.COLOR_BGR2GRAY)
    return float(cv2.Laplacian(grey, cv2.CV_64F).var())


def quality(crop: np.ndarray, box: np.ndarray, score: float, frame_shape: tuple[int, ...]) -> float:
    """How useful a crop is for re-identification, in [0, 1].

    The product of detection confidence, size (height relative to ``FULL_HEIGHT``),
    sharpness, and a halving for boxes cut by the frame edge (a partial person).
    """
    height = float(box[3] - box[1])
    size = min(1.0, height / FULL_HEIGHT)
    s = sharpness(crop)
    sharp = s / (s + HALF_SHARPNESS)
    fh, fw = frame_shape[:2]
    edge = box[0] <= 1 or box[1] <= 1 or box[2] >= fw - 1 or box[3] >= fh - 1
    return float(score) * size * sharp * (0.5 if edge else 1.0)


@dataclass(eq=False)  # compared by identity: crops are arrays
class Candidate:
    """A crop that may be kept for its track."""

    quality: float
    frame: int
    box: np.ndarray  # x1, y1, x2, y2
    score: float
    crop: np.ndarray


@dataclass
class BestCrops:
    """The ``k`` best crops of one track, at least ``min_gap`` frames apart."""

    k: int
    min_gap: int
    kept: list[Candidate] = field(default_factory=list)

    def offer(self, cand: Candidate) -> None:
        """Keep ``cand`` if it beats the crops near it in time and the worst kept one."""
        near = [c for c in self.kept if abs(c.frame - cand.frame) < self.min_gap]
        if any(c.quality >= cand.quality for c in near):
            return
        self.kept = [c for c in self.kept if c not in near]
        self.kept.append(cand)
        if len(self.kept) > self.k:
            self.kept.remove(min(self.kept, key=lambda c: (c.quality, -c.frame)))

    def best(self) -> list[Candidate]:
        """Kept crops, best first."""
        return sorted(self.kept, key=lambda c: (-c.quality, c.frame))
