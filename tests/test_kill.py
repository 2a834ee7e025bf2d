"""kill -9 of `reid-engine index` and `reid-engine ingest` at random moments loses nothing (slow).

Each round starts the real CLI in a subprocess, kills it with SIGKILL after a random delay, and checks
that the index still opens and holds only committed work; a last run completes it, and the result must
equal an index built without interruption.
"""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from reid_engine import Engine

pytestmark = [pytest.mark.slow, pytest.mark.skipif(os.name != "posix", reason="needs SIGKILL")]


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "reid_engine.cli", *args]


def _kill_after(cmd: list[str], delay: float) -> int:
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(delay)
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    return proc.wait(60)


def _content(path: Path) -> dict[str, np.ndarray]:
    """sha256 -> stored vector, for every crop of the index."""
    with Engine.open(path) as eng:
        ids = eng.store.backend.live_ids()
        rows = eng.store.rows(ids.tolist())
        vecs = eng.store.vectors(ids)
        return {rows[int(i)]["sha256"]: v for i, v in zip(ids, vecs)}


def _same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert sorted(a) == sorted(b)
    for key in a:
        np.testing.assert_allclose(a[key], b[key], atol=1e-5)


def test_twenty_kills_during_index_lose_nothing(pku: Path, osnet_onnx: Path, tmp_path: Path) -> None:
    rng = random.Random(11)
    src = pku / "protocol_cross_camera.csv"
    args = [str(src), "--role", "gallery", "--weights", str(osnet_onnx), "--commit-every", "8"]
    killed = tmp_path / "killed"
    counts = []
    for _ in range(20):
        _kill_after(_cli("index", *args, "--index", str(killed)), rng.uniform(1.5, 6.0))
        if (killed / "manifest.json").exists():
            with Engine.open(killed) as eng:  # opens after every kill, holding whole commits only
                counts.append(eng.stats()["crops"])
    assert counts == sorted(counts), "a kill lost committed crops"
    done = subprocess.run(_cli("index", *args, "--index", str(killed)), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    clean = subprocess.run(_cli("index", *args, "--index", str(tmp_path / "clean")), capture_output=True, text=True)
    assert clean.returncode == 0, clean.stderr
    _same(_content(killed), _content(tmp_path / "clean"))


def test_ten_kills_during_ingest_lose_nothing(shared: Path, osnet_onnx: Path, tmp_path: Path) -> None:
    video = shared / "videos" / "pets09_s2l1_view1_480x360.avi"
    if not video.exists():
        pytest.skip(f"{video} is not available")
    rng = random.Random(12)
    args = [str(video), "--weights", str(osnet_onnx), "--end-frame", "160", "--checkpoint-frames", "20",
            "--camera", "view1"]
    killed = tmp_path / "killed"
    for _ in range(10):
        _kill_after(_cli("ingest", *args, "--index", str(killed)), rng.uniform(2.0, 8.0))
        if (killed / "manifest.json").exists():
            Engine.open(killed).close()
    done = subprocess.run(_cli("ingest", *args, "--index", str(killed)), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    clean = subprocess.run(_cli("ingest", *args, "--index", str(tmp_path / "clean")), capture_output=True, text=True)
    assert clean.returncode == 0, clean.stderr
    _same(_content(killed), _content(tmp_path / "clean"))
    with Engine.open(killed) as a, Engine.open(tmp_path / "clean") as b:
        assert a.stats()["tracks"] == b.stats()["tracks"]
