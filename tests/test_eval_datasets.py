"""Dataset readers on small trees with each benchmark's real naming, and on the shared dev sets."""
from __future__ import annotations

from pathlib import Path

import pytest

from reid_engine.errors import InvalidInputError, UnknownNameError
from reid_engine.eval.datasets import camera_from_name, detect_format, get_format, list_formats, read_dataset


def touch(folder: Path, *names: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for n in names:
        (folder / n).write_bytes(b"not decoded by the readers")


def ids(samples):
    return sorted((s.pid, s.camid) for s in samples)


# -- benchmark layouts -------------------------------------------------------------------------------
@pytest.fixture
def market(tmp_path: Path) -> Path:
    root = tmp_path / "Market-1501-v15.09.15"
    touch(root / "query", "0001_c1s1_001051_00.jpg", "0003_c2s1_000301_00.jpg")
    touch(
        root / "bounding_box_test",
        "-1_c1s1_000401_03.jpg",  # junk: dropped
        "0000_c3s1_000551_01.jpg",  # distractor: kept
        "0001_c1s1_001201_01.jpg",
        "0001_c4s2_003401_02.jpg",
        "0003_c5s1_010101_01.jpg",
        "Thumbs.db",
    )
    touch(root / "bounding_box_train", "0002_c1s1_000451_03.jpg")
    return root


def test_market1501(market: Path):
    assert detect_format(market) == "market1501"
    split = read_dataset(market)
    assert split.format == "market1501" and split.name == "Market-1501-v15.09.15"
    assert ids(split.query) == [(1, 1), (3, 2)]
    assert ids(split.gallery) == [(0, 3), (1, 1), (1, 4), (3, 5)]
    assert all(s.path.is_file() for s in split.gallery)
    # an unpacked archive folder holding the dataset folder works too
    assert ids(read_dataset(market.parent).query) == [(1, 1), (3, 2)]


def test_market_bad_name_is_reported(market: Path):
    touch(market / "query", "oops.jpg")
    with pytest.raises(InvalidInputError, match="oops.jpg"):
        read_dataset(market, "market1501")


def test_dukemtmc(tmp_path: Path):
    root = tmp_path / "DukeMTMC-reID"
    touch(root / "query", "0005_c2_f0046985.jpg")
    touch(root / "bounding_box_test", "0005_c5_f0051781.jpg", "0019_c2_f0049185.jpg", "0000_c1_f0037003.jpg")
    touch(root / "bounding_box_train", "0001_c2_f0046182.jpg")
    assert detect_format(root) == "dukemtmc"
    split = read_dataset(root)
    assert ids(split.query) == [(5, 2)]
    assert ids(split.gallery) == [(0, 1), (5, 5), (19, 2)]


@pytest.mark.parametrize("version,test_dir", [("v1", "test"), ("v2", "mask_test_v2")])
def test_msmt17(tmp_path: Path, version: str, test_dir: str):
    root = tmp_path / f"MSMT17_{version.upper()}"
    touch(root / test_dir / "0000", "0000_000_01_0303morning_0015_0.jpg", "0000_012_07_0303noon_0702_1.jpg")
    touch(root / test_dir / "0001", "0001_003_15_0303afternoon_1203_0.jpg")
    touch(root / ("mask_train_v2" if version == "v2" else "train") / "0000", "0000_000_01_0303morning_0008_0.jpg")
    (root / "list_query.txt").write_text("0000/0000_000_01_0303morning_0015_0.jpg 0\n")
    (root / "list_gallery.txt").write_text(
        "0000/0000_012_07_0303noon_0702_1.jpg 0\n0001/0001_003_15_0303afternoon_1203_0.jpg 1\n\n"
    )
    (root / "list_train.txt").write_text("0000/0000_000_01_0303morning_0008_0.jpg 0\n")
    assert detect_format(root) == "msmt17"
    split = read_dataset(root)
    assert split.protocol == version
    assert ids(split.query) == [(0, 1)]
    assert ids(split.gallery) == [(0, 7), (1, 15)]
    assert split.gallery[0].path == root / test_dir / "0000" / "0000_012_07_0303noon_0702_1.jpg"
    (root / "list_gallery.txt").write_text("0002/0002_000_03_0303morning_0001_0.jpg 2\n")
    with pytest.raises(InvalidInputError, match="missing"):
        read_dataset(root)
    (root / "list_gallery.txt").write_text("0000/0000_012_07_0303noon_0702_1.jpg\n")
    with pytest.raises(InvalidInputError, match="list_gallery.txt:1"):
        read_dataset(root)


@pytest.fixture
def cuhk03(tmp_path: Path) -> Path:
    root = tmp_path / "cuhk03-np"
    for variant, n in (("labeled", "1"), ("detected", "2")):
        touch(root / variant / "query", f"0001_c1_{n}.png", f"0002_c2_{n}.png")
        touch(root / variant / "bounding_box_test", f"0001_c2_{n}.png", f"0002_c1_{n}.png", f"0003_c1_{n}.png")
        touch(root / variant / "bounding_box_train", f"0100_c1_{n}.png")
    return root


def test_cuhk03_np(cuhk03: Path):
    assert detect_format(cuhk03) == "cuhk03_np"
    labeled = read_dataset(cuhk03)
    detected = read_dataset(cuhk03, protocol="detected")
    assert labeled.protocol == "labeled" and detected.protocol == "detected"
    assert labeled.query[0].path.name == "0001_c1_1.png" and detected.query[0].path.name == "0001_c1_2.png"
    assert ids(detected.gallery) == [(1, 2), (2, 1), (3, 1)]
    # a variant folder on its own
    assert detect_format(cuhk03 / "detected") == "cuhk03_np"
    assert read_dataset(cuhk03 / "detected").protocol == "detected"
    with pytest.raises(InvalidInputError, match="detected variant"):
        read_dataset(cuhk03 / "detected", protocol="labeled")
    with pytest.raises(UnknownNameError, match="labeled, detected"):
        read_dataset(cuhk03, protocol="classic")


def test_cuhk03_mat_release_is_refused_with_an_explanation(tmp_path: Path):
    root = tmp_path / "cuhk03"
    touch(root / "cuhk03_release", "cuhk-03.mat")
    assert detect_format(root) == "cuhk03_np"
    with pytest.raises(InvalidInputError, match="cuhk-03.mat release"):
        read_dataset(root)


def test_prcc(tmp_path: Path):
    root = tmp_path / "prcc"
    test = root / "rgb" / "test"
    touch(test / "A" / "001", "cropped_rgb001.jpg", "cropped_rgb010.jpg")
    touch(test / "A" / "002", "cropped_rgb003.jpg")
    touch(test / "B" / "001", "cropped_rgb005.jpg")
    touch(test / "C" / "001", "cropped_rgb101.jpg")
    touch(test / "C" / "002", "cropped_rgb102.jpg")
    touch(root / "rgb" / "train" / "003", "cropped_rgb001.jpg")
    assert detect_format(root) == "prcc"
    cc = read_dataset(root)
    assert cc.protocol == "clothes_changing" and cc.name == "prcc/clothes_changing"
    assert ids(cc.query) == [(1, 3), (2, 3)] and ids(cc.gallery) == [(1, 1), (1, 1), (2, 1)]
    assert {s.clothes_id for s in cc.query} == {1} and {s.clothes_id for s in cc.gallery} == {0}
    same = read_dataset(root / "rgb", protocol="same_clothes")
    assert ids(same.query) == [(1, 2)] and same.query[0].clothes_id == 0


def test_ltcc(tmp_path: Path):
    root = tmp_path / "LTCC_ReID"
    touch(root / "query", "001_1_c11_015874.png", "002_2_c3_000123.png")
    touch(root / "test", "001_1_c4_015900.png", "001_2_c11_020001.png", "002_1_c5_000999.png")
    touch(root / "train", "010_1_c1_000001.png")
    assert detect_format(root) == "ltcc"
    cc = read_dataset(root)
    assert cc.protocol == "clothes_changing" and cc.clothes_changing
    standard = read_dataset(root, protocol="standard")
    assert not standard.clothes_changing
    assert [(s.pid, s.clothes_id, s.camid) for s in cc.query] == [(1, 1, 11), (2, 2, 3)]
    assert [(s.pid, s.clothes_id, s.camid) for s in cc.gallery] == [(1, 1, 4), (1, 2, 11), (2, 1, 5)]


# -- generic layouts ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name,camera",
    [
        ("0001_c3s1_000151_01.jpg", "3"),
        ("0005_c2_f0046985.jpg", "2"),
        ("img_cam02_7.jpg", "02"),
        ("Camera4-frame12.png", "4"),
        ("01_3.png", "01"),
        ("crop_7.png", None),
        ("music_1.png", None),
    ],
)
def test_camera_from_name(name: str, camera):
    assert camera_from_name(name) == camera


