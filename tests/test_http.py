"""The HTTP API through the ASGI test client: answers, errors as JSON, limits, auth, footage, concurrency."""
from __future__ import annotations

import shutil
import threading
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # starlette: httpx2 preferred over httpx
    from fastapi.testclient import TestClient

from reid_engine.engine import Engine
from reid_engine.errors import InvalidInputError
from reid_engine.http import ServeConfig, create_app
from reid_engine.images import read_image

from .serve_fixtures import pets_index, pku_index, pku_people  # noqa: F401  (fixtures)
from .test_service import _png_claiming, _reference_cut


def _client(index: Path, **kw) -> TestClient:
    return TestClient(create_app(ServeConfig(index=str(index), **kw)))


@pytest.fixture(scope="module")
def client(pku_index):
    with _client(pku_index) as c:
        yield c


def _upload(path: Path, **fields):
    return {"files": [("images", (path.name, path.read_bytes(), "image/png"))], "data": fields}


def _decode(content: bytes) -> np.ndarray:
    img = cv2.imdecode(np.frombuffer(content, np.uint8), cv2.IMREAD_COLOR)
    assert img is not None
    return img


def test_health_and_info(client):
    assert client.get("/healthz").json()["status"] == "ok"
    info = client.get("/info").json()
    assert info["crops"] == 64 and info["cameras"] == {"02": 64}
    assert "none" in info["rerank_presets"] and info["writes"] is False
    assert "db_url" not in info and "/" not in info["path"]  # no server paths
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/query", "/find", "/crops/{crop_id}", "/crops/{crop_id}/image", "/tracks/{key}", "/info", "/healthz",
            "/crops"} <= set(paths)
    docs = client.get("/docs")
    assert docs.status_code == 200 and "/openapi.json" in docs.text
    assert "https://" not in docs.text and "cdn" not in docs.text.lower()  # works with no network
    assert client.get("/static/docs.js").status_code == 200


def test_upload_query_ranks_the_same_person_first(client, pku):
    person = pku_people(pku)[2]
    r = client.post("/query", **_upload(pku / person / "01_1.png", k="5", rerank="none"))
    assert r.status_code == 200, r.text
    res = r.json()["results"][0]
    assert res["query"] == "01_1.png" and res["kind"] == "crops" and len(res["hits"]) == 5
    top = res["hits"][0]
    assert top["pid"] == person and top["rank"] == 1 and top["camera"] == "02"
    assert [h["distance"] for h in res["hits"]] == sorted(h["distance"] for h in res["hits"])
    # the same ranking as the library's for the same file
    with Engine.open(client.app.state.engine_path) as engine:
        direct = engine.query([pku / person / "01_1.png"], 5, rerank="none")[0]
    assert [h["id"] for h in res["hits"]] == [h.id for h in direct.hits]
    # the thumbnail is the crop's pixels (JPEG of the indexed file)
    thumb = client.get(top["image_url"])
    assert thumb.headers["content-type"] == "image/jpeg"
    crop = read_image(next(p for p in (pku / person).glob("02_*.png") if p.name == top["name"]))
    got = _decode(thumb.content)
    assert got.shape == crop.shape and np.abs(got.astype(int) - crop).mean() < 8  # JPEG loss only


def test_json_query_by_crop_and_filters(client):
    r = client.post("/query", json={"crop_ids": [7], "k": 3, "rerank": "none"})
    hits = r.json()["results"][0]["hits"]
    assert hits[0]["id"] == 7 and hits[0]["distance"] == pytest.approx(0, abs=1e-5)
    r = client.post("/query", json={"crop_ids": [7], "cameras": ["01"], "rerank": "none"})
    assert r.status_code == 200 and r.json()["results"][0]["hits"] == []
    r = client.post("/query", data={"crop_ids": ["7", "8"], "k": "2", "rerank": "none"})  # the form twin
    assert [res["hits"][0]["id"] for res in r.json()["results"]] == [7, 8]
    cosine = client.post("/query", json={"crop_ids": [7], "k": 8, "rerank": "none"}).json()["results"][0]["hits"]
    r = client.post("/query", json={"crop_ids": [7], "k": 8, "rerank": "kr", "pool": 3, "ef_search": 16,
                                    "nprobe": 2, "exact": True})
    assert r.status_code == 200, r.text
    assert [h["id"] for h in r.json()["results"][0]["hits"]][3:] == [h["id"] for h in cosine][3:]
    r = client.post("/query", data={"crop_ids": ["7"], "k": "8", "rerank": "kr", "pool": "3"})
    assert [h["id"] for h in r.json()["results"][0]["hits"]][3:] == [h["id"] for h in cosine][3:]
    assert client.get("/crops/7").json()["id"] == 7


