"""Generators of bad inputs for tests/test_bad_inputs.py: image headers, videos, a stub detector.

Everything is tiny and built in memory or in a temporary folder; nothing comes from the shared assets.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path
from typing import Any, Callable

import cv2
import numpy as np

from reid_engine.ingest.detect import Detections


def _png_chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)


def png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header announces width x height RGB pixels, with one row of real data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" + b"\x00" * 3 * min(width, 64))
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def jpeg_claiming(width: int, height: int) -> bytes:
    """A baseline JPEG start (SOI, APP0, SOF0) announcing width x height, then end of image."""
    app0 = b"\xff\xe0" + struct.pack(">H", 16) + b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
    sof = b"\xff\xc0" + struct.pack(">HBHHB", 17, 8, height, width, 3) + b"\x01\x22\x00\x02\x11\x01\x03\x11\x01"
    return b"\xff\xd8" + app0 + sof + b"\xff\xd9"


def bmp_claiming(width: int, height: int) -> bytes:
    """A 24-bit BMP header announcing width x height, with almost no pixel data."""
    header = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, 0, 2835, 2835, 0, 0)
    return b"BM" + struct.pack("<IHHI", 54 + 16, 0, 0, 54) + header + b"\x00" * 16


def gif_claiming(width: int, height: int) -> bytes:
    return b"GIF89a" + struct.pack("<HH", width, height) + b"\x00\x00\x00;"


def webp_claiming(width: int, height: int) -> bytes:
    """An extended-format (VP8X) WebP header announcing width x height."""
    body = b"WEBP" + b"VP8X" + struct.pack("<I", 10) + b"\x00\x00\x00\x00"
    body += (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")
    return b"RIFF" + struct.pack("<I", len(body)) + body


def tiff_claiming(width: int, height: int) -> bytes:
    """A little-endian TIFF with an IFD giving width and height (LONG) and nothing else useful."""
    entries = [(256, 4, 1, width), (257, 4, 1, height), (258, 3, 1, 8), (262, 3, 1, 1), (273, 4, 1, 0), (279, 4, 1, 0)]
    ifd = struct.pack("<H", len(entries)) + b"".join(struct.pack("<HHII", *e) for e in entries) + b"\x00" * 4
    return b"II*\x00" + struct.pack("<I", 8) + ifd


def pgm_claiming(width: int, height: int) -> bytes:
    return f"P5\n{width} {height}\n255\n".encode() + b"\x00" * 16


def real_png(seed: int = 0, h: int = 32, w: int = 16) -> bytes:
    rng = np.random.default_rng(seed)
    ok, buf = cv2.imencode(".png", rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    assert ok
    return buf.tobytes()


#: name -> (file name, bytes maker, words the one-line message must hold besides the file name)
BAD_IMAGES: dict[str, tuple[str, Callable[[], bytes], tuple[str, ...]]] = {
    "png_100000x100000": ("huge.png", lambda: png_claiming(100_000, 100_000), ("100000x100000", "limit")),
    "png_20000x20000": ("big.png", lambda: png_claiming(20_000, 20_000), ("20000x20000", "limit")),
    "png_70Mx1": ("wide.png", lambda: png_claiming(70_000_000, 1), ("limit",)),
    "jpeg_100000x60000": ("huge.jpg", lambda: jpeg_claiming(60_000, 60_000), ("60000x60000", "limit")),
    "bmp_30000x30000": ("huge.bmp", lambda: bmp_claiming(30_000, 30_000), ("30000x30000", "limit")),
    "bmp_top_down_huge": ("topdown.bmp", lambda: bmp_claiming(30_000, -30_000), ("30000x30000", "limit")),
    "gif_65535": ("huge.gif.png", lambda: gif_claiming(65_535, 65_535), ("65535x65535", "limit")),
    "webp_16383": ("huge.webp", lambda: webp_claiming(16_000, 16_000), ("16000x16000", "limit")),
    "tiff_huge": ("huge.tif", lambda: tiff_claiming(50_000, 50_000), ("50000x50000", "limit")),
    "pgm_huge": ("huge.pgm", lambda: pgm_claiming(40_000, 40_000), ("40000x40000", "limit")),
    "empty": ("empty.png", lambda: b"", ("empty",)),
    "text": ("notes.png", lambda: b"this is not an image\n", ("not a readable image",)),
    "html": ("page.jpg", lambda: b"<html><body>404</body></html>", ("not a readable image",)),
    "random": (
        "noise.jpg",
        lambda: np.random.default_rng(3).integers(0, 256, 4096, dtype=np.uint8).tobytes(),
        ("not a readable image",),
    ),
    "png_signature_only": ("sig.png", lambda: b"\x89PNG\r\n\x1a\n", ("not a readable image",)),
    "jpeg_soi_only": ("soi.jpg", lambda: b"\xff\xd8\xff", ("not a readable image",)),
    "png_zero_width": ("zero.png", lambda: png_claiming(0, 10), ("not a readable image",)),
    "png_truncated": ("cut.png", lambda: real_png(5)[:60], ("not a readable image",)),
}


class StubDetector:
    """Finds the one bright red rectangle of a synthetic frame (the 'person')."""

    name = "stub-red"

    def detect(self, frame: np.ndarray) -> Detections:
        mask = (frame[:, :, 2] > 180) & (frame[:, :, 1] < 80) & (frame[:, :, 0] < 80)
        ys, xs = np.nonzero(mask)
        if len(xs) < 20:
            return Detections.empty()
        box = np.array([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]], np.float32)
        return Detections(box, np.array([0.9], np.float32))

    def describe(self) -> dict[str, Any]:
        return {"name": self.name}


def write_video(path: Path, n_frames: int, fps: float = 10.0, size: tuple[int, int] = (160, 120)) -> Path:
    """A small MJPEG video: a red 'person' walks right, leaves for a while, another walks back."""
    w, h = size
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (w, h))
    rng = np.random.default_rng(7)
    background = rng.integers(40, 90, (h, w, 3), dtype=np.uint8)
    for f in range(n_frames):
        frame = background.copy()
        phase = f % 40
        if phase < 25:  # on screen; texture changes with f so every crop is different
            x = 5 + 4 * phase if (f // 40) % 2 == 0 else w - 35 - 4 * phase
            x = int(np.clip(x, 0, w - 30))
            frame[30:90, x : x + 30] = (0, 0, 230)
            frame[40:50, x + 5 : x + 25] = (0, 0, 200 + (f * 7) % 50)
        writer.write(frame)
    writer.release()
    return path
