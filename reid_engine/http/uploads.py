"""Uploaded images: type sniffed from the bytes, size read from the header before any decoding."""
from __future__ import annotations

import struct
from typing import Any, Awaitable, Callable, Optional

import numpy as np

from ..errors import ImageReadError
from ..images import decode_image
from ..service.errors import PayloadTooLargeError, UnsupportedMediaError

#: the image types the service decodes
ACCEPTED = ("png", "jpeg", "bmp", "webp")

_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def sniff(data: bytes) -> Optional[str]:
    """The image type of encoded bytes by their signature: png, jpeg, bmp, webp, or None."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if data.startswith(b"BM") and len(data) >= 26:
        return "bmp"
    if len(data) >= 16 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return None


def _png_size(data: bytes) -> tuple[int, int]:
    if len(data) < 24 or data[12:16] != b"IHDR":
        raise ImageReadError("PNG without an IHDR header")
    w, h = struct.unpack(">II", data[16:24])
    return w, h


def _jpeg_size(data: bytes) -> tuple[int, int]:
    i, n = 2, len(data)
    while i < n:
        if data[i] != 0xFF:
            raise ImageReadError("JPEG with a broken marker sequence")
        while i < n and data[i] == 0xFF:  # fill bytes
            i += 1
        if i >= n:
            break
        marker = data[i]
        i += 1
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            continue  # markers without a segment
        if marker in (0xD9, 0xDA):
            break  # end of image or start of scan before any frame header
        if i + 2 > n:
            break
        (length,) = struct.unpack(">H", data[i : i + 2])
        if length < 2:
            raise ImageReadError("JPEG with a broken segment length")
        if marker in _JPEG_SOF:
            if i + 7 > n:
                break
            h, w = struct.unpack(">HH", data[i + 3 : i + 7])
            return w, h
        i += length
    raise ImageReadError("JPEG without a frame header")


def _bmp_size(data: bytes) -> tuple[int, int]:
    (header,) = struct.unpack("<I", data[14:18])
    if header == 12:
        w, h = struct.unpack("<HH", data[18:22])
        return w, h
    w, h = struct.unpack("<ii", data[18:26])
    return abs(w), abs(h)


def _webp_size(data: bytes) -> tuple[int, int]:
    chunk = data[12:16]
    if chunk == b"VP8 " and len(data) >= 30:
        w, h = struct.unpack("<HH", data[26:30])
        return w & 0x3FFF, h & 0x3FFF
    if chunk == b"VP8L" and len(data) >= 25:
        bits = int.from_bytes(data[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X" and len(data) >= 30:
        return int.from_bytes(data[24:27], "little") + 1, int.from_bytes(data[27:30], "little") + 1
    raise ImageReadError("WebP without a known image chunk")


_SIZERS: dict[str, Callable[[bytes], tuple[int, int]]] = {
    "png": _png_size, "jpeg": _jpeg_size, "bmp": _bmp_size, "webp": _webp_size,
}


def header_size(data: bytes, kind: str) -> tuple[int, int]:
    """(width, height) as the image's header states them, without decoding pixels."""
    try:
        return _SIZERS[kind](data)
    except struct.error:
        raise ImageReadError(f"{kind.upper()} header is cut short") from None


def decode_upload(data: bytes, name: str, max_bytes: int, max_pixels: int) -> tuple[np.ndarray, str]:
    """Checked upload -> (BGR pixels, sniffed type); refuses oversize files and pixel counts before decoding."""
    if len(data) > max_bytes:
        raise PayloadTooLargeError(f"{name}: {len(data)} bytes is over the upload limit of {max_bytes} bytes")
    if not data:
        raise ImageReadError(f"{name}: empty file, expected an image")
    kind = sniff(data)
    if kind is None:
        raise UnsupportedMediaError(f"{name}: not a PNG, JPEG, BMP or WebP image")
    try:
        w, h = header_size(data, kind)
    except ImageReadError as exc:
        raise ImageReadError(f"{name}: {exc}") from None
    if w <= 0 or h <= 0:
        raise ImageReadError(f"{name}: the header states an empty image ({w}x{h})")
    if w * h > max_pixels:
        raise PayloadTooLargeError(f"{name}: {w}x{h} pixels is over the limit of {max_pixels} pixels")
    img = decode_image(data, name)
    if img.shape[0] * img.shape[1] > max_pixels:  # a header that lied about the size
        raise PayloadTooLargeError(f"{name}: {img.shape[1]}x{img.shape[0]} pixels is over the limit of {max_pixels}")
    return img, kind


Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


class BodyLimit:
    """ASGI middleware: refuses request bodies over ``max_bytes`` (by Content-Length, else while reading)."""

    def __init__(self, app: Callable[..., Awaitable[None]], max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await _send_413(send, int(declared), self.max_bytes)
            return
        seen = 0

        async def limited() -> dict[str, Any]:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise PayloadTooLargeError(f"request body over the upload limit of {self.max_bytes} bytes")
            return message

        await self.app(scope, limited, send)


async def _send_413(send: Send, size: int, limit: int) -> None:
    import json

    body = json.dumps({
        "error": f"request body of {size} bytes is over the upload limit of {limit} bytes",
        "type": PayloadTooLargeError.__name__,
    }).encode()
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
