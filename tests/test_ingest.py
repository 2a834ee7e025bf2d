"""Footage ingest end to end on short clips of the real PETS video (tiny test encoder)."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from reid_engine import Engine
from reid_engine.cli import main
from reid_engine.errors import InvalidInputError
from reid_engine.index import db, store as store_mod
from reid_engine.ingest.detect import create_detector
from reid_engine.ingest.pipeline import ingest_video
from reid_engine.ingest.video import iter_frames

START = "2009-01-01T10:00:00"
START_TS = 1230804000.0
FPS = 10.0


def _write_clip(src: Path, dest: Path, start: int, n: int) -> Path:
    writer = cv2.VideoWriter(str(dest), cv2.VideoWriter_fourcc(*"MJPG"), FPS, (480, 360))
    for _, frame in iter_frames(src, start, start + n):
        writer.write(frame)
    writer.release()
    return dest


@pytest.fixture(scope="module")
def clips(shared: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two 45-frame clips of the PETS video (frames 0-44 and 300-344) as MJPEG files."""
    src = shared / "videos" / "pets09_s2l1_view1_480x360.avi"
    if not src.is_file():
        pytest.skip("PETS video not available")
    folder = tmp_path_factory.mktemp("clips")
    return {"a": _write_clip(src, folder / "clip_a.avi", 0, 45), "b": _write_clip(src, folder / "clip_b.avi", 300, 45)}


@pytest.fixture(scope="module")
def detector(shared: Path):
    if not (shared / "weights" / "intel" / "pedestrian-detection-adas-0002").is_dir():
        pytest.skip("pedestrian detector weights not available")
    return create_detector()


@pytest.fixture
def engine(tmp_path: Path, tiny_weights: Path):
    with Engine.create(tmp_path / "idx", encoder="tiny-test", weights=tiny_weights) as eng:
        yield eng


def _ingest(engine: Engine, clip: Path, detector, camera: str = "cam1", **kw):
    kw.setdefault("checkpoint_frames", 15)
    return ingest_video(engine, clip, camera, start_time=START, detector=detector, show_progress=False, **kw)


def _crops(engine: Engine) -> list[dict]:
    with engine.store.sql.connect() as conn:
        return [dict(r) for r in conn.execute(sa.select(db.crops).order_by(db.crops.c.id)).mappings()]


def _tracks(engine: Engine) -> dict[str, dict]:
    with engine.store.sql.connect() as conn:
        return {r["key"]: dict(r) for r in conn.execute(sa.select(db.tracks)).mappings()}


def _content(engine: Engine) -> set[tuple]:
    return {(r["track"], r["frame"], round(r["box_x"], 2), round(r["box_y"], 2), r["sha256"]) for r in _crops(engine)}


def test_ingest_gives_crops_and_tracks_with_where_and_when(engine: Engine, clips, detector) -> None:
    report = _ingest(engine, clips["a"], detector)
    assert report.done and report.frames == 45 and report.tracks > 0 and report.crops >= report.tracks
    stats = engine.stats()
    tracks = _tracks(engine)
    assert stats["crops"] == report.crops and stats["tracks"] == len(tracks) == report.tracks
    assert stats["cameras"] == {"cam1": report.crops}
    rows = _crops(engine)
    for r in rows:
        assert r["camera"] == "cam1" and r["source"] == str(clips["a"].resolve())
        assert 0 <= r["frame"] < 45
        assert r["timestamp"] == pytest.approx(START_TS + r["frame"] / FPS)
        assert r["extra"]["offset"] == pytest.approx(r["frame"] / FPS)
        assert 0 <= r["box_x"] and r["box_x"] + r["box_w"] <= 480 and 0 <= r["box_y"] and r["box_y"] + r["box_h"] <= 360
        assert r["track"] in tracks and r["track"].startswith("cam1/clip_a/")
    for key, t in tracks.items():
        mine = [r for r in rows if r["track"] == key]
        assert sorted(t["crop_ids"]) == sorted(r["id"] for r in mine) and t["best_crop"] in t["crop_ids"]
        assert t["start_frame"] <= min(r["frame"] for r in mine) <= max(r["frame"] for r in mine) <= t["end_frame"]
        assert t["start_time"] == pytest.approx(START_TS + t["start_frame"] / FPS)
        assert t["end_time"] == pytest.approx(START_TS + t["end_frame"] / FPS)
        emb = np.frombuffer(t["embedding"], np.float32)
        mean = engine.store.vectors([r["id"] for r in mine]).mean(axis=0)
        np.testing.assert_allclose(emb, mean / np.linalg.norm(mean), atol=1e-5)
    # the kept crops are the pixels under their boxes in the source frames
    r = rows[0]
    frame = dict(iter_frames(clips["a"], r["frame"], r["frame"] + 1))[r["frame"]]
    assert r["box_h"] >= 24 and frame.shape == (360, 480, 3)


