"""Ray runs give the index a local run gives: same rows, vectors and answers; a killed driver resumes exactly."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import sqlalchemy as sa

from reid_engine import Engine, scan_source
from reid_engine.distributed.ray_runner import _LookupEncoder, pixels_key
from reid_engine.errors import InvalidInputError
from reid_engine.index import db
from reid_engine.ingest.pipeline import ingest_video
from reid_engine.ingest.video import iter_frames

START = "2009-01-01T10:00:00"
VOLATILE = {"added_at", "updated_at"}


def test_lookup_encoder_returns_the_features_of_the_same_pixels() -> None:
    rng = np.random.default_rng(0)
    crops = [rng.integers(0, 255, (20, 10, 3), dtype=np.uint8) for _ in range(3)]
    enc = _LookupEncoder(4)
    enc.features = {pixels_key(crops[0]): np.ones(4, np.float32), pixels_key(crops[2]): np.full(4, 2.0, np.float32)}
    res = enc.encode_files([crops[2].copy(), crops[1], crops[0]])
    assert res.ok == [0, 2] and [p for p, _ in res.failures] == [1]
    np.testing.assert_array_equal(res.features, [[2.0] * 4, [1.0] * 4])
    assert pixels_key(crops[0]) != pixels_key(crops[0].reshape(10, 20, 3))  # the shape is part of the identity


def test_bad_arguments_fail_before_any_cluster_starts(tmp_path: Path) -> None:
    from reid_engine.distributed import index_with_ray, ingest_with_ray

    with pytest.raises(InvalidInputError):
        index_with_ray(None, [], chunk_size=0)  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError):
        ingest_with_ray(None, ["a.avi"], every=0)  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError):
        ingest_with_ray(None, ["a.avi", "b.avi"], cameras=["x"])  # type: ignore[arg-type]


# -- against a local run, on a local two-worker cluster (slow: Ray takes seconds to start) ----------
@pytest.fixture(scope="module")
def cluster():
    pytest.importorskip("ray")
    from reid_engine.distributed.ray_runner import connect

    r = connect(None, num_cpus=2)
    yield r
    r.shutdown()


def _rows(engine: Engine) -> list[dict]:
    with engine.store.sql.connect() as conn:
        rows = conn.execute(sa.select(db.crops).order_by(db.crops.c.id)).mappings()
        return [{k: v for k, v in r.items() if k not in VOLATILE} for r in rows]


def _tracks(engine: Engine) -> dict[str, dict]:
    with engine.store.sql.connect() as conn:
        rows = conn.execute(sa.select(db.tracks)).mappings()
        return {r["key"]: {k: v for k, v in r.items() if k not in VOLATILE} for r in rows}


def _assert_same_index(a: Engine, b: Engine, queries: list) -> None:
    ra, rb = _rows(a), _rows(b)
    assert ra and ra == rb
    ids = [r["id"] for r in ra]
    np.testing.assert_allclose(a.store.vectors(ids), b.store.vectors(ids), atol=1e-5)
    if queries:
        for qa, qb in zip(a.query(queries, k=10, rerank="none"), b.query(queries, k=10, rerank="none")):
            assert [h.path for h in qa.hits] == [h.path for h in qb.hits]
            np.testing.assert_allclose([h.distance for h in qa.hits], [h.distance for h in qb.hits], atol=1e-5)


@pytest.mark.slow
def test_index_with_ray_equals_a_local_add(tmp_path: Path, pku: Path, osnet_onnx: Path, cluster) -> None:
    from reid_engine.distributed import index_with_ray

    items = scan_source(pku / "protocol_cross_camera.csv")[:60]
    items = items + items[:5]  # repeats are skipped as duplicates in both runs
    with Engine.create(tmp_path / "local", weights=osnet_onnx) as local, \
            Engine.create(tmp_path / "ray", weights=osnet_onnx) as dist:
        rl = local.add(items, commit_every=25)
        rr = index_with_ray(dist, items, commit_every=25, chunk_size=8, max_in_flight=3)
        assert (rr.added, rr.duplicates) == (rl.added, rl.duplicates) == (60, 5)
        assert rr.ids == rl.ids
        _assert_same_index(local, dist, [str(p) for p in sorted(pku.glob("00[12]/01_*.png"))[:4]])
        again = index_with_ray(dist, items)
        assert again.added == 0 and again.duplicates == len(items)


def _clip(src: Path, dest: Path, start: int, n: int) -> Path:
    writer = cv2.VideoWriter(str(dest), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (480, 360))
    for _, frame in iter_frames(src, start, start + n):
        writer.write(frame)
    writer.release()
    return dest


@pytest.fixture(scope="module")
def clips(shared: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    src = shared / "videos" / "pets09_s2l1_view1_480x360.avi"
    if not src.is_file() or not (shared / "weights" / "intel" / "pedestrian-detection-adas-0002").is_dir():
        pytest.skip("PETS video or pedestrian detector not available")
    folder = tmp_path_factory.mktemp("ray_clips")
    return [_clip(src, folder / "clip_a.avi", 0, 60), _clip(src, folder / "clip_b.avi", 300, 60)]


@pytest.fixture(scope="module")
def local_footage(clips: list[Path], osnet_onnx: Path, tmp_path_factory: pytest.TempPathFactory) -> Engine:
    eng = Engine.create(tmp_path_factory.mktemp("footage") / "local", weights=osnet_onnx)
    for clip, cam in zip(clips, ["north", "south"]):
        assert ingest_video(eng, clip, cam, start_time=START, checkpoint_frames=10, show_progress=False).done
    yield eng
    eng.close()


@pytest.mark.slow
def test_ingest_with_ray_equals_local_ingest(tmp_path: Path, clips, local_footage: Engine, osnet_onnx, cluster) -> None:
    from reid_engine.distributed import ingest_with_ray

    with Engine.create(tmp_path / "ray", weights=osnet_onnx) as dist:
        reports = ingest_with_ray(dist, clips, cameras=["north", "south"], start_time=START, checkpoint_frames=10)
        assert [r.done for r in reports] == [True, True] and sum(r.frames for r in reports) == 120
        _assert_same_index(local_footage, dist, [])
        assert _tracks(dist) == _tracks(local_footage) and _tracks(dist)
        again = ingest_with_ray(dist, clips, cameras=["north", "south"], start_time=START, checkpoint_frames=10)
        assert all(r.already_done for r in again)


DRIVER = textwrap.dedent("""
    import sys
    from reid_engine import Engine
    from reid_engine.distributed import ingest_with_ray
    eng = Engine.create(sys.argv[1], weights=sys.argv[2])
    ingest_with_ray(eng, sys.argv[3:], cameras=["north", "south"], start_time="{start}", checkpoint_frames=5,
                    max_ahead=1, show_progress=False)