def test_identity_folders_with_camera_rule(tmp_path: Path):
    root = tmp_path / "mine"
    touch(root / "alice", "cam1_0001.jpg", "cam2_0002.jpg")
    touch(root / "bob", "cam1_0003.jpg", "cam2_0004.jpg", "cam3_0005.jpg")
    assert detect_format(root) == "folders"
    with pytest.raises(InvalidInputError, match="cameras: 1, 2, 3"):
        read_dataset(root)
    split = read_dataset(root, query_cameras=["1"])
    assert len(split.query) == 2 and len(split.gallery) == 3  # gallery: every other camera
    assert {s.extra["pid_label"] for s in split.query} == {"alice", "bob"}
    only2 = read_dataset(root, query_cameras=[1], gallery_cameras=["2"])
    assert {s.camid for s in only2.gallery} == {2}
    with pytest.raises(InvalidInputError, match="camera '9' not found"):
        read_dataset(root, query_cameras=["9"])
    with pytest.raises(InvalidInputError, match="both query and gallery"):
        read_dataset(root, query_cameras=["1"], gallery_cameras=["1", "2"])


def test_identity_folders_with_query_and_gallery_subfolders(tmp_path: Path):
    root = tmp_path / "site"
    touch(root / "query" / "0007", "0007_c1_a.jpg")
    touch(root / "gallery" / "0007", "0007_c2_b.jpg")
    touch(root / "gallery" / "0008", "0008_c2_c.jpg")
    split = read_dataset(root)
    assert split.format == "folders"
    assert ids(split.query) == [(7, 1)] and ids(split.gallery) == [(7, 2), (8, 2)]
    with pytest.raises(InvalidInputError, match="camera rules do not apply"):
        read_dataset(root, query_cameras=["1"])


