"""The service layer: error map, self-validating requests, request runners, upload checks."""
from __future__ import annotations

import struct
import zlib
from pathlib import Path

import click
import cv2
import numpy as np
import pytest

from reid_engine import errors as E
from reid_engine import service as svc
from reid_engine.engine import Engine
from reid_engine.http import uploads
from reid_engine.images import read_image

from .serve_fixtures import pets_index, pku_index, pku_people  # noqa: F401  (fixtures)


# -- error map ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("exc, exit_code, status", [
    (click.UsageError("x"), 2, 400),
    (svc.RequestError("x"), 2, 422),
    (E.InvalidInputError("x"), 1, 400),
    (E.UnknownEncoderError("x"), 1, 400),  # not in the table itself: found through its base classes
    (E.ImageReadError("x"), 1, 400),
    (svc.NotFoundError("x"), 1, 404),
    (E.IndexNotFoundError("x"), 1, 404),
    (E.AttributesNotIndexedError("x"), 1, 409),
    (E.UnsupportedOperationError("x"), 1, 409),
    (E.IndexBusyError("x"), 1, 503),
    (E.IndexCorruptError("x"), 1, 500),
    (svc.PayloadTooLargeError("x"), 1, 413),
    (svc.UnsupportedMediaError("x"), 1, 415),
    (svc.AuthError("x"), 1, 401),
    (svc.WritesDisabledError("x"), 1, 403),
    (RuntimeError("x"), 1, 500),
])
def test_each_error_has_one_exit_code_and_status(exc, exit_code, status):
    assert (svc.outcome_of(exc).exit_code, svc.outcome_of(exc).http_status) == (exit_code, status)


def test_error_body_is_the_one_line_message_and_class():
    body = svc.error_body(E.IndexNotFoundError("indexes/x: no such\n  index folder"))
    assert body == {"error": "indexes/x: no such index folder", "type": "IndexNotFoundError"}
    assert svc.error_body(click.UsageError("give IMAGES"))["error"] == "give IMAGES"


# -- requests validate themselves ------------------------------------------------------------------------
def test_query_request_rules():
    with pytest.raises(svc.RequestError, match="give query images"):
        svc.QueryRequest()
    with pytest.raises(svc.RequestError, match="not to by-track"):
        svc.QueryRequest(crop_ids=(1,), by_track=True, fusion="attributes")
    with pytest.raises(svc.RequestError, match="re-ranking applies to crop queries"):
        svc.QueryRequest(crop_ids=(1,), by_track=True, rerank="kr")
    with pytest.raises(svc.RequestError, match="need query images"):
        svc.QueryRequest(attributes=("male",), exclude_same_camera=True)
    with pytest.raises(E.InvalidInputError, match="k 0"):
        svc.QueryRequest(crop_ids=(1,), k=0)
    with pytest.raises(E.InvalidInputError, match="k True"):
        svc.QueryRequest(crop_ids=(1,), k=True)
    with pytest.raises(E.InvalidInputError, match="crop id -1"):
        svc.QueryRequest(crop_ids=(-1,))
    with pytest.raises(E.UnknownNameError, match="unknown re-ranking preset 'nope'"):
        svc.QueryRequest(crop_ids=(1,), rerank="nope")
    with pytest.raises(E.UnknownNameError, match="unknown fusion mode"):
        svc.QueryRequest(crop_ids=(1,), fusion="nope")
    with pytest.raises(E.UnknownNameError, match="unknown attribute"):
        svc.QueryRequest(attributes=("wings",))
    with pytest.raises(E.InvalidInputError, match="at most"):
        svc.QueryRequest(crop_ids=tuple(range(svc.requests.QUERIES_MAX + 1)))
    for name, bad in (("ef_search", 0), ("ef_search", svc.EF_SEARCH_MAX + 1), ("pool", True), ("pool", "50"),
                      ("nprobe", 2.5), ("pool", svc.POOL_MAX + 1)):
        with pytest.raises(E.InvalidInputError, match=f"{name} {bad!r}: expected an integer from 1 to"):
            svc.QueryRequest(crop_ids=(1,), **{name: bad})
    with pytest.raises(svc.RequestError, match="candidate pool applies to re-ranked crop queries"):
        svc.QueryRequest(crop_ids=(1,), by_track=True, pool=50)
    assert svc.QueryRequest(crop_ids=(1,)).search_params() is None
    assert svc.QueryRequest(crop_ids=(1,), ef_search=64, pool=300, nprobe=8, exact=True).search_params() == {
        "ef_search": 64, "pool": 300, "nprobe": 8, "exact": True}
    ok = svc.QueryRequest(crop_ids=(1,), rerank="none", attributes="male, backpack")
    assert ok.attributes == ("male", "backpack") and not ok.attributes_only
    assert svc.QueryRequest(attributes=("male",)).attributes_only


