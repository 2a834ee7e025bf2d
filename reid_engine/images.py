"""Image decoding and preprocessing with OpenCV and NumPy.

Every decoded image is a contiguous uint8 array (H, W, 3) in BGR order;
grayscale, alpha, 16-bit and palette images are converted on read.
"""
from __future__ import annotations

import errno
import hashlib
import os
import stat
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import cv2
import numpy as np

from .errors import ImageReadError, ImageTooLargeError, InvalidInputError

ImageLike = Union[str, Path, np.ndarray]

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm"})

#: environment variable holding the largest accepted image, in pixels (width x height)
MAX_PIXELS_ENV = "REID_ENGINE_MAX_PIXELS"
#: default pixel limit: a 40-megapixel photo decodes to 120 MB; person crops are far smaller
DEFAULT_MAX_PIXELS = 40_000_000

INTERPOLATIONS = {
    "nearest": cv2.INTER_NEAREST,
    "linear": cv2.INTER_LINEAR,
    "bilinear": cv2.INTER_LINEAR,
    "cubic": cv2.INTER_CUBIC,
    "bicubic": cv2.INTER_CUBIC,
    "area": cv2.INTER_AREA,
}


@dataclass(frozen=True)
class PreprocessSpec:
    """How an encoder wants its input: size, colour order, scale, normalisation."""

    height: int = 256
    width: int = 128
    color: str = "RGB"  # "RGB" or "BGR"
    scale: float = 1.0 / 255.0
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    interpolation: str = "linear"

    def __post_init__(self) -> None:
        if self.color not in ("RGB", "BGR"):
            raise InvalidInputError(f"colour order {self.color!r}: expected 'RGB' or 'BGR'")
        if self.interpolation not in INTERPOLATIONS:
            raise InvalidInputError(
                f"interpolation {self.interpolation!r}: expected one of {sorted(INTERPOLATIONS)}"
            )
        if self.height <= 0 or self.width <= 0:
            raise InvalidInputError(f"input size {self.height}x{self.width}: expected positive sizes")

    def to_dict(self) -> dict:
        return {
            "height": self.height,
            "width": self.width,
            "color": self.color,
            "scale": self.scale,
            "mean": list(self.mean),
            "std": list(self.std),
            "interpolation": self.interpolation,
        }

    @classmethod
    def from_dict(cls, d: dict) -> "PreprocessSpec":
        return cls(
            height=int(d["height"]),
            width=int(d["width"]),
            color=str(d["color"]),
            scale=float(d["scale"]),
            mean=tuple(float(x) for x in d["mean"]),  # type: ignore[arg-type]
            std=tuple(float(x) for x in d["std"]),  # type: ignore[arg-type]
            interpolation=str(d.get("interpolation", "linear")),
        )


def special_file_kind(path: Union[str, Path]) -> Optional[str]:
    """What ``path`` is when it exists but is neither a regular file nor a folder ("a FIFO", ...); else None.

    Reading such a file can block forever (a FIFO) or never end (``/dev/zero``).
    """
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):
        return None  # missing or unreadable: the caller's open() says why
    for test, kind in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return kind
    return None


def why_not_a_file(path: Union[str, Path]) -> str:
    """Why ``path`` cannot be read as a regular file, for a message: "no such file", "is a folder", "is a FIFO"."""
    p = Path(path)
    kind = special_file_kind(p)
    if kind is not None:
        return f"is {kind}"
    if p.is_dir():
        return "is a folder"
    try:
        os.stat(p)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "is a loop of symbolic links"
        if p.is_symlink():
            return "is a symbolic link to nothing"
    return "no such file"