def test_rerun_of_a_finished_video_adds_nothing(engine: Engine, clips, detector) -> None:
    first = _ingest(engine, clips["a"], detector)
    before = _content(engine)
    again = _ingest(engine, clips["a"], detector)
    assert again.already_done and again.frames == 0 and again.crops == 0
    assert _content(engine) == before


def test_a_range_then_the_rest(engine: Engine, clips, detector) -> None:
    part = _ingest(engine, clips["a"], detector, max_frames=20)
    assert part.frames == 20 and not part.done
    assert max(r["frame"] for r in _crops(engine)) < 20
    rest = _ingest(engine, clips["a"], detector)
    assert rest.resumed_from == 20 and rest.frames == 25 and rest.done
    keys = [r["track"] for r in _crops(engine)]
    assert len(set(keys)) == engine.stats()["tracks"] == len(_tracks(engine))  # track numbers did not collide


class _InterruptingDetector:
    """The real detector, with a Ctrl-C arriving at the given call."""

    def __init__(self, inner, at: int) -> None:
        self.inner, self.at, self.calls = inner, at, 0
        self.name = inner.name

    def detect(self, frame):
        self.calls += 1
        if self.calls == self.at:
            raise KeyboardInterrupt("Ctrl-C")
        return self.inner.detect(frame)

    def describe(self):
        return self.inner.describe()


