"""Multi-object trackers: per-frame detections -> numbered tracks, behind a name registry.

A tracker is fed the detections of every processed frame in order and says
which detection continues which track. The built-in ``norfair`` tracker wraps
the Norfair library (Kalman-filtered boxes matched by a size-scaled corner distance or IoU); other trackers
register a factory taking the effective frame rate and their own options.
Trackers must be deterministic: an interrupted ingest is resumed by replaying
the stored detections through a fresh tracker.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Callable, Optional, Protocol

import numpy as np

from ..errors import InvalidInputError, UnknownNameError
from .detect import Detections

DEFAULT_TRACKER = "norfair"


@dataclass
class TrackedBox:
    """One detection assigned to a track in the current frame."""

    track_id: int  # positive, unique within one tracker run
    box: np.ndarray  # (4,) x1, y1, x2, y2 of the detection (not the filtered estimate)
    score: float
    det_index: int  # position in the frame's Detections


class Tracker(Protocol):
    """Links detections of consecutive processed frames into tracks."""

    name: str

    def update(self, detections: Detections) -> list[TrackedBox]:
        """Feed one frame; returns the detections that belong to confirmed tracks."""
        ...

    def alive_ids(self) -> set[int]:
        """Tracks that may still be continued (seen recently enough)."""
        ...

    def describe(self) -> dict[str, Any]:
        """Name and settings, recorded with an ingest."""
        ...


_TRACKERS: dict[str, Callable[..., Tracker]] = {}


def register_tracker(name: str, factory: Callable[..., Tracker]) -> None:
    """Make a tracker available by name; ``factory(fps=..., **options)`` builds it."""
    _TRACKERS[name] = factory


def list_trackers() -> list[str]:
    return sorted(_TRACKERS)


def create_tracker(name: Optional[str] = None, fps: float = 25.0, **options: Any) -> Tracker:
    """A fresh tracker; ``fps`` is the rate of the frames it will be fed (after skipping)."""
    name = name or DEFAULT_TRACKER
    if name not in _TRACKERS:
        raise UnknownNameError(f"unknown tracker {name!r}: expected one of {', '.join(list_trackers())}")
    if fps <= 0:
        raise InvalidInputError(f"fps {fps}: expected a positive number")
    return _TRACKERS[name](fps=fps, **options)


def height_scaled_distance(candidates: np.ndarray, objects: np.ndarray) -> np.ndarray:
    """(N, K) mean distance of the two box corners, in units of each track's predicted box height.

    Rows are boxes (x1, y1, x2, y2). Unlike IoU this stays informative when boxes
    are small or move far between processed frames (detection on every Nth frame),
    and it scales with the person's size in the image.
    """
    c = np.asarray(candidates, np.float64).reshape(-1, 2, 2)
    o = np.asarray(objects, np.float64).reshape(-1, 2, 2)
    corners = np.linalg.norm(c[:, None] - o[None], axis=3).mean(axis=2)
    height = np.maximum(o[:, 1, 1] - o[:, 0, 1], 1.0)
    return corners / height[None, :]


class NorfairTracker:
    """Norfair's Kalman tracker on boxes (x1, y1, x2, y2 as two points).

    ``distance`` is "scaled" (corner distance over box height, accept below
    ``max_distance``, by default 3 / fps within [0.3, 0.7]) or "iou" (accept
    overlap of at least ``min_iou``).
    ``max_age`` (seconds) is how long a track survives without detections;
    ``min_hits`` detections confirm a new track.
    """

    name = "norfair"

    def __init__(
        self,
        fps: float,
        distance: str = "scaled",
        max_distance: Optional[float] = None,
        min_iou: float = 0.1,
        max_age: float = 2.0,
        min_hits: int = 3,
    ) -> None:
        from norfair import Tracker as _NorfairTracker

        # Norfair warns on every predicted box that degenerates for a frame; that is routine here
        logging.getLogger("norfair.distances").setLevel(logging.ERROR)
        if max_distance is None:  # looser when processed frames are further apart, within [0.3, 0.7]
            max_distance = min(0.7, max(0.3, 3.0 / fps))
        if distance == "scaled":
            if max_distance <= 0:
                raise InvalidInputError(f"max_distance {max_distance}: expected a positive number")
            threshold = float(max_distance)
        elif distance == "iou":
            if not 0.0 < min_iou < 1.0:
                raise InvalidInputError(f"min_iou {min_iou}: expected a number in (0, 1)")
            threshold = 1.0 - float(min_iou)
        else:
            raise InvalidInputError(f"tracker distance {distance!r}: expected 'scaled' or 'iou'")
        hit_max = max(2, int(math.ceil(max_age * fps)))
        self._n = 0  # frames fed so far
        self.settings = {"distance": distance, "max_distance": max_distance, "min_iou": min_iou,
                         "max_age": max_age, "min_hits": int(min_hits), "fps": fps}
        self._tracker = _NorfairTracker(
            distance_function="iou",
            distance_threshold=threshold,
            hit_counter_max=hit_max,
            initialization_delay=max(0, min(int(min_hits) - 1, hit_max - 1)),
        )
        if distance == "scaled":
            # Norfair takes custom vectorised distances as Distance objects only after construction
            from norfair.distances import VectorizedDistance

            self._tracker.distance_function = VectorizedDistance(height_scaled_distance)

    def update(self, detections: Detections) -> list[TrackedBox]:
        from norfair import Detection

        dets = [
            Detection(
                points=np.asarray(box, np.float64).reshape(2, 2),
                scores=np.array([score, score], np.float64),
                data=(self._n, i),  # the frame counter tells fresh matches from stale ones
            )
            for i, (box, score) in enumerate(zip(detections.boxes, detections.scores))
        ]
        active = self._tracker.update(dets)
        out = []
        for obj in active:
            det = obj.last_detection
            # a track not matched in this frame keeps an older detection: only fresh matches count
            if det is None or obj.id is None or det.data is None or det.data[0] != self._n:
                continue
            i = int(det.data[1])
            out.append(TrackedBox(int(obj.id), detections.boxes[i].copy(), float(detections.scores[i]), i))
        self._n += 1
        return out

    def alive_ids(self) -> set[int]:
        return {int(o.id) for o in self._tracker.tracked_objects if o.id is not None and o.hit_counter_is_positive}

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, **self.settings}


register_tracker("norfair", NorfairTracker)
