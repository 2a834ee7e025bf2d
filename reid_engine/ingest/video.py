"""Footage decoding with OpenCV: video files and stream URLs -> numbered BGR frames."""
from __future__ import annotations

import hashlib
import logging
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional, Union

import cv2
import numpy as np

from ..assets import expand_user, resolved
from ..errors import InvalidInputError
from ..images import IMAGE_SUFFIXES, why_not_a_file

log = logging.getLogger(__name__)

_URL_RE = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")
#: how far ahead a wanted frame may be before ``FrameReader`` seeks instead of reading on
_READ_AHEAD = 300
#: frame rates a --fps may give: one frame in 1,000 s (time lapse) to 10,000 frames/s (high-speed cameras)
MIN_FPS, MAX_FPS = 0.001, 10000.0
#: bytes hashed at each end of a video file for its fingerprint
_FINGERPRINT_BYTES = 1 << 20


def is_stream(source: Union[str, Path]) -> bool:
    """A URL (rtsp://, http://, ...) rather than a file on disk."""
    return bool(_URL_RE.match(str(source)))


def source_key(source: Union[str, Path]) -> str:
    """How a footage source is named in the index: a URL as given, a file by its absolute path."""
    return str(source) if is_stream(source) else str(resolved(expand_user(source)))


def fingerprint(source: Union[str, Path]) -> Optional[dict[str, Any]]:
    """Size, mtime and a hash of the first and last MiB of a video file (None for streams).

    Two fingerprints name the same content when ``same_content`` says so: size and hash
    are compared, not the mtime (copying or touching a file keeps its content).
    """
    if is_stream(source):
        return None
    path = Path(source_key(source))
    try:
        st = path.stat()
        h = hashlib.sha256()
        with open(path, "rb") as f:
            h.update(f.read(_FINGERPRINT_BYTES))
            if st.st_size > _FINGERPRINT_BYTES:
                f.seek(max(_FINGERPRINT_BYTES, st.st_size - _FINGERPRINT_BYTES))
                h.update(f.read(_FINGERPRINT_BYTES))
    except OSError as exc:
        raise InvalidInputError(f"{source}: cannot read the video file ({exc.strerror or exc})") from None
    return {"size": int(st.st_size), "mtime": float(st.st_mtime), "head_tail_sha256": h.hexdigest()}


def same_content(old: Optional[dict[str, Any]], new: Optional[dict[str, Any]]) -> bool:
    """False only when both fingerprints are known and their size or hash differ."""
    if not old or not new:
        return True
    return old.get("size") == new.get("size") and old.get("head_tail_sha256") == new.get("head_tail_sha256")


@dataclass(frozen=True)
class VideoInfo:
    """What the container says about a source."""

    source: str
    fps: float  # frames per second used for timestamps
    frame_count: Optional[int]  # None for streams and containers that do not say
    width: int
    height: int
    stream: bool


#: FFmpeg's own log level inside OpenCV (read once, at the first capture of the process); -8 is quiet: a stream
#: that cannot be reached would print FFmpeg's line beside the engine's one-line error
FFMPEG_LOGLEVEL_ENV = "OPENCV_FFMPEG_LOGLEVEL"


def _capture(source: str) -> cv2.VideoCapture:
    """An OpenCV capture of ``source`` that leaves the telling of errors to the engine (a user's own
    $OPENCV_FFMPEG_LOGLEVEL is kept)."""
    os.environ.setdefault(FFMPEG_LOGLEVEL_ENV, "-8")
    return cv2.VideoCapture(source)


def _open(source: str) -> cv2.VideoCapture:
    if not is_stream(source) and not Path(source).is_file():
        raise InvalidInputError(f"{source}: {why_not_a_file(source)}, expected a video file or a stream URL")
    if not is_stream(source) and Path(source).suffix.lower() in IMAGE_SUFFIXES:  # OpenCV reads it as one frame
        raise InvalidInputError(f"{source}: an image, not a video; index crops with `reid-engine index` "
                                "(or Engine.add)")
    cap = _capture(source)
    if not cap.isOpened():
        raise InvalidInputError(f"{source}: OpenCV cannot open this video (unsupported format or unreachable stream)")
    return cap


