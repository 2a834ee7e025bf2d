"""Image decoding and preprocessing with OpenCV and NumPy.

Every decoded image is a contiguous uint8 array (H, W, 3) in BGR order;
grayscale, alpha, 16-bit and palette images are converted on read.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import cv2
import numpy as np

from .errors import ImageReadError, InvalidInputError

ImageLike = Union[str, Path, np.ndarray]

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm"})

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


def file_sha256(path: Union[str, Path]) -> str:
    """Hex sha256 of a file's bytes."""
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
        scale = 255.0 if float(np.nanmax(img)) <= 1.0 else 1.0
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


def decode_image(data: bytes, name: str = "image") -> np.ndarray:
    """Decode encoded image bytes (PNG, JPEG, ...) to uint8 BGR."""
    buf = np.frombuffer(data, dtype=np.uint8)
    if buf.size == 0:
        raise ImageReadError(f"{name}: empty file, expected an image")
    img = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    if img is None:
        raise ImageReadError(f"{name}: not a readable image (corrupt or unsupported format)")
    return to_bgr_uint8(img, name)


def read_image(path: Union[str, Path]) -> np.ndarray:
    """Read an image file to uint8 BGR; raises ImageReadError naming the file."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise ImageReadError(f"{p}: no such image file") from None
    except OSError as exc:
        raise ImageReadError(f"{p}: cannot read ({exc.strerror or exc})") from None
    return decode_image(data, str(p))


def load_image(image: ImageLike) -> np.ndarray:
    """Path or array -> uint8 BGR array."""
    if isinstance(image, np.ndarray):
        return to_bgr_uint8(image)
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
    """Image files under a folder matching a glob pattern, sorted for a stable order."""
    root = Path(folder)
    if not root.is_dir():
        raise InvalidInputError(f"{root}: no such folder")
    return sorted(p for p in root.glob(pattern) if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