def file_sha256(path: Union[str, Path]) -> str:
    """Hex sha256 of a file's bytes; OSError for a FIFO or device (whose reading could block or never end)."""
    kind = special_file_kind(path)
    if kind is not None:
        raise OSError(errno.EINVAL, f"is {kind}, expected a regular file", str(path))
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def to_bgr_uint8(img: np.ndarray, name: str = "array") -> np.ndarray:
    """Convert a decoded image of any common layout to contiguous uint8 BGR (H, W, 3)."""
    if not isinstance(img, np.ndarray) or img.size == 0:
        raise ImageReadError(f"{name}: expected a non-empty image array")
    if img.dtype == np.uint16:
        img = (img.astype(np.uint32) * 255 + 32767) // 65535
        img = img.astype(np.uint8)
    elif img.dtype in (np.float32, np.float64):
        if not np.isfinite(img).all():  # casting them to uint8 would make up pixel values
            raise ImageReadError(f"{name}: the image holds NaN or infinite pixel values")
        scale = 255.0 if float(np.max(img)) <= 1.0 else 1.0
        img = np.clip(img * scale, 0, 255).astype(np.uint8)
    elif img.dtype == np.bool_:
        img = img.astype(np.uint8) * 255
    elif img.dtype != np.uint8:
        raise ImageReadError(f"{name}: unsupported pixel type {img.dtype}")
    if img.ndim == 2:
        img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    elif img.ndim == 3 and img.shape[2] == 1:
        img = cv2.cvtColor(img[:, :, 0], cv2.COLOR_GRAY2BGR)
    elif img.ndim == 3 and img.shape[2] == 4:
        img = cv2.cvtColor(img, cv2.COLOR_BGRA2BGR)
    elif not (img.ndim == 3 and img.shape[2] == 3):
        raise ImageReadError(f"{name}: expected an image of shape (H, W[, 1|3|4]), got {img.shape}")
    return np.ascontiguousarray(img)


def max_pixels() -> int:
    """The largest image accepted, in pixels: $REID_ENGINE_MAX_PIXELS, else ``DEFAULT_MAX_PIXELS``."""
    text = os.environ.get(MAX_PIXELS_ENV, "").strip()
    if not text:
        return DEFAULT_MAX_PIXELS
    try:
        value = int(float(text))
    except (ValueError, OverflowError):
        value = 0
    if value < 1:
        raise InvalidInputError(f"{MAX_PIXELS_ENV}={text!r}: expected a positive number of pixels")
    return value


def _jpeg_size(data: bytes) -> Optional[tuple[int, int]]:
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0x01, 0xD8) or 0xD0 <= marker <= 0xD7:  # markers without a length
            pos += 2
            continue
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # start of frame
            if pos + 9 > len(data):
                return None
            h, w = struct.unpack(">HH", data[pos + 5 : pos + 9])
            return w, h
        if marker == 0xDA or length < 2:  # scan data before any frame header: give up
            return None
        pos += 2 + length
    return None


def _pnm_size(data: bytes) -> Optional[tuple[int, int]]:
    tokens: list[bytes] = []
    for line in data[2:4096].splitlines():
        tokens.extend(line.split(b"#", 1)[0].split())
        if len(tokens) >= 2:
            break
    try:
        return int(tokens[0]), int(tokens[1])
    except (IndexError, ValueError):
        return None


