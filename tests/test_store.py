"""The index folder: consistency checks, dedup, atomic commits, removal."""
from __future__ import annotations

import json

import numpy as np
import pytest
import sqlalchemy as sa

from reid_engine import Engine
from reid_engine.errors import (
    EncoderMismatchError,
    ImageReadError,
    IndexCorruptError,
    IndexNotFoundError,
    InvalidInputError,
)
from reid_engine.index import store as store_mod
from reid_engine.ingest import scan_source

from .conftest import write_crops


def _engine(tmp_path, tiny_weights, **kw):
    return Engine.create(tmp_path / "ix", encoder="tiny-test", weights=tiny_weights, **kw)


def test_create_writes_manifest_vectors_and_db(tmp_path, tiny_weights):
    eng = _engine(tmp_path, tiny_weights)
    eng.add(write_crops(tmp_path / "g", 5))
    files = sorted(p.name for p in (tmp_path / "ix").iterdir())
    assert "crops.db" in files and "manifest.json" in files
    assert any(f.startswith("seg-") and f.endswith(".vec.npy") for f in files)  # the first segment
    man = json.loads((tmp_path / "ix" / "manifest.json").read_text())
    assert man["encoder"]["name"] == "tiny-test"
    assert man["encoder"]["weights_sha256"] == eng.encoder.weights_sha256
    assert man["dim"] == 16 and man["factory"] == "auto" and man["normalization"] == "l2"
    assert man["backend"] == "faiss" and man["format_version"] == 2
    assert eng.stats()["crops"] == 5


def test_readding_same_files_does_not_duplicate(tmp_path, tiny_weights):
    eng = _engine(tmp_path, tiny_weights)
    paths = write_crops(tmp_path / "g", 6)
    first = eng.add(paths[:4])
    second = eng.add(paths)  # 4 known, 2 new
    assert (first.added, second.added, second.duplicates) == (4, 2, 4)
    # a copy of a file under another name has the same bytes: still a duplicate
    (tmp_path / "copy.png").write_bytes(paths[0].read_bytes())
    assert eng.add([tmp_path / "copy.png"]).duplicates == 1
    assert eng.store.count == 6
    reopened = Engine.open(tmp_path / "ix")
    assert reopened.store.count == 6


def test_open_refuses_rows_and_vectors_that_disagree(tmp_path, tiny_weights):
    eng = _engine(tmp_path, tiny_weights)
    eng.add(write_crops(tmp_path / "g", 5))
    eng.close()
    sql = sa.create_engine(f"sqlite:///{tmp_path / 'ix' / 'crops.db'}")
    with sql.begin() as conn:
        conn.execute(sa.text("DELETE FROM crops WHERE id = 3"))
    with pytest.raises(IndexCorruptError, match=r"5 vectors, 4 rows"):
        Engine.open(tmp_path / "ix")


def test_open_refuses_a_missing_vector_file(tmp_path, tiny_weights):
    eng = _engine(tmp_path, tiny_weights)
    eng.add(write_crops(tmp_path / "g", 2))
    seg = next((tmp_path / "ix").glob("seg-*.vec.npy"))
    seg.unlink()
    with pytest.raises(IndexCorruptError, match=seg.name.split(".")[0]):
        Engine.open(tmp_path / "ix")


def test_missing_index_is_a_clear_error(tmp_path):
    with pytest.raises(IndexNotFoundError, match="no such index folder"):
        Engine.open(tmp_path / "none")
    (tmp_path / "empty").mkdir()
    with pytest.raises(IndexNotFoundError, match="missing manifest.json"):
        Engine.open(tmp_path / "empty")


def test_encoder_mismatch_is_refused(tmp_path, tiny_weights):
    _engine(tmp_path, tiny_weights).add(write_crops(tmp_path / "g", 2))
    other = tmp_path / "other.weights"
    other.write_bytes(b"different weights")
    with pytest.raises(EncoderMismatchError, match="weights_sha256"):
        Engine.open(tmp_path / "ix", weights=other)
    with pytest.raises(EncoderMismatchError, match="name: index has 'tiny-test', got 'onnx'"):
        Engine.open(tmp_path / "ix", encoder="onnx")


def test_crash_between_vector_write_and_sql_commit_keeps_previous_state(tmp_path, tiny_weights, monkeypatch):
    paths = write_crops(tmp_path / "g", 10)
    eng = _engine(tmp_path, tiny_weights)
    eng.add(paths[:4])
    before_q = eng.query(paths[0], k=4)[0]

    def crash():
        raise KeyboardInterrupt("simulated crash after the vector write")

    segments = set((tmp_path / "ix").glob("seg-*"))
    monkeypatch.setattr(store_mod, "_after_vectors_written", crash)
    with pytest.raises(KeyboardInterrupt):
        eng.add(paths[4:], commit_every=3)
    monkeypatch.undo()

    reopened = Engine.open(tmp_path / "ix")
    assert reopened.store.count == 4 and reopened.store.generation == 1
    assert set((tmp_path / "ix").glob("seg-*")) == segments  # the failed commit's files are gone
    after_q = reopened.query(paths[0], k=4)[0]
    assert [h.id for h in after_q.hits] == [h.id for h in before_q.hits]

    # the failed in-process engine rolled back its in-memory vectors too
    assert eng.store.count == 4

    # a re-run resumes: only the 6 missing crops are added, nothing is duplicated
    report = reopened.add(paths)
    assert (report.added, report.duplicates) == (6, 4)
    assert reopened.store.backend.live_ids().tolist() == sorted(reopened.store.ids_where(None).tolist())
    assert reopened.store.count == 10