def probe(source: Union[str, Path], fps: Optional[float] = None) -> VideoInfo:
    """Open a source and read its frame rate, length and size; ``fps`` overrides the container's."""
    key = source_key(source)
    cap = _open(key)
    try:
        container_fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        count = cap.get(cv2.CAP_PROP_FRAME_COUNT)
        width = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH))
        height = int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
    finally:
        cap.release()
    if fps is None:
        if not (0.0 < container_fps < 1000.0):
            raise InvalidInputError(f"{source}: the video does not state its frame rate; pass --fps")
        fps = container_fps
    elif not (isinstance(fps, (int, float)) and math.isfinite(fps) and MIN_FPS <= fps <= MAX_FPS):
        raise InvalidInputError(f"fps {fps!r}: expected a frame rate from {MIN_FPS} to {MAX_FPS:g} frames/s")
    frame_count = int(count) if 0 < count < 1e9 and not is_stream(key) else None
    return VideoInfo(key, float(fps), frame_count, width, height, is_stream(key))


def iter_frames(
    source: Union[str, Path], start: int = 0, end: Optional[int] = None, every: int = 1
) -> Iterator[tuple[int, np.ndarray]]:
    """Yield (frame number, BGR frame) for frames ``start, start+every, ...`` before ``end``.

    Skipped frames are only grabbed, not decoded to pixels. A file is positioned
    at ``start`` by reading through (exact for every codec); streams start where they are.
    """
    if every < 1:
        raise InvalidInputError(f"every {every}: expected a positive integer")
    cap = _open(source_key(source))
    try:
        index = 0
        if start > 0 and not is_stream(source):
            index = _skip_to(cap, start)
            if index < start:
                return
        while end is None or index < end:
            wanted = (index - start) % every == 0 and index >= start
            if wanted:
                ok, frame = cap.read()
            else:
                ok, frame = cap.grab(), None
            if not ok:
                return
            if wanted:
                assert frame is not None  # read() succeeded
                yield index, frame
            index += 1
    finally:
        cap.release()


def _skip_to(cap: cv2.VideoCapture, target: int) -> int:
    """Advance a freshly opened capture to frame ``target``; returns where it stands."""
    index = 0
    while index < target and cap.grab():
        index += 1
    return index


class FrameReader:
    """Random access to frames of files by number, for showing answers.

    Reads forward when the wanted frame is near, otherwise seeks and then
    checks the position, so the frame returned is the numbered one.
    """

    def __init__(self) -> None:
        self._caps: dict[str, tuple[cv2.VideoCapture, int]] = {}  # source -> (capture, next frame number)

    def read(self, source: str, frame: int) -> Optional[np.ndarray]:
        """The BGR frame ``frame`` of ``source``, or None when it cannot be had."""
        if is_stream(source) or not Path(source).is_file() or frame < 0:
            return None
        cap, pos = self._caps.get(source, (None, 0))
        if cap is None:
            cap, pos = _capture(source), 0
            if not cap.isOpened():
                return None
        if frame < pos or frame - pos > _READ_AHEAD:
            cap.set(cv2.CAP_PROP_POS_FRAMES, frame)
            pos = int(cap.get(cv2.CAP_PROP_POS_FRAMES))
            if pos != frame:  # inexact seek: read through from the start
                cap.release()
                cap = _capture(source)
                pos = _skip_to(cap, frame)
        while pos < frame and cap.grab():
            pos += 1
        ok, img = cap.read() if pos == frame else (False, None)
        self._caps[source] = (cap, pos + 1 if ok else pos)
        return img if ok else None

    def close(self) -> None:
        for cap, _ in self._caps.values():
            cap.release()
        self._caps.clear()

    def __enter__(self) -> "FrameReader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