def test_filters_parse_times_and_lists():
    f = svc.Filters.build(cameras="1, 2", exclude_cameras=["3"], time_from="2009-01-01T10:00:00", time_to=1230804060)
    assert f.cameras == ("1", "2") and f.exclude_cameras == ("3",)
    assert f.time_from == 1230804000.0 and f.time_to == 1230804060.0  # 2009-01-01T10:00:00Z in epoch seconds
    with pytest.raises(E.InvalidInputError, match="ends before it starts"):
        svc.Filters.build(time_from=20, time_to=10)
    with pytest.raises(E.InvalidInputError, match="expected ISO-8601"):
        svc.Filters.build(time_from="yesterday")


def test_remove_and_find_requests_need_a_criterion():
    with pytest.raises(svc.RequestError, match="say what to remove"):
        svc.RemoveRequest()
    assert svc.RemoveRequest(cameras="a,b").cameras == ("a", "b")
    with pytest.raises(svc.RequestError, match="at least one attribute"):
        svc.FindRequest(attributes=())
    with pytest.raises(svc.RequestError, match="at least one image"):
        svc.AddRequest(images=(), data=(), kinds=(), labels=())


# -- runners on a real index -------------------------------------------------------------------------------
def test_query_by_file_matches_the_engine(pku_index, pku):
    person = pku_people(pku)[1]
    query = pku / person / "01_1.png"
    with Engine.open(pku_index) as engine:
        direct = engine.query([str(query)], 5, rerank="none")[0]
        res = svc.run_query(engine, svc.QueryRequest(images=(str(query),), k=5, rerank="none"))[0]
    assert [h.id for h in res.hits] == [h.id for h in direct.hits]
    assert [h.distance for h in res.hits] == pytest.approx([h.distance for h in direct.hits], abs=1e-6)


def test_query_by_crop_id_finds_the_crop_itself(pku_index):
    with Engine.open(pku_index) as engine:
        res = svc.run_query(engine, svc.QueryRequest(crop_ids=(5,), k=3, rerank="none"))[0]
        row = svc.get_crop(engine, svc.CropRequest(5))
    assert res.query == "crop 5" and res.hits[0].id == 5 and res.hits[0].distance == pytest.approx(0, abs=1e-5)
    assert res.camera == row["camera"] == "02"


def test_unknown_crop_and_track_are_not_found(pku_index):
    with Engine.open(pku_index) as engine:
        with pytest.raises(svc.NotFoundError, match="crop 100000"):
            svc.get_crop(engine, svc.CropRequest(100000))
        with pytest.raises(svc.NotFoundError, match="crop 100000"):
            svc.run_query(engine, svc.QueryRequest(crop_ids=(100000,)))
        with pytest.raises(svc.NotFoundError, match="no such track"):
            svc.get_track(engine, svc.TrackRequest("cam/none/1"))


def test_crop_image_of_a_file_crop_is_the_file(pku_index):
    with Engine.open(pku_index) as engine:
        row = svc.ops.crop_rows(engine, [2])[2]
        img = svc.crop_image(engine, svc.CropRequest(2))
    assert np.array_equal(img, read_image(row["path"]))