def test_commits_in_blocks_keep_earlier_blocks(tmp_path, tiny_weights, monkeypatch):
    paths = write_crops(tmp_path / "g", 9)
    eng = _engine(tmp_path, tiny_weights)
    calls = {"n": 0}

    def crash_on_third():
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("power cut")

    monkeypatch.setattr(store_mod, "_after_vectors_written", crash_on_third)
    with pytest.raises(RuntimeError):
        eng.add(paths, commit_every=3)
    monkeypatch.undo()
    assert Engine.open(tmp_path / "ix").store.count == 6


def test_remove_by_id_camera_and_source(tmp_path, tiny_weights):
    eng = _engine(tmp_path, tiny_weights)
    write_crops(tmp_path / "a", 4, seed=1)
    write_crops(tmp_path / "b", 3, seed=2)
    eng.add(scan_source(tmp_path / "a", camera="A", source_name="day1"))
    eng.add(scan_source(tmp_path / "b", camera="B", source_name="day2"))
    assert eng.remove(ids=[0]) == 1
    assert eng.remove(cameras=["B"]) == 3
    assert eng.remove(sources=["day1"], cameras=["Z"]) == 0  # criteria combine with AND
    assert eng.remove(sources=["day1"]) == 3
    assert eng.store.count == 0
    assert Engine.open(tmp_path / "ix").store.count == 0
    with pytest.raises(InvalidInputError, match="needs a filter"):
        eng.remove()


def test_fields_read_from_the_backend_equal_the_sql_rows(tmp_path, tiny_weights):
    """The re-rankers read camera, time, source and track from the backend's codes: the same values as the
    rows in SQL (the reference), after a removal and in a reopened index."""
    eng = _engine(tmp_path, tiny_weights)
    write_crops(tmp_path / "a", 4, seed=1)
    write_crops(tmp_path / "b", 3, seed=2)
    eng.add(scan_source(tmp_path / "a", camera="A", source_name="day1"))
    eng.add(scan_source(tmp_path / "b", camera=None, source_name="day2"))
    eng.remove(ids=[1])
    for e in (eng, Engine.open(tmp_path / "ix")):
        ids = [5, 0, 6, 2, 4]
        got = e.store.fields(ids)
        assert e.store.backend.stored_fields(ids) is not None  # the FAISS backend keeps them
        want = store_mod.fields_of([e.store.rows(ids)[i] for i in ids])
        assert sorted(got) == sorted(want)
        for name, values in want.items():
            np.testing.assert_array_equal(got[name], values)
        assert list(got["camera"]) == [None, "A", None, "A", None]
        with pytest.raises(InvalidInputError):
            e.store.fields([1])


def test_unreadable_images_are_skipped_and_counted_or_stop_with_strict(tmp_path, tiny_weights):
    paths = write_crops(tmp_path / "g", 3)
    bad = tmp_path / "g" / "crop_bad.png"
    bad.write_bytes(b"garbage")
    eng = _engine(tmp_path, tiny_weights)
    with pytest.raises(ImageReadError, match="crop_bad.png"):
        eng.add(sorted(paths + [bad]), strict=True)
    assert eng.store.count == 0
    report = eng.add(sorted(paths + [bad]))
    assert report.added == 3 and len(report.failed) == 1 and "crop_bad.png" in report.failed[0][0]


def test_bad_factory_string_is_refused_before_writing(tmp_path, tiny_weights):
    with pytest.raises(InvalidInputError, match="NotAnIndex99"):
        _engine(tmp_path, tiny_weights, factory="NotAnIndex99")
    assert not (tmp_path / "ix").exists()


def test_any_sqlalchemy_url_can_hold_the_rows(tmp_path, tiny_weights):
    url = f"sqlite:///{tmp_path / 'elsewhere.sqlite'}"
    eng = _engine(tmp_path, tiny_weights, db_url=url)
    eng.add(write_crops(tmp_path / "g", 3))
    assert not (tmp_path / "ix" / "crops.db").exists()
    assert (tmp_path / "elsewhere.sqlite").exists()
    assert Engine.open(tmp_path / "ix").store.count == 3