""").format(start=START)


def _committed_frames(index: Path) -> int:
    db_file = index / "crops.db"
    if not db_file.exists():
        return 0
    try:
        with sa.create_engine(f"sqlite:///{db_file}").connect() as conn:
            rows = conn.execute(sa.select(db.ingest_sources.c.frames_done)).scalars().all()
    except sa.exc.OperationalError:  # not created yet, or locked by the writer
        return 0
    return int(sum(rows))


@pytest.mark.slow
def test_kill_9_of_the_driver_during_a_ray_ingest_resumes_exactly(
    tmp_path: Path, clips, local_footage: Engine, osnet_onnx: Path, cluster
) -> None:
    from reid_engine.distributed import ingest_with_ray

    index = tmp_path / "idx"
    proc = subprocess.Popen([sys.executable, "-c", DRIVER, str(index), str(osnet_onnx), *map(str, clips)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 240
        while _committed_frames(index) < 15 and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None, "the driver finished before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
    with Engine.open(index) as eng:
        after_crash = _rows(eng)
        with eng.store.sql.connect() as conn:
            progress = conn.execute(sa.select(db.ingest_sources)).mappings().all()
        assert not all(p["done"] for p in progress) and 15 <= sum(p["frames_done"] for p in progress) < 120
        assert {r["track"] for r in after_crash} == set(_tracks(eng))  # tracks committed with their crops
        reports = ingest_with_ray(eng, clips, cameras=["north", "south"], start_time=START, checkpoint_frames=5)
        assert any(r.resumed_from for r in reports) and all(r.done for r in reports)
        assert after_crash == _rows(eng)[: len(after_crash)]
        _assert_same_index(local_footage, eng, [])
        assert _tracks(eng) == _tracks(local_footage)