def write_csv(path: Path, header: str, rows: list[str]) -> Path:
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def test_csv_with_roles_and_aliases(tmp_path: Path):
    touch(tmp_path / "img", "a.png", "b.png", "c.png", "d.png")
    csv_path = write_csv(
        tmp_path / "proto.csv",
        "file,person_id,camera,clothes_id,role,frame",
        [
            "img/a.png,1,0,3,query,10",
            "img/b.png,1,1,4,gallery,11",
            "img/c.png,2,1,,gallery,12",
            "img/d.png,2,1,,train,1",
        ],
    )
    assert detect_format(csv_path) == "csv"
    split = read_dataset(csv_path)
    assert split.name == "proto" and split.format == "csv"
    assert [(s.pid, s.camid, s.clothes_id) for s in split.query] == [(1, 0, 3)]
    assert [(s.pid, s.camid, s.clothes_id) for s in split.gallery] == [(1, 1, 4), (2, 1, None)]
    assert split.query[0].path == tmp_path / "img" / "a.png"
    assert split.query[0].extra == {"frame": "10"}
    with pytest.raises(InvalidInputError, match="role column"):
        read_dataset(csv_path, query_cameras=["0"])


def test_csv_without_roles_needs_a_camera_rule(tmp_path: Path):
    touch(tmp_path / "x", "1.png", "2.png", "3.png", "4.png")
    csv_path = write_csv(
        tmp_path / "manifest.csv",
        "path,pid,camid",
        ["x/1.png,7,north", "x/2.png,7,south", "x/3.png,8,north", "x/4.png,8,south"],
    )
    assert detect_format(tmp_path) == "csv"  # a folder with manifest.csv
    with pytest.raises(InvalidInputError, match="cameras: north, south"):
        read_dataset(tmp_path)
    split = read_dataset(tmp_path, query_cameras=["north"])
    assert split.name == tmp_path.name
    assert [s.extra["camera_label"] for s in split.query] == ["north", "north"]
    assert [s.pid for s in split.gallery] == [7, 8]
    assert split.query[0].camid != split.gallery[0].camid


