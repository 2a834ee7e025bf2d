"""Shared fixtures: the real assets folder, a tiny deterministic encoder, seeded images."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from reid_engine.assets import shared_dir
from reid_engine.encoders import EncoderSpec, PreprocessSpec, register_encoder
from reid_engine.encoders.base import Encoder
from reid_engine.encoders.registry import _REGISTRY


def _require(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"shared asset {path} is not available (set REID_ENGINE_SHARED)")
    return path


@pytest.fixture(scope="session")
def shared() -> Path:
    return _require(shared_dir())


@pytest.fixture(scope="session")
def pku(shared: Path) -> Path:
    return _require(shared / "data" / "pku_reid_dev")


@pytest.fixture(scope="session")
def osnet_onnx(shared: Path) -> Path:
    return _require(shared / "weights" / "osnet" / "osnet_x0_25_msmt17.onnx")


class TinyEncoder(Encoder):
    """A deterministic stand-in: a fixed random projection of a 16x8 thumbnail."""

    def __init__(self, spec, weights, sha, device="cpu", dim: int = 16):
        super().__init__(spec, weights, sha, device)
        rng = np.random.default_rng(int(sha[:8], 16))
        self.proj = rng.standard_normal((3 * 16 * 8, dim)).astype(np.float32)
        self.dim = dim

    def _forward(self, batch: np.ndarray) -> np.ndarray:
        return batch.reshape(len(batch), -1) @ self.proj


TINY_SPEC = EncoderSpec(
    name="tiny-test",
    runtime="numpy",
    preprocess=PreprocessSpec(height=16, width=8, color="RGB", scale=1 / 255.0),
    builder=lambda spec, w, sha, device, **kw: TinyEncoder(spec, w, sha, device, **kw),
    description="test-only encoder",
)
if TINY_SPEC.name not in _REGISTRY:
    register_encoder(TINY_SPEC)


@pytest.fixture(scope="session")
def rerank_devsets_tool():
    """tools/rerank_devsets.py loaded as a module (tools are not part of the package)."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "tools" / "rerank_devsets.py"
    spec = importlib.util.spec_from_file_location("rerank_devsets", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture
def tiny_weights(tmp_path: Path) -> Path:
    p = tmp_path / "tiny.weights"
    p.write_bytes(b"tiny encoder weights v1")
    return p


def write_crops(folder: Path, n: int, seed: int = 0, prefix: str = "crop") -> list[Path]:
    """Write n distinct random 32x16 colour crops as PNG files."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        img = rng.integers(0, 256, (32, 16, 3), dtype=np.uint8)
        p = folder / f"{prefix}_{i:04d}.png"
        cv2.imwrite(str(p), img)
        paths.append(p)
    return paths
