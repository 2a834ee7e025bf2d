"""The pixels behind an indexed crop: its own file, or its region of a video frame or frame image.

Only paths recorded in the index are ever opened.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import cv2
import numpy as np

from ..images import IMAGE_SUFFIXES, read_image
from ..ingest.select import cut
from ..ingest.show import draw_box, frame_holds_crop, xyxy
from ..results import box_of
from ..ingest.video import FrameReader, is_stream
from .errors import NoPixelsError

#: a crop file at most this many pixels wider or taller than its recorded box is the crop itself
_SLACK = 2


def _image_file(text: Optional[str]) -> Optional[Path]:
    if not text or is_stream(text):
        return None
    p = Path(text)
    return p if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file() else None


def _video_file(text: Optional[str]) -> Optional[str]:
    if not text or is_stream(text):
        return None
    p = Path(text)
    return text if p.suffix.lower() not in IMAGE_SUFFIXES and p.is_file() else None


def source_frame(row: dict[str, Any], reader: Optional[FrameReader] = None) -> Optional[np.ndarray]:
    """The whole frame a crop was cut from (video frame or frame image), when the row records one."""
    if box_of(row) is None:
        return None
    video = _video_file(row.get("source"))
    if video is not None and row.get("frame") is not None:
        own = reader is None
        reader = reader or FrameReader()
        try:
            frame = reader.read(video, int(row["frame"]))
        finally:
            if own:
                reader.close()
        box = box_of(row)
        if frame is not None and box is not None and not frame_holds_crop(frame, box, str(row.get("sha256"))):
            raise NoPixelsError(f"crop {row['id']}: its video changed since it was indexed (another recording "
                                "at the same path); ingest it again")
        return frame
    image = _image_file(row.get("source"))
    if image is not None:
        return read_image(image)
    path_image = _image_file(row.get("path"))
    if path_image is not None:
        img = read_image(path_image)
        _, _, w, h = box_of(row) or (0.0, 0.0, 0.0, 0.0)
        if img.shape[1] > w + _SLACK or img.shape[0] > h + _SLACK:
            return img  # the path is a frame image holding the box
    return None


def crop_pixels(row: dict[str, Any]) -> np.ndarray:
    """The crop's BGR pixels: its own image file, else its box cut from its frame."""
    box = box_of(row)
    if box is not None:
        frame = source_frame(row)
        if frame is not None:
            crop = cut(frame, xyxy(box))
            if crop is not None:
                return crop
    own = _image_file(row.get("path"))
    if own is not None:
        return read_image(own)
    raise NoPixelsError(f"crop {row['id']}: its pixels are not available (file or video gone, or never recorded)")


def frame_with_box(row: dict[str, Any], label: str = "") -> np.ndarray:
    """The frame the crop came from with its box drawn (the crop itself, outlined, when there is no frame)."""
    frame = source_frame(row)
    box = box_of(row)
    if frame is None or box is None:
        frame, box = crop_pixels(row), None
    return draw_box(frame, box, label)


def encode_jpeg(img: np.ndarray, quality: int = 90) -> bytes:
    """BGR pixels -> JPEG bytes."""
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise NoPixelsError("could not encode the image as JPEG")
    return buf.tobytes()