def _webp_size(data: bytes) -> Optional[tuple[int, int]]:
    kind = data[12:16]
    if kind == b"VP8X" and len(data) >= 30:
        w = int.from_bytes(data[24:27], "little") + 1
        h = int.from_bytes(data[27:30], "little") + 1
        return w, h
    if kind == b"VP8L" and len(data) >= 25:
        bits = int.from_bytes(data[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if kind == b"VP8 " and len(data) >= 30:
        w, h = struct.unpack("<HH", data[26:30])
        return w & 0x3FFF, h & 0x3FFF
    return None


def _tiff_size(data: bytes) -> Optional[tuple[int, int]]:
    end = "<" if data[:2] == b"II" else ">"
    try:
        (offset,) = struct.unpack(end + "I", data[4:8])
        (n,) = struct.unpack(end + "H", data[offset : offset + 2])
        size: dict[int, int] = {}
        for i in range(n):
            tag, typ, _, value = struct.unpack(end + "HHI4s", data[offset + 2 + 12 * i : offset + 14 + 12 * i])
            if tag in (256, 257):
                size[tag] = struct.unpack(end + ("H" if typ == 3 else "I"), value[: 2 if typ == 3 else 4])[0]
        return size[256], size[257]
    except (struct.error, KeyError):
        return None


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def image_size(data: bytes) -> Optional[tuple[int, int]]:
    """(width, height) announced by an encoded image's header, without decoding; None when unknown."""
    if data[:8] == PNG_SIGNATURE and len(data) >= 24:
        return struct.unpack(">II", data[16:24])
    if data[:2] == b"\xff\xd8":
        return _jpeg_size(data)
    if data[:2] == b"BM" and len(data) >= 26:
        w, h = struct.unpack("<ii", data[18:26])
        return abs(w), abs(h)
    if data[:6] in (b"GIF87a", b"GIF89a") and len(data) >= 10:
        return struct.unpack("<HH", data[6:10])
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return _webp_size(data)
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return _tiff_size(data)
    if data[:1] == b"P" and data[1:2] in b"123456" and len(data) > 2:
        return _pnm_size(data)
    return None


def check_image_size(width: int, height: int, name: str) -> None:
    """Refuse an image larger than ``max_pixels()`` before it is decoded."""
    limit = max_pixels()
    if int(width) * int(height) > limit:
        raise ImageTooLargeError(
            f"{name}: image of {width}x{height} pixels is larger than the limit of {limit} pixels "
            f"(set {MAX_PIXELS_ENV} to accept it)"
        )


def decode_image(data: bytes, name: str = "image") -> np.ndarray:
    """Decode encoded image bytes (PNG, JPEG, ...) to uint8 BGR; refuses images above the pixel limit."""
    if len(data) == 0:
        raise ImageReadError(f"{name}: empty file, expected an image")
    size = image_size(data)
    if size is not None:
        check_image_size(size[0], size[1], name)
        if min(size) <= 0:  # refused here: libpng would print its own lines to stderr first
            raise ImageReadError(f"{name}: not a readable image (its header announces {size[0]}x{size[1]} pixels)")
    if data.startswith(PNG_SIGNATURE) and data.rfind(b"IEND") < 0:
        # refused before libpng, which would print a line of its own to stderr and then fail
        raise ImageReadError(f"{name}: not a readable image (a truncated PNG: no IEND chunk)")
    buf = np.frombuffer(data, dtype=np.uint8)
    try:
        img = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    except cv2.error as exc:  # e.g. OpenCV's own size limit, or a decoder failing mid-file
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else "decoder error"
        raise ImageReadError(f"{name}: not a readable image ({reason})") from None
    if img is None:
        raise ImageReadError(f"{name}: not a readable image (corrupt or unsupported format)")
    if size is None:  # a format whose header was not parsed: check after decoding
        check_image_size(img.shape[1], img.shape[0], name)
    return to_bgr_uint8(img, name)


def read_image(path: Union[str, Path]) -> np.ndarray:
    """Read an image file to uint8 BGR; raises ImageReadError naming the file."""
    p = Path(path)
    kind = special_file_kind(p)
    if kind is not None:
        raise ImageReadError(f"{p}: is {kind}, expected an image file")
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise ImageReadError(f"{p}: no such image file") from None
    except IsADirectoryError:
        raise ImageReadError(f"{p}: is a folder, expected an image file") from None
    except OSError as exc:
        raise ImageReadError(f"{p}: cannot read ({exc.strerror or exc})") from None
    return decode_image(data, str(p))


def load_image(image: ImageLike) -> np.ndarray:
    """Path or array -> uint8 BGR array."""
    if isinstance(image, np.ndarray):
        return to_bgr_uint8(image)
    if isinstance(image, bytes):
        image = os.fsdecode(image)
    if not isinstance(image, (str, Path)) or str(image) == "":
        raise InvalidInputError(f"image {image!r}: expected an image file path or a BGR array")
    return read_image(image)


def preprocess(img_bgr: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """uint8 BGR (H, W, 3) -> float32 (3, height, width) ready for the network."""
    img = cv2.resize(img_bgr, (spec.width, spec.height), interpolation=INTERPOLATIONS[spec.interpolation])
    if spec.color == "RGB":
        img = img[:, :, ::-1]
    x = img.astype(np.float32)
    if spec.scale != 1.0:
        x *= np.float32(spec.scale)
    mean = np.asarray(spec.mean, dtype=np.float32)
    std = np.asarray(spec.std, dtype=np.float32)
    if np.any(mean != 0.0):
        x -= mean
    if np.any(std != 1.0):
        x /= std
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def list_images(folder: Union[str, Path], pattern: str = "**/*") -> list[Path]:
    """Image files under a folder matching a glob pattern, sorted for a stable order.

    Symbolic links with an image's name are listed even when they lead nowhere, so that the caller
    reports them as unreadable instead of their being left out without a word."""
    root = Path(folder)
    if not root.is_dir():
        raise InvalidInputError(f"{root}: no such folder")
    if ".." in Path(pattern).parts:
        raise InvalidInputError(f"glob {pattern!r}: expected a pattern that stays inside {root} (no '..')")
    try:
        found = list(root.glob(pattern))
    except (ValueError, NotImplementedError) as exc:  # '' or an absolute pattern
        raise InvalidInputError(
            f"glob {pattern!r}: expected a pattern relative to {root} such as '**/*.png' ({exc})"
        ) from None
    return sorted(p for p in found if p.suffix.lower() in IMAGE_SUFFIXES and (p.is_file() or p.is_symlink()))