@pytest.mark.parametrize("kwargs, status, kind, text", [
    ({"json": {"k": 3}}, 422, "RequestError", "give query images"),
    ({"json": {"crop_ids": [1], "k": 0}}, 422, "RequestValidationError", "k:"),
    ({"json": {"crop_ids": [1], "bogus": 1}}, 422, "RequestValidationError", "bogus"),
    ({"json": {"crop_ids": [1], "pool": 0}}, 422, "RequestValidationError", "pool"),
    ({"json": {"crop_ids": [1], "ef_search": 5000}}, 422, "RequestValidationError", "ef_search"),
    ({"json": {"crop_ids": [1], "by_track": True, "pool": 50}}, 422, "RequestError", "candidate pool"),
    ({"json": {"crop_ids": [1], "rerank": "zzz"}}, 400, "UnknownNameError", "unknown re-ranking preset 'zzz'"),
    ({"json": {"crop_ids": [1], "time_from": "soon"}}, 400, "InvalidInputError", "expected ISO-8601"),
    ({"json": {"crop_ids": [1], "cameras": [""]}}, 400, "InvalidInputError", "camera ''"),
    ({"json": {"crop_ids": [1], "time_to": ""}}, 400, "InvalidInputError", "time_to ''"),
    ({"json": {"crop_ids": [99999]}}, 404, "NotFoundError", "crop 99999"),
    ({"json": {"crop_ids": [2**63]}}, 400, "InvalidInputError", "out of range"),  # was a 500 (SQLite overflow)
    ({"content": b'{"cameras":' + b"[" * 1000 + b"]" * 1000 + b"}", "headers": {"content-type": "application/json"}},
     422, "RequestError", "nests JSON too deeply"),  # was a 500 (RecursionError)
    ({"json": {"crop_ids": [1], "fusion": "attributes"}}, 409, "AttributesNotIndexedError", "built without them"),
    ({"content": b"[1]", "headers": {"content-type": "application/json"}}, 422, "RequestError", "JSON object"),
    ({"content": b"{", "headers": {"content-type": "application/json"}}, 422, "RequestError", "not valid JSON"),
    ({"content": b"x", "headers": {"content-type": "text/plain"}}, 415, "UnsupportedMediaError", "content type"),
    ({"files": [("images", ("a.png", b"hello", "image/png"))]}, 415, "UnsupportedMediaError", "not a PNG"),
    ({"files": [("images", ("a.png", b"\x89PNG\r\n\x1a\n" + b"\0" * 40, "image/png"))]}, 400, "ImageReadError", "a.png"),
    ({"files": [("images", ("bomb.png", _png_claiming(60000, 60000), "image/png"))]}, 413, "PayloadTooLargeError", "60000x60000"),
])
def test_bad_queries_get_a_4xx_json_error(client, kwargs, status, kind, text):
    r = client.post("/query", **kwargs)
    assert r.status_code == status, r.text
    body = r.json()
    assert body["type"] == kind and text in body["error"] and "\n" not in body["error"]


def test_get_errors(client):
    assert client.get("/crops/123456").status_code == 404
    assert client.get("/crops/-1").status_code == 422
    assert client.get("/crops/abc/image").status_code == 422
    # nothing from the request reaches the filesystem: a path-like id is not a route or an id
    assert client.get("/crops/..%2F..%2Fetc%2Fpasswd/image").status_code in (404, 422)
    assert client.get("/tracks/../../etc/passwd").status_code == 404
    assert client.post("/find", json={"attributes": ["male"]}).json()["type"] == "AttributesNotIndexedError"
    assert client.post("/find", json={"attributes": []}).status_code == 422


def test_upload_size_limit(pku_index, pku):
    rng = np.random.default_rng(0)
    big = cv2.imencode(".png", rng.integers(0, 255, (300, 300, 3), np.uint8))[1].tobytes()  # ~270 kB
    medium = cv2.imencode(".png", rng.integers(0, 255, (110, 110, 3), np.uint8))[1].tobytes()  # ~36 kB
    with _client(pku_index, max_upload_bytes=30_000) as c:
        r = c.post("/query", files=[("images", ("big.png", big, "image/png"))])  # refused by the body limit
        assert r.status_code == 413 and r.json()["type"] == "PayloadTooLargeError"
        r = c.post("/query", files=[("images", ("medium.png", medium, "image/png"))])  # by the per-file limit
        assert r.status_code == 413 and "medium.png" in r.json()["error"]
        r = c.post("/query", **_upload(pku / pku_people(pku)[0] / "01_1.png", rerank="none"))
        assert r.status_code == 200  # a small crop still fits
    with _client(pku_index, max_pixels=100) as c:
        r = c.post("/query", **_upload(pku / pku_people(pku)[0] / "01_1.png"))
        assert r.status_code == 413 and "over the limit of 100 pixels" in r.json()["error"]