def _reference_cut(video: str, frame: int, box: list[float]) -> np.ndarray:
    cap = cv2.VideoCapture(video)
    for _ in range(frame):
        cap.grab()
    ok, img = cap.read()
    cap.release()
    assert ok
    x, y, w, h = box
    return img[int(np.floor(y)) : int(np.ceil(y + h)), int(np.floor(x)) : int(np.ceil(x + w))]


def test_footage_crop_is_cut_from_its_video_frame(pets_index, shared):
    with Engine.open(pets_index) as engine:
        row = svc.ops.crop_rows(engine, [3])[3]
        img = svc.crop_image(engine, svc.CropRequest(3))
        track = svc.get_track(engine, svc.TrackRequest(row["track"]))
        framed = svc.track_frame(engine, svc.TrackRequest(row["track"], 3))
    box = [row["box_x"], row["box_y"], row["box_w"], row["box_h"]]
    ref = _reference_cut(row["source"], row["frame"], box)
    assert img.shape == ref.shape and np.array_equal(img, ref)
    assert 3 in [c["id"] for c in track["crops"]] and track["camera"] == "view1"
    assert track["start_time"] <= row["timestamp"] <= track["end_time"]
    assert framed.shape[:2] == (360, 480)  # the whole PETS frame
    x1, y1 = int(round(box[0])), int(round(box[1]))
    assert tuple(framed[y1 + 5, x1]) != tuple(ref[5, 0])  # the box outline is drawn over the person's edge


# -- uploads: type and size from the bytes, before decoding --------------------------------------------------
@pytest.mark.parametrize("ext, kind", [(".png", "png"), (".jpg", "jpeg"), (".bmp", "bmp"), (".webp", "webp")])
def test_sniff_and_header_size(ext, kind):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (37, 23, 3), np.uint8)
    ok, buf = cv2.imencode(ext, img)
    data = buf.tobytes()
    assert uploads.sniff(data) == kind
    assert uploads.header_size(data, kind) == (23, 37)
    decoded, got = uploads.decode_upload(data, "x" + ext, max_bytes=1 << 20, max_pixels=10_000)
    assert got == kind and decoded.shape == (37, 23, 3)


def _png_claiming(width: int, height: int) -> bytes:
    ok, buf = cv2.imencode(".png", np.zeros((4, 4, 3), np.uint8))
    data = bytearray(buf.tobytes())
    ihdr = bytes(data[12:16]) + struct.pack(">II", width, height) + bytes(data[24:29])
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(ihdr) & 0xFFFFFFFF)
    return bytes(data)


def test_decompression_bomb_is_refused_before_decoding(monkeypatch):
    def no_decode(*a, **k):
        raise AssertionError("decoded a refused image")

    monkeypatch.setattr(uploads, "decode_image", no_decode)
    with pytest.raises(svc.PayloadTooLargeError, match="50000x50000 pixels"):
        uploads.decode_upload(_png_claiming(50000, 50000), "bomb.png", max_bytes=1 << 20, max_pixels=40_000_000)


def test_upload_refusals():
    with pytest.raises(svc.UnsupportedMediaError, match="not a PNG"):
        uploads.decode_upload(b"GIF89a....", "a.gif", 1 << 20, 1000)
    with pytest.raises(svc.PayloadTooLargeError, match="upload limit"):
        uploads.decode_upload(b"\x89PNG\r\n\x1a\n" + b"0" * 100, "big.png", 50, 1000)
    with pytest.raises(E.ImageReadError, match="cut short|IHDR"):
        uploads.decode_upload(b"\x89PNG\r\n\x1a\n\x00\x00", "cut.png", 1 << 20, 1000)
    with pytest.raises(E.ImageReadError, match="frame header"):
        uploads.decode_upload(b"\xff\xd8\xff\xd9", "empty.jpg", 1 << 20, 1000)
    with pytest.raises(E.ImageReadError, match="not a readable image"):
        uploads.decode_upload(_png_claiming(4, 4)[:40], "trunc.png", 1 << 20, 1000)
