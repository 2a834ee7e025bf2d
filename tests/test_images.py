"""Decoding converts every common layout to uint8 BGR; preprocessing follows the spec."""
from __future__ import annotations

import struct
import zlib

import cv2
import numpy as np
import pytest

from reid_engine.errors import ImageReadError, InvalidInputError
from reid_engine.images import PreprocessSpec, list_images, preprocess, read_image


def _palette_png(path, pixels: np.ndarray, palette: list[tuple[int, int, int]]) -> None:
    """Write an 8-bit palette PNG by hand (OpenCV cannot write one)."""
    h, w = pixels.shape

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    raw = b"".join(b"\x00" + pixels[y].astype(np.uint8).tobytes() for y in range(h))
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 3, 0, 0, 0))
    png += chunk(b"PLTE", b"".join(bytes(c) for c in palette)) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    path.write_bytes(png)


def test_grayscale_becomes_three_equal_channels(tmp_path):
    g = np.arange(64, dtype=np.uint8).reshape(8, 8)
    cv2.imwrite(str(tmp_path / "g.png"), g)
    img = read_image(tmp_path / "g.png")
    assert img.shape == (8, 8, 3) and img.dtype == np.uint8
    assert np.array_equal(img[:, :, 0], g) and np.array_equal(img[:, :, 2], g)


def test_rgba_drops_alpha(tmp_path):
    bgra = np.zeros((4, 4, 4), np.uint8)
    bgra[..., 0], bgra[..., 1], bgra[..., 2], bgra[..., 3] = 10, 20, 30, 0
    cv2.imwrite(str(tmp_path / "a.png"), bgra)
    img = read_image(tmp_path / "a.png")
    assert img.shape == (4, 4, 3)
    assert img[0, 0].tolist() == [10, 20, 30]


def test_16bit_scales_to_8bit(tmp_path):
    x = np.full((4, 4, 3), 65535, np.uint16)
    x[0, 0] = (0, 257 * 128, 65535)
    cv2.imwrite(str(tmp_path / "d.png"), x)
    img = read_image(tmp_path / "d.png")
    assert img.dtype == np.uint8
    assert img[0, 0].tolist() == [0, 128, 255]
    assert img[1, 1].tolist() == [255, 255, 255]


def test_palette_png_is_expanded(tmp_path):
    pixels = np.array([[0, 1], [1, 0]], np.uint8)
    _palette_png(tmp_path / "p.png", pixels, [(255, 0, 0), (0, 0, 255)])  # red, blue (RGB)
    img = read_image(tmp_path / "p.png")
    assert img.shape == (2, 2, 3)
    assert img[0, 0].tolist() == [0, 0, 255]  # red in BGR
    assert img[0, 1].tolist() == [255, 0, 0]  # blue in BGR


@pytest.mark.parametrize("content", [b"", b"not an image at all", b"\x89PNG\r\n\x1a\n truncated"])
def test_corrupt_files_raise_naming_the_file(tmp_path, content):
    p = tmp_path / "bad.png"
    p.write_bytes(content)
    with pytest.raises(ImageReadError, match="bad.png"):
        read_image(p)


def test_missing_file_raises(tmp_path):
    with pytest.raises(ImageReadError, match="no such image file"):
        read_image(tmp_path / "missing.jpg")


def test_preprocess_matches_textbook_formula():
    rng = np.random.default_rng(0)
    bgr = rng.integers(0, 256, (20, 10, 3), dtype=np.uint8)
    spec = PreprocessSpec(height=20, width=10, color="RGB", scale=1 / 255.0)
    x = preprocess(bgr, spec)
    rgb = bgr[:, :, ::-1].astype(np.float64) / 255.0
    want = ((rgb - np.array(spec.mean)) / np.array(spec.std)).transpose(2, 0, 1)
    assert x.shape == (3, 20, 10) and x.dtype == np.float32
    np.testing.assert_allclose(x, want, atol=1e-5)


def test_preprocess_bgr_raw_keeps_values():
    bgr = np.random.default_rng(1).integers(0, 256, (8, 4, 3), dtype=np.uint8)
    spec = PreprocessSpec(height=8, width=4, color="BGR", scale=1.0, mean=(0, 0, 0), std=(1, 1, 1))
    np.testing.assert_array_equal(preprocess(bgr, spec), bgr.transpose(2, 0, 1).astype(np.float32))


def test_bad_spec_values_are_refused():
    with pytest.raises(InvalidInputError, match="colour order"):
        PreprocessSpec(color="HSV")
    with pytest.raises(InvalidInputError, match="interpolation"):
        PreprocessSpec(interpolation="lanczos9")


def test_list_images_is_sorted_and_filters_suffixes(tmp_path):
    for name in ["b.png", "a.jpg", "notes.txt", "sub/c.PNG"]:
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    assert [p.relative_to(tmp_path).as_posix() for p in list_images(tmp_path)] == ["a.jpg", "b.png", "sub/c.PNG"]
    with pytest.raises(InvalidInputError, match="no such folder"):
        list_images(tmp_path / "nope")