def test_cors_is_off_unless_configured(pku_index, client):
    r = client.get("/info", headers={"Origin": "http://evil.example"})
    assert "access-control-allow-origin" not in r.headers
    with _client(pku_index, cors_origins=("http://app.example",)) as c:
        r = c.get("/info", headers={"Origin": "http://app.example"})
        assert r.headers["access-control-allow-origin"] == "http://app.example"


def test_page_is_served_with_a_strict_policy(client):
    r = client.get("/")
    assert r.status_code == 200 and "reid-engine" in r.text
    assert "default-src 'self'" in r.headers["content-security-policy"]
    for name in ("app.js", "app.css"):
        assert client.get(f"/static/{name}").status_code == 200
    assert "http" not in r.text.replace('href="/docs"', "")  # nothing from another host


@pytest.fixture
def writable_index(pku_index, tmp_path):
    dest = tmp_path / "idx"
    shutil.copytree(pku_index, dest)
    return dest


def test_boxes_past_the_frame_or_recorded_in_part_are_served(writable_index, tmp_path):
    """A box reaching far past its frame made /frame a 500 (OpenCV's 32-bit drawing); a row holding only part of a
    box (written before add refused those) made every answer showing it a 500."""
    import sqlalchemy as sa

    from reid_engine.index import db
    from reid_engine.ingest.crops import CropItem

    frame = tmp_path / "frame.png"
    cv2.imwrite(str(frame), np.full((100, 200, 3), 90, np.uint8))
    with Engine.open(writable_index) as eng:
        feats = np.random.default_rng(3).standard_normal((2, eng.store.manifest.dim)).astype(np.float32)
        far, part = eng.add_features(feats, [CropItem(frame, {"box": (20, 10, 2e9, 2e9), "source": str(frame)}),
                                             CropItem(tmp_path / "b.png", {})], hashes=["far", "part"])
        with eng.store.sql.begin() as conn:
            conn.execute(sa.update(db.crops).where(db.crops.c.id == part).values(box_w=3.0))
    with _client(writable_index) as c:
        img = _decode(c.get(f"/crops/{far}/frame").content)
        assert img.shape == (100, 200, 3)
        edge = img[50, 18:23].astype(int)  # the box's left edge, drawn in red (JPEG: near enough)
        assert (edge[:, 2] > 200).any() and (edge[:, 0] < 40).any() and (img[50, 100].astype(int) < 120).all()
        assert _decode(c.get(f"/crops/{far}/image").content).shape == (90, 180, 3)  # cut to the frame
        r = c.get(f"/crops/{part}")
        assert r.status_code == 200 and r.json()["box"] is None
        r = c.post("/query", json={"crop_ids": [part], "k": 3, "rerank": "none"})
        assert r.status_code == 200 and r.json()["results"][0]["hits"][0]["box"] is None


def test_a_refused_upload_leaves_no_file_and_names_no_server_path(writable_index, pku, monkeypatch):
    """A camera too long for its column was refused with the upload's path on the server, and the file stayed."""
    crop = pku / pku_people(pku)[0] / "01_2.png"
    auth = {"Authorization": "Bearer s3cret"}
    uploads = writable_index / "uploads"
    with _client(writable_index, token="s3cret") as c:
        r = c.post("/crops", **_upload(crop, camera="x" * 200), headers=auth)
        assert r.status_code == 400 and "camera" in r.json()["error"] and "128" in r.json()["error"]
        assert str(writable_index) not in r.json()["error"]
        assert not list(uploads.glob("*")) if uploads.exists() else True

        def fail(*a, **k):
            raise InvalidInputError("the add failed")

        monkeypatch.setattr(Engine, "add", fail)  # any failure inside the add: the file it wrote goes again
        r = c.post("/crops", **_upload(crop, camera="01"), headers=auth)
        assert r.status_code == 400 and not list(uploads.glob("*"))
        assert c.get("/healthz").json()["crops"] == 64