def test_ann_index_agrees_with_brute_force(tmp_path, tiny_weights):
    """IVF (an approximate index) with full probing returns the exact brute-force top-k."""
    rng = np.random.default_rng(3)
    feats = rng.standard_normal((400, 16)).astype(np.float32)
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    from reid_engine.ingest import CropItem

    eng = _engine(tmp_path, tiny_weights, factory="IVF4,Flat")
    items = [CropItem(tmp_path / f"v{i}.png", {}) for i in range(len(feats))]
    eng.add_features(feats, items, hashes=[f"{i:064x}" for i in range(len(feats))])
    eng.compact()  # the IVF is trained and the rows merged into lists
    assert eng.stats()["backend"]["index_type"].lower().startswith("ivf")
    q = rng.standard_normal((20, 16)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    res = eng.query_features(q, k=5, rerank="none", search_params={"nprobe": 4})
    want = np.argsort(-(q @ feats.T), axis=1)[:, :5]
    assert [[h.id for h in r.hits] for r in res] == want.tolist()


def test_annotators_run_at_add_time_and_are_stored(tmp_path, tiny_weights):
    import cv2

    from reid_engine.annotators import register_annotator
    from reid_engine.images import load_image

    class MeanColour:
        name = "mean_bgr"

        def annotate(self, images):
            return [{"mean": [round(float(v), 3) for v in load_image(im).reshape(-1, 3).mean(0)]} for im in images]

    register_annotator("test-mean", lambda device=None: MeanColour())
    paths = write_crops(tmp_path / "g", 3)
    eng = _engine(tmp_path, tiny_weights, annotators=["test-mean"])
    eng.add(paths)
    reopened = Engine.open(tmp_path / "ix")  # the manifest remembers the annotator
    reopened.add(write_crops(tmp_path / "h", 1, seed=9))
    rows = reopened.store.rows(range(4))
    for i, p in enumerate(paths + [tmp_path / "h" / "crop_0000.png"]):
        want = cv2.imread(str(p)).reshape(-1, 3).mean(0)
        np.testing.assert_allclose(rows[i]["extra"]["mean_bgr"]["mean"], want, atol=1e-3)
    with pytest.raises(Exception, match="unknown annotator 'nope'"):
        Engine.create(tmp_path / "ix2", encoder="tiny-test", weights=tiny_weights, annotators=["nope"])


def test_sql_hook_commits_with_the_crops_or_not_at_all(tmp_path, tiny_weights, monkeypatch):
    side = sa.Table("side_rows", sa.MetaData(), sa.Column("crop_id", sa.Integer, primary_key=True))
    eng = _engine(tmp_path, tiny_weights)
    side.metadata.create_all(eng.store.sql)

    def hook(conn, ids, rows, feats):
        assert feats.shape == (len(ids), 16)
        conn.execute(side.insert(), [{"crop_id": i} for i in ids])

    paths = write_crops(tmp_path / "g", 4)
    eng.add(paths[:2], sql_hook=hook)
    monkeypatch.setattr(store_mod, "_after_vectors_written", lambda: (_ for _ in ()).throw(RuntimeError("crash")))
    with pytest.raises(RuntimeError):
        eng.add(paths[2:], sql_hook=hook)
    with eng.store.sql.connect() as conn:
        assert sorted(conn.execute(sa.select(side.c.crop_id)).scalars()) == [0, 1]


def test_stored_paths_resolve_like_pathlib_with_folder_and_file_links(tmp_path):
    """The per-call folder cache gives the same text as Path.resolve(): relative parts, linked folders and a
    linked file are all followed."""
    import os

    from pathlib import Path

    from reid_engine.engine import _resolved

    real = tmp_path / "real"
    (real / "sub").mkdir(parents=True)
    (real / "sub" / "a.png").write_bytes(b"x")
    (tmp_path / "linkdir").symlink_to(real)
    (real / "sub" / "b.png").symlink_to(real / "sub" / "a.png")
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        folders: dict = {}
        for p in ["linkdir/sub/a.png", "real/sub/../sub/a.png", "real/sub/b.png", "missing/x.png", "a.png",
                  str(tmp_path / "linkdir" / "sub" / "a.png"), "real/sub/.", "real/sub/.."]:
            for _ in range(2):  # second time from the cache
                assert _resolved(p, folders) == str(Path(p).resolve()), p
    finally:
        os.chdir(cwd)


def test_bytes_on_disk_count_a_file_with_two_names_once(tmp_path):
    """folder_bytes (``stats()["bytes_on_disk"]``): the bytes of each file once, however many hard links name it
    (a grown graph shares its vectors file with the graph it grew from until that one is retired)."""
    import os

    (tmp_path / "a.bin").write_bytes(b"x" * 1000)
    (tmp_path / "b.bin").write_bytes(b"y" * 24)
    (tmp_path / "sub").mkdir()
    assert store_mod.folder_bytes(tmp_path) == 1024
    os.link(tmp_path / "a.bin", tmp_path / "a2.bin")
    assert store_mod.folder_bytes(tmp_path) == 1024
    with open(tmp_path / "a2.bin", "ab") as f:  # appended through the other name: one file, grown
        f.write(b"z" * 76)
    assert store_mod.folder_bytes(tmp_path) == 1100