@pytest.mark.parametrize("where", ["between commits", "inside a commit"])
def test_interruption_leaves_a_consistent_index_that_resumes_to_the_same_result(
    tmp_path: Path, tiny_weights: Path, clips, detector, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    with Engine.create(tmp_path / "ref", encoder="tiny-test", weights=tiny_weights) as ref:
        _ingest(ref, clips["a"], detector, checkpoint_frames=10)
        expected = _content(ref)
        expected_tracks = set(_tracks(ref))
    assert expected

    eng = Engine.create(tmp_path / "idx", encoder="tiny-test", weights=tiny_weights)
    if where == "inside a commit":  # the process dies after the vectors are written, before the SQL commit
        calls = {"n": 0}

        def crash_on_second_vector_commit() -> None:
            calls["n"] += 1
            if calls["n"] == 2:
                raise KeyboardInterrupt("power cut")

        monkeypatch.setattr(store_mod, "_after_vectors_written", crash_on_second_vector_commit)
        run_detector = detector
    else:
        run_detector = _InterruptingDetector(detector, at=34)
    with pytest.raises(KeyboardInterrupt):
        _ingest(eng, clips["a"], run_detector, checkpoint_frames=10)
    eng.close()
    monkeypatch.undo()

    with Engine.open(tmp_path / "idx") as eng:  # opens: vectors, rows and manifest agree
        after_crash = _content(eng)
        assert after_crash < expected  # only whole commits made it
        with eng.store.sql.connect() as conn:
            progress = conn.execute(sa.select(db.ingest_sources)).mappings().one()
        assert not progress["done"] and 0 < progress["next_frame"] < 45
        if where == "between commits":
            assert progress["next_frame"] == 30
        assert {r["track"] for r in _crops(eng)} == set(_tracks(eng))  # tracks committed with their crops
        report = _ingest(eng, clips["a"], detector, checkpoint_frames=10)
        assert report.resumed_from == progress["next_frame"] and report.replayed > 0 and report.done
        assert report.frames == 45 - progress["next_frame"]
        assert _content(eng) == expected
        assert set(_tracks(eng)) == expected_tracks
        assert eng.stats()["tracks"] == len(expected_tracks)


def test_resume_with_other_settings_is_refused(engine: Engine, clips, detector) -> None:
    _ingest(engine, clips["a"], detector, max_frames=10)
    with pytest.raises(InvalidInputError, match="every"):
        _ingest(engine, clips["a"], detector, every=2)


def test_two_cameras_in_one_index(engine: Engine, clips, detector) -> None:
    ra = _ingest(engine, clips["a"], detector, camera="north")
    rb = _ingest(engine, clips["b"], detector, camera="south", every=2)
    stats = engine.stats()
    assert set(stats["cameras"]) == {"north", "south"}
    assert stats["crops"] == ra.crops + rb.crops
    assert stats["tracks"] == ra.tracks + rb.tracks == len(_tracks(engine))
    south = [r for r in _crops(engine) if r["camera"] == "south"]
    assert south and all(r["frame"] % 2 == 0 for r in south)
    feats = engine.store.vectors([south[0]["id"]])
    res = engine.query_tracks_features(feats, 50, cameras=["north"])
    assert res[0].hits and all(h.camera == "north" for h in res[0].hits)


def test_query_tracks_returns_one_hit_per_track(engine: Engine, clips, detector) -> None:
    _ingest(engine, clips["a"], detector)
    tracks = _tracks(engine)
    key, t = next(iter(tracks.items()))
    q = np.frombuffer(t["embedding"], np.float32)[None]
    res = engine.query_tracks_features(q, 100)[0]
    assert res.hits[0].track == key and res.hits[0].distance == pytest.approx(0.0, abs=1e-5)
    assert len(res.hits) == len(tracks) == len({h.track for h in res.hits})
    assert [h.rank for h in res.hits] == list(range(1, len(tracks) + 1))
    assert all(a.distance <= b.distance for a, b in zip(res.hits, res.hits[1:]))
    best = res.hits[0]
    assert best.best.id == t["best_crop"] and best.start_time == pytest.approx(t["start_time"])
    crop_hits = engine.query_features(q, 100)[0].hits
    assert len(crop_hits) == engine.stats()["crops"] > len(res.hits)  # the crop view stays available
    # a time window keeps the tracks that overlap it
    ts = START_TS + 2.0
    windowed = engine.query_tracks_features(q, 100, time_from=ts, time_to=ts)[0].hits
    expected = {k for k, r in tracks.items() if r["start_time"] <= ts <= r["end_time"]}
    assert {h.track for h in windowed} == expected


def _crop_file(engine: Engine, folder: Path) -> Path:
    """A query image: the best crop of the first track, cut from the video."""
    rows = _crops(engine)
    r = rows[0]
    frame = dict(iter_frames(r["source"], r["frame"], r["frame"] + 1))[r["frame"]]
    x, y, w, h = (int(round(v)) for v in (r["box_x"], r["box_y"], r["box_w"], r["box_h"]))
    path = folder / "query.png"
    cv2.imwrite(str(path), frame[y : y + h, x : x + w])
    return path


def test_cli_ingest_info_and_query_with_tracks_crops_and_render(
    tmp_path: Path, tiny_weights: Path, clips, detector
) -> None:
    runner = CliRunner()
    idx = tmp_path / "idx"
    args = ["ingest", str(clips["a"]), "--camera", "c1", "--index", str(idx), "--encoder", "tiny-test",
            "--weights", str(tiny_weights), "--start-time", START, "--json"]
    res = runner.invoke(main, args)
    assert res.exit_code == 0, res.output
    out = json.loads(res.output.strip().splitlines()[-1])
    assert out["done"] and out["tracks"] > 0 and out["total_tracks"] == out["tracks"]
    res = runner.invoke(main, args)
    assert json.loads(res.output.strip().splitlines()[-1])["already_done"]

    info = json.loads(runner.invoke(main, ["info", "--index", str(idx), "--json"]).output)
    assert info["crops"] == out["crops"] and info["tracks"] == out["tracks"]

    with Engine.open(idx) as eng:
        query = _crop_file(eng, tmp_path)
    crops_dir, render_dir = tmp_path / "crops", tmp_path / "render"
    res = runner.invoke(main, ["query", str(query), "--index", str(idx), "--tracks", "-k", "3",
                               "--save-crops", str(crops_dir), "--render", str(render_dir), "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output)
    hits = doc["queries"][0]["hits"]
    assert doc["tracks"] and len(hits) == min(3, out["tracks"]) and len({h["track"] for h in hits}) == len(hits)
    assert hits[0]["camera"] == "c1" and hits[0]["start_time"] is not None and hits[0]["best"]["box"]
    assert len(doc["crops"]) == len(doc["rendered"]) == len(hits)
    for hit, crop_path, render_path in zip(hits, sorted(doc["crops"]), sorted(doc["rendered"])):
        crop, frame = cv2.imread(crop_path), cv2.imread(render_path)
        _, _, w, h = hit["best"]["box"]
        assert abs(crop.shape[0] - h) <= 2 and abs(crop.shape[1] - w) <= 2
        assert frame.shape == (360, 480, 3)
        assert f"_f{hit['best']['frame']:06d}" in render_path

    res = runner.invoke(main, ["query", str(query), "--index", str(idx), "-k", "5"])
    assert res.exit_code == 0 and "c1/clip_a/" in res.output


def test_cli_ingest_reports_a_missing_video_in_one_line(tmp_path: Path, tiny_weights: Path) -> None:
    res = CliRunner().invoke(main, ["ingest", str(tmp_path / "nope.avi"), "--index", str(tmp_path / "idx"),
                                    "--encoder", "tiny-test", "--weights", str(tiny_weights)])
    assert res.exit_code == 1 and "no such file, expected a video file" in res.output and "Traceback" not in res.output


@pytest.mark.slow
def test_bench_tool_quick_run_prints_one_json_line(shared: Path) -> None:
    import subprocess
    import sys

    tool = Path(__file__).resolve().parents[1] / "tools" / "bench_ingest.py"
    out = subprocess.run([sys.executable, str(tool), "--max-frames", "30", "--every", "1,3"],
                         capture_output=True, text=True, check=True).stdout.strip().splitlines()
    doc = json.loads(out[-1])
    assert 0.3 < doc["detection"]["recall"] <= 1 and 0.5 < doc["detection"]["precision"] <= 1
    assert doc["every1"]["frames"] == 30 and doc["every3"]["frames"] == 30
    assert -1 <= doc["every1"]["tracking"]["mota"] <= 1 and doc["every1"]["video_frames_per_s"] > 0