def test_writes_need_the_token(writable_index, pku):
    crop = pku / pku_people(pku)[0] / "01_2.png"
    with _client(writable_index) as c:  # started without a token: writes are off
        r = c.post("/crops", **_upload(crop))
        assert r.status_code == 403 and r.json()["type"] == "WritesDisabledError"
        assert c.delete("/crops", params={"id": 1}).status_code == 403
    with _client(writable_index, token="s3cret") as c:
        r = c.post("/crops", **_upload(crop))
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        r = c.post("/crops", **_upload(crop), headers={"Authorization": "Bearer wrong"})
        assert r.status_code == 401 and r.json()["error"] == "wrong bearer token"
        auth = {"Authorization": "Bearer s3cret"}
        r = c.post("/crops", **_upload(crop, camera="01", pid="X"), headers=auth)
        assert r.status_code == 200, r.text
        doc = r.json()
        assert doc["added"] == 1 and doc["total"] == 65
        new_id = doc["ids"][0]
        meta = c.get(f"/crops/{new_id}").json()
        assert (meta["camera"], meta["pid"], meta["source"]) == ("01", "X", "upload")
        assert np.array_equal(_decode(c.get(f"/crops/{new_id}/image").content).shape, read_image(crop).shape)
        r = c.post("/query", **_upload(crop, rerank="none"))
        assert r.json()["results"][0]["hits"][0]["id"] == new_id  # the uploaded crop is found
        assert c.post("/crops", **_upload(crop), headers=auth).json()["duplicates"] == 1
        r = c.delete("/crops", params={"id": new_id}, headers=auth)
        assert r.json() == {"removed": 1, "total": 64}
        assert c.get(f"/crops/{new_id}").status_code == 404
        r = c.delete("/crops", headers=auth)
        assert r.status_code == 422 and "say what to remove" in r.json()["error"]


def test_queries_during_adds_see_a_consistent_index(writable_index, pku):
    people = pku_people(pku)
    files = [pku / p / f"01_{i}.png" for p in people[:4] for i in range(1, 5)]
    errors: list[str] = []
    with _client(writable_index, token="t") as c:
        def query(n: int) -> None:
            for _ in range(n):
                r = c.post("/query", json={"crop_ids": [3], "k": 100, "rerank": "none"})
                if r.status_code != 200:
                    errors.append(r.text)
                    continue
                hits = r.json()["results"][0]["hits"]
                total = len(hits)
                # every answer is a whole generation: the original 64, or 64 plus whole added batches
                if total < 64 or (total - 64) % 4:
                    errors.append(f"{total} hits")

        def add() -> None:
            for i in range(0, len(files), 4):
                batch = [("images", (f.name, f.read_bytes(), "image/png")) for f in files[i : i + 4]]
                r = c.post("/crops", files=batch, headers={"Authorization": "Bearer t"})
                if r.status_code != 200:
                    errors.append(r.text)

        threads = [threading.Thread(target=query, args=(6,)) for _ in range(3)] + [threading.Thread(target=add)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors[:3]
        assert c.get("/healthz").json()["crops"] == 64 + len(files)


def test_footage_endpoints(pets_index):
    with _client(pets_index) as c:
        crop = c.get("/crops/3").json()
        assert crop["frame_url"] == "/crops/3/frame" and crop["track_url"].startswith("/tracks/view1/")
        img = _decode(c.get("/crops/3/image").content)
        with Engine.open(pets_index) as engine:
            row = engine.store.rows([3])[3]
        ref = _reference_cut(row["source"], row["frame"], crop["box"])
        assert img.shape == ref.shape and np.abs(img.astype(int) - ref).mean() < 10  # JPEG loss only
        assert _decode(c.get("/crops/3/frame").content).shape == (360, 480, 3)
        track = c.get(crop["track_url"]).json()
        assert track["key"] == crop["track"] and 3 in [x["id"] for x in track["crops"]]
        assert track["start_time"] <= crop["timestamp"] <= track["end_time"]
        assert _decode(c.get(track["frame_url"]).content).shape == (360, 480, 3)
        assert c.get(track["frame_url"], params={"crop": 99999}).status_code == 404
        r = c.post("/query", json={"crop_ids": [3], "by_track": True, "k": 3})
        res = r.json()["results"][0]
        assert res["kind"] == "tracks" and res["tracks"][0]["track"] == crop["track"]
        r = c.post("/query", json={"crop_ids": [3], "by_track": True, "time_from": "2009-01-01T10:00:30Z"})
        assert r.json()["results"][0]["tracks"] == []  # the first 60 frames end before 10:00:30