@pytest.mark.parametrize(
    "header,row,message",
    [
        ("file,camid", "x.png,1", "missing column"),
        ("file,pid,camid", "nothere.png,1,1", "missing, e.g."),
        ("file,pid,camid,role", "x.png,1,1,probe", "role 'probe'"),
        ("file,pid,camid", "x.png,,1", "empty 'pid'"),
    ],
)
def test_csv_errors(tmp_path: Path, header: str, row: str, message: str):
    touch(tmp_path, "x.png")
    csv_path = write_csv(tmp_path / "bad.csv", header, [row])
    with pytest.raises(InvalidInputError, match=message):
        read_dataset(csv_path, query_cameras=["1"]) if "role" not in header else read_dataset(csv_path)


# -- the registry -------------------------------------------------------------------------------------
def test_registry_errors(tmp_path: Path):
    names = [f.name for f in list_formats()]
    assert {"market1501", "dukemtmc", "msmt17", "cuhk03_np", "prcc", "ltcc", "csv", "folders"} <= set(names)
    with pytest.raises(UnknownNameError, match="market1501"):
        get_format("viper")
    assert get_format("Market1501").name == "market1501" and get_format("cuhk03-np").name == "cuhk03_np"
    touch(tmp_path / "empty", "readme.txt")
    with pytest.raises(InvalidInputError, match="not a dataset layout"):
        read_dataset(tmp_path / "empty")
    with pytest.raises(InvalidInputError, match="no such"):
        read_dataset(tmp_path / "missing")


def test_protocols_and_camera_rules_are_checked(market: Path):
    with pytest.raises(InvalidInputError, match="no named protocols"):
        read_dataset(market, protocol="detected")
    with pytest.raises(InvalidInputError, match="defines its own query and gallery"):
        read_dataset(market, query_cameras=["1"])


# -- the shared development sets ------------------------------------------------------------------------
def test_pku_manifest_both_directions(pku: Path):
    fwd = read_dataset(pku, query_cameras=["01"], gallery_cameras=["02"])
    rev = read_dataset(pku / "manifest.csv", query_cameras=["2"], gallery_cameras=["1"])
    assert (len(fwd.query), len(fwd.gallery)) == (296, 296)
    assert {s.camid for s in fwd.query} == {1} and {s.camid for s in fwd.gallery} == {2}
    assert [s.path for s in rev.query] == [s.path for s in fwd.gallery]
    assert len({s.pid for s in fwd.query}) == 37
    assert fwd.query[0].extra["orientation"] == "1"
    folders = read_dataset(pku, "folders", query_cameras=["01"])  # PID/CAM_ORIENT.png
    assert sorted((s.path, s.pid, s.camid) for s in folders.gallery) == sorted(
        (s.path, s.pid, s.camid) for s in fwd.gallery
    )
    proto = read_dataset(pku / "protocol_cross_camera.csv")
    assert [(s.path, s.pid, s.camid) for s in proto.query] == [(s.path, s.pid, s.camid) for s in fwd.query]


@pytest.mark.parametrize(
    "name,n_query,n_gallery,n_ids",
    [("protocol_setA_frames697-742.csv", 224, 230, 8), ("protocol_setB_frames232-280.csv", 252, 256, 7)],
)
def test_pets_protocols(shared: Path, name: str, n_query: int, n_gallery: int, n_ids: int):
    path = shared / "data" / "pets09_s2l1" / name
    if not path.is_file():
        pytest.skip(f"{path} not available")
    split = read_dataset(path)
    assert (len(split.query), len(split.gallery)) == (n_query, n_gallery)
    assert len({s.pid for s in split.query}) == n_ids
    assert {s.camid for s in split.query}.isdisjoint({s.camid for s in split.gallery})
    assert all(s.path.is_file() for s in split.query[:5])
