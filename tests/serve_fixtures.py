"""Small real indexes for the service, HTTP and browser tests (built once per test session)."""
from __future__ import annotations

import fcntl
from pathlib import Path

import pytest

from reid_engine import Engine, scan_source
from reid_engine.ingest.crops import CropItem

#: the first people of pku_reid_dev: their camera 02 crops are the gallery, camera 01 crops the queries
PKU_PEOPLE = 8


def pku_people(pku: Path) -> list[str]:
    return sorted(p.name for p in pku.iterdir() if p.is_dir())[:PKU_PEOPLE]


def build_pku_index(folder: Path, pku: Path, weights: Path) -> Path:
    """Camera 02 crops of the first PKU_PEOPLE people (8 each), with pid and camera."""
    lock = folder.parent / (folder.name + ".lock")
    with open(lock, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        if not (folder / "manifest.json").exists():
            items = []
            for person in pku_people(pku):
                for f in sorted((pku / person).glob("02_*.png")):
                    items.append(CropItem(f, {"pid": person, "camera": "02"}))
            with Engine.create(folder, weights=weights) as engine:
                engine.add(items, show_progress=False)
    return folder


def build_pets_index(folder: Path, shared: Path, weights: Path) -> Path:
    """The first 60 frames of the PETS09 video (every 2nd), ingested as footage of camera view1."""
    video = shared / "videos" / "pets09_s2l1_view1_480x360.avi"
    if not video.is_file():
        pytest.skip(f"shared asset {video} is not available")
    lock = folder.parent / (folder.name + ".lock")
    with open(lock, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        if not (folder / "manifest.json").exists():
            with Engine.create(folder, weights=weights) as engine:
                engine.ingest_video(video, camera="view1", start_time="2009-01-01T10:00:00", max_frames=60, every=2,
                                    show_progress=False)
    return folder


@pytest.fixture(scope="session")
def pku_index(tmp_path_factory: pytest.TempPathFactory, pku: Path, osnet_onnx: Path) -> Path:
    return build_pku_index(tmp_path_factory.getbasetemp() / "serve_pku", pku, osnet_onnx)


@pytest.fixture(scope="session")
def pets_index(tmp_path_factory: pytest.TempPathFactory, shared: Path, osnet_onnx: Path) -> Path:
    return build_pets_index(tmp_path_factory.getbasetemp() / "serve_pets", shared, osnet_onnx)
