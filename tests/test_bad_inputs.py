"""Bad inputs through the CLI and the library: never a traceback, never silent loss (issue #11).

Every case asserts the exit code (or the exception type), that the message is one line naming
the offending file or value and what was expected, that no traceback reaches the user, and that
an existing index is unchanged (its crop count and a query's answer before and after).

The index used is built once per session with the tiny test encoder; cases that write get a copy.

Damaged vector segment files and committed state close the file.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import sqlite3
import subprocess
import sys
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import cv2
import numpy as np
import pytest
import sqlalchemy as sa
from click.testing import CliRunner, Result

from reid_engine import Engine
from reid_engine.cli import main
from reid_engine.errors import (
    DatabaseUnavailableError,
    ImageReadError,
    ImageTooLargeError,
    IndexCorruptError,
    InvalidInputError,
    ReidEngineError,
    WeightsError,
)
from reid_engine.eval.datasets import read_dataset
from reid_engine.images import decode_image, image_size
from reid_engine.index import db
from reid_engine.ingest.crops import CropItem, scan_source
from reid_engine.ingest.pipeline import ingest_video

from .badinputs import BAD_IMAGES, StubDetector, real_png, write_video
from .conftest import write_crops

QUERY_NAME = "0001_c1s1_000101_00.png"


# -- the shared index and its baseline ---------------------------------------------------------------
class World:
    """Paths of the session's index and data, and the index's baseline answer."""

    def __init__(self, root: Path):
        self.root = root
        self.weights = root / "tiny.weights"
        self.weights.write_bytes(b"tiny encoder weights v1")
        self.gallery = root / "gallery"
        self.gallery.mkdir()
        rng = np.random.default_rng(11)
        for pid in (1, 2, 3):
            for cam in (1, 2):
                img = rng.integers(0, 256, (32, 16, 3), dtype=np.uint8)
                cv2.imwrite(str(self.gallery / f"{pid:04d}_c{cam}s1_{100 * pid + cam:06d}_00.png"), img)
        self.query = self.gallery / QUERY_NAME
        self.index = root / "idx"
        with Engine.create(self.index, encoder="tiny-test", weights=self.weights) as eng:
            eng.add(scan_source(self.gallery), show_progress=False)
        self.template = root / "template"  # a pristine copy, for cases that damage or write
        shutil.copytree(self.index, self.template)
        self.baseline = self.snapshot(self.index)

    def snapshot(self, index: Path) -> tuple[int, list[tuple[int, str]]]:
        """(crop count, [(id, path)] of a query's hits) of an index."""
        with Engine.open(index) as eng:
            n = eng.stats()["crops"]
            hits = eng.query([str(self.query)], k=4, rerank="none")[0].hits
        return n, [(h.id, h.path) for h in hits]

    def copy(self, dest: Path) -> Path:
        shutil.copytree(self.template, dest)
        return dest


@pytest.fixture(scope="session")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    return World(tmp_path_factory.mktemp("bad_inputs"))


@pytest.fixture
def unchanged(world: World) -> Iterator[None]:
    """Asserts after the test that the session's index still answers as before."""
    yield
    limit = os.environ.pop("REID_ENGINE_MAX_PIXELS", None)  # a case's own setting must not refuse the check
    try:
        assert world.snapshot(world.index) == world.baseline
    finally:
        if limit is not None:
            os.environ["REID_ENGINE_MAX_PIXELS"] = limit


@pytest.fixture(autouse=True)
def _indexes_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("REID_ENGINE_INDEXES", str(tmp_path / "indexes"))
    monkeypatch.delenv("REID_ENGINE_MAX_PIXELS", raising=False)


# -- assertions ---------------------------------------------------------------------------------------
def cli(*args: Any) -> Result:
    return CliRunner().invoke(main, [a if isinstance(a, str) else str(a) for a in args])


def assert_cli_error(res: Result, code: int, *needles: str) -> str:
    """Exit ``code``, no traceback, and one 'Error:' line holding every needle; returns that line."""
    assert res.exception is None or isinstance(res.exception, SystemExit), (
        f"unhandled {type(res.exception).__name__}: {res.exception}\n{res.output}"
    )
    assert "Traceback" not in res.output
    assert res.exit_code == code, res.output
    lines = [ln for ln in res.output.splitlines() if ln.startswith("Error:")]
    assert len(lines) == 1, res.output
    if code == 1:  # a library error: the message is the whole output
        assert res.output.strip() == lines[0], res.output
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"
    return lines[0]


def assert_cli_ok(res: Result) -> str:
    assert res.exception is None or isinstance(res.exception, SystemExit), (
        f"unhandled {type(res.exception).__name__}: {res.exception}\n{res.output}"
    )
    assert "Traceback" not in res.output
    assert res.exit_code == 0, res.output
    return res.output


def assert_raises(exc_type: type, call: Callable[[], Any], *needles: str) -> str:
    """``call`` raises ``exc_type`` (a ReidEngineError) with a one-line message holding the needles."""
    assert issubclass(exc_type, ReidEngineError)
    with pytest.raises(exc_type) as info:
        call()
    text = str(info.value)
    assert text and "\n" not in text
    for needle in needles:
        assert needle in text, f"{needle!r} not in {text!r}"
    return text


@contextmanager
def memory_cap(extra_bytes: int = 1 << 30) -> Iterator[None]:
    """Cap this process's address space at its current size plus ``extra_bytes`` (Linux)."""
    try:
        vm = next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith("VmSize:"))
    except (OSError, StopIteration):
        yield
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (vm + extra_bytes, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


# -- images: query, index --strict, index (skipped and counted), library ----------------------------
IMAGE_CASES = sorted(BAD_IMAGES)


@pytest.mark.parametrize("case", IMAGE_CASES)
def test_bad_image_as_query_is_one_line_error(case: str, world: World, tmp_path: Path, unchanged: None) -> None:
    name, make, needles = BAD_IMAGES[case]
    img = _write(tmp_path / name, make())
    assert_cli_error(cli("query", img, "--index", world.index), 1, str(img), *needles)


@pytest.mark.parametrize("case", IMAGE_CASES)
def test_bad_image_decoding_prints_nothing_of_its_own(case: str, capfd: pytest.CaptureFixture[str]) -> None:
    """The decoders' C libraries write to file descriptor 2 directly (libpng: "PNG input buffer is incomplete"):
    the one-line error must be all the user sees, so such files are refused before they reach the decoder."""
    name, make, needles = BAD_IMAGES[case]
    capfd.readouterr()
    with pytest.raises(ReidEngineError):
        decode_image(make(), name)
    assert capfd.readouterr().err == ""


@pytest.mark.parametrize("case", IMAGE_CASES)
def test_bad_image_with_strict_index_stops_and_keeps_the_index(
    case: str, world: World, tmp_path: Path, unchanged: None
) -> None:
    name, make, needles = BAD_IMAGES[case]
    _write(tmp_path / "src" / name, make())
    assert_cli_error(cli("index", tmp_path / "src", "--index", world.index, "--strict"), 1, name, *needles)


@pytest.mark.parametrize("case", IMAGE_CASES)
def test_bad_image_in_index_is_skipped_warned_and_counted(
    case: str, world: World, tmp_path: Path, unchanged: None
) -> None:
    name, make, needles = BAD_IMAGES[case]
    _write(tmp_path / "src" / name, make())
    res = cli("index", tmp_path / "src", "--index", world.index, "--json")
    out = assert_cli_ok(res)
    doc = json.loads(next(ln for ln in out.splitlines() if ln.startswith("{")))
    assert doc["added"] == 0 and len(doc["failed"]) == 1
    reason = doc["failed"][0]["reason"]
    assert name in reason and all(n in reason for n in needles) and "\n" not in reason


@pytest.mark.parametrize("case", IMAGE_CASES)
def test_bad_image_in_library_query_raises_image_read_error(case: str, world: World, tmp_path: Path) -> None:
    name, make, needles = BAD_IMAGES[case]
    img = _write(tmp_path / name, make())
    with Engine.open(world.index) as eng:
        assert_raises(ImageReadError, lambda: eng.query([str(img)], k=3), str(img), *needles)


def test_pixel_limit_is_configurable(
    world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, unchanged: None
) -> None:
    img = _write(tmp_path / "crop.png", real_png(1, 32, 16))
    assert_cli_ok(cli("query", img, "--index", world.index, "-k", "2"))
    monkeypatch.setenv("REID_ENGINE_MAX_PIXELS", "500")  # the crop has 512 pixels
    assert_cli_error(cli("query", img, "--index", world.index), 1, str(img), "16x32", "500", "REID_ENGINE_MAX_PIXELS")
    with Engine.open(world.index) as eng:
        assert_raises(ImageTooLargeError, lambda: eng.query([str(img)]), "16x32")
    monkeypatch.setenv("REID_ENGINE_MAX_PIXELS", "20000x20000")  # raised on purpose: accepted
    assert_cli_error(cli("query", img, "--index", world.index), 1, "REID_ENGINE_MAX_PIXELS", "20000x20000")


@pytest.mark.parametrize("value", ["0", "-5", "abc", "nan"])
def test_bad_pixel_limit_setting(
    value: str, world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, unchanged: None
) -> None:
    img = _write(tmp_path / "crop.png", real_png(1))
    monkeypatch.setenv("REID_ENGINE_MAX_PIXELS", value)
    assert_cli_error(cli("query", img, "--index", world.index), 1, "REID_ENGINE_MAX_PIXELS", repr(value))


@pytest.mark.parametrize("what", ["missing", "folder"])
def test_query_image_that_is_not_a_file(what: str, world: World, tmp_path: Path, unchanged: None) -> None:
    target = tmp_path / "x.png"
    if what == "folder":
        target.mkdir()
    needle = "no such image file" if what == "missing" else "is a folder"
    assert_cli_error(cli("query", target, "--index", world.index), 1, str(target), needle)


@pytest.mark.parametrize("ext", [".png", ".jpg", ".bmp", ".tif", ".webp", ".ppm", ".pgm"])
@pytest.mark.parametrize("hw", [(1, 1), (7, 5), (300, 17), (33, 1025)])
def test_header_size_agrees_with_the_decoded_image(ext: str, hw: tuple[int, int]) -> None:
    """The cheap header read (used for the pixel limit) against OpenCV's full decode."""
    img = np.random.default_rng(hw[0]).integers(0, 256, (*hw, 3), dtype=np.uint8)
    ok, buf = cv2.imencode(ext, img[:, :, 0] if ext == ".pgm" else img)
    assert ok
    decoded = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    assert image_size(buf.tobytes()) == (decoded.shape[1], decoded.shape[0])


# -- folders ------------------------------------------------------------------------------------------
NON_UTF8 = os.fsdecode(b"caf\xe9_\xff")


def test_non_utf8_file_name_is_indexed_and_shown_escaped(world: World, tmp_path: Path) -> None:
    src = tmp_path / "src"
    _write(src / f"{NON_UTF8}.png", real_png(21))
    _write(src / "plain.png", real_png(22))
    idx = world.copy(tmp_path / "idx")
    out = assert_cli_ok(cli("index", src, "--index", idx, "--json"))
    doc = json.loads(out)
    assert doc["added"] == 2 and doc["failed"] == []
    with Engine.open(idx) as eng:
        hits = eng.query([str(src / f"{NON_UTF8}.png")], k=1, rerank="none")[0].hits
        assert hits[0].path.endswith("caf\\xe9_\\xff.png")
        assert bytes.fromhex(hits[0].extra["path_bytes"]) == os.fsencode(src.resolve() / f"{NON_UTF8}.png")


def test_non_utf8_query_file_name_is_printed_escaped(world: World, tmp_path: Path, unchanged: None) -> None:
    img = _write(tmp_path / f"{NON_UTF8}.png", real_png(21))
    out = assert_cli_ok(cli("query", img, "--index", world.index, "-k", "1"))
    assert "caf\\xe9_\\xff.png" in out


def test_non_utf8_unreadable_file_is_reported_escaped(world: World, tmp_path: Path, unchanged: None) -> None:
    _write(tmp_path / "src" / f"{NON_UTF8}.png", b"broken")
    assert_cli_error(cli("index", tmp_path / "src", "--index", world.index, "--strict"), 1, "caf\\xe9_\\xff.png")
    assert_cli_error(
        cli("query", tmp_path / "src" / f"{NON_UTF8}.png", "--index", world.index), 1, "caf\\xe9_\\xff.png"
    )


def test_non_utf8_folder_name(world: World, tmp_path: Path) -> None:
    src = tmp_path / NON_UTF8  # (OpenCV cannot write to such a path: the bytes are written here)
    _write(src / "a.png", real_png(31))
    _write(src / "b.png", real_png(32))
    idx = world.copy(tmp_path / "idx")
    doc = json.loads(assert_cli_ok(cli("index", src, "--index", idx, "--json")))
    assert doc["added"] == 2
    with Engine.open(idx) as eng:
        assert eng.stats()["crops"] == world.baseline[0] + 2


def test_market_names_mixed_with_other_names_keep_every_field(world: World, tmp_path: Path) -> None:
    """Rows with and without pid/camera in one commit block: no column may be lost for the block."""
    src = tmp_path / "mixed"
    _write(src / "a_other.png", real_png(41))  # sorted first: no pid, no camera
    _write(src / "0012_c3s1_000451_00.png", real_png(42))
    _write(src / "0007_c2_f0000123.png", real_png(43))
    _write(src / "zz_unlabelled.png", real_png(44))
    idx = world.copy(tmp_path / "idx")
    assert_cli_ok(cli("index", src, "--index", idx))
    eng = Engine.open(idx)
    with eng.store.sql.connect() as conn:
        rows = {Path(r["path"]).name: r for r in conn.execute(sa.select(db.crops)).mappings()}
    eng.close()
    assert (rows["0012_c3s1_000451_00.png"]["pid"], rows["0012_c3s1_000451_00.png"]["camera"]) == ("0012", "3")
    assert rows["0012_c3s1_000451_00.png"]["frame"] == 451
    assert (rows["0007_c2_f0000123.png"]["pid"], rows["0007_c2_f0000123.png"]["frame"]) == ("0007", 123)
    assert rows["a_other.png"]["pid"] is None and rows["zz_unlabelled.png"]["camera"] is None


@pytest.mark.parametrize(
    "setup, args, needles",
    [
        ("empty", (), ("no images found",)),
        ("only_text", (), ("no images found",)),
        ("crops", ("--glob", "*.jpg"), ("no images found", "*.jpg")),
        ("crops", ("--pattern", "(unclosed"), ("pattern", "not a valid regular expression")),
        ("crops", ("--pattern", r"(?P<frame>crop)_"), ("crop_0000.png", "frame 'crop'")),
        ("crops", ("--pattern", r"(?P<timestamp>crop)_"), ("crop_0000.png", "time 'crop'")),
        ("missing", (), ("no such folder or file",)),
        ("txt_file", (), ("expected a folder, a CSV manifest or an image file",)),
    ],
)
def test_bad_folder_sources(
    setup: str, args: tuple, needles: tuple, world: World, tmp_path: Path, unchanged: None
) -> None:
    src = tmp_path / "src"
    if setup == "empty":
        src.mkdir()
    elif setup == "only_text":
        _write(src / "readme.txt", b"hello")
    elif setup == "crops":
        write_crops(src, 2, seed=51)
    elif setup == "txt_file":
        src = _write(tmp_path / "list.txt", b"a.png\n")
    else:
        src = tmp_path / "nowhere"
    assert_cli_error(cli("index", src, "--index", world.index, *args), 1, *needles)


# -- special files (FIFOs, devices) and bad globs --------------------------------------------------------
@contextmanager
def fifo_unblocker(fifo: Path) -> Iterator[None]:
    """Keeps opening and closing ``fifo`` for writing while a reader waits on it, so that a reader that
    (wrongly) opens the FIFO gets end-of-file instead of hanging the test."""
    stop = threading.Event()

    def run() -> None:
        while not stop.wait(0.05):
            try:
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
            except OSError:  # no reader yet
                pass

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


needs_fifo = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")


@needs_fifo
def test_fifo_as_query_image_is_refused_not_read(world: World, tmp_path: Path, unchanged: None) -> None:
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    with fifo_unblocker(fifo):
        assert_cli_error(cli("query", fifo, "--index", world.index), 1, str(fifo), "FIFO", "expected an image file")
        with Engine.open(world.index) as eng:
            assert_raises(ImageReadError, lambda: eng.query([str(fifo)], k=2), str(fifo), "FIFO")


def test_character_device_as_query_image_is_refused_not_read(world: World, unchanged: None) -> None:
    if not Path("/dev/zero").exists():
        pytest.skip("no /dev/zero")
    with memory_cap():  # reading /dev/zero never ends: without the check this fails with MemoryError
        res = cli("query", "/dev/zero", "--index", world.index)
    assert_cli_error(res, 1, "/dev/zero", "character device")


@needs_fifo
def test_fifo_listed_in_a_manifest_is_skipped_and_counted(world: World, tmp_path: Path, unchanged: None) -> None:
    fifo = tmp_path / "m" / "pipe.png"
    csv_path = _write(tmp_path / "m" / "list.csv", b"file\npipe.png\n")
    os.mkfifo(fifo)
    with fifo_unblocker(fifo):
        doc = json.loads(assert_cli_ok(cli("index", csv_path, "--index", world.index, "--json")))
        assert doc["added"] == 0 and len(doc["failed"]) == 1
        assert "pipe.png" in doc["failed"][0]["reason"] and "FIFO" in doc["failed"][0]["reason"]
        assert_cli_error(cli("index", csv_path, "--index", world.index, "--strict"), 1, "pipe.png", "FIFO")
        assert_cli_error(cli("index", fifo, "--index", world.index), 1, str(fifo), "FIFO", "expected a folder")


@needs_fifo
def test_fifo_listed_in_an_eval_protocol_is_an_error(world: World, tmp_path: Path) -> None:
    csv_path = _csv_world(tmp_path, EVAL_GOOD)
    from reid_engine.eval.cache import hash_files

    fifo = tmp_path / "m" / "pipe.png"
    os.mkfifo(fifo)
    with fifo_unblocker(fifo):
        assert_raises(ImageReadError, lambda: hash_files([csv_path.parent / "img0.png", fifo]), str(fifo), "FIFO")


@needs_fifo
def test_weights_and_videos_that_are_not_files_say_what_they_are(world: World, tmp_path: Path, unchanged: None) -> None:
    """A FIFO given as weights or as a video, or a folder given to the library as weights, is named as such (it
    used to read "no such file"; the CLI refuses a folder as weights before the library sees it)."""
    fifo = tmp_path / "pipe.onnx"
    os.mkfifo(fifo)
    with fifo_unblocker(fifo):
        assert_cli_error(cli("query", world.query, "--index", world.index, "--weights", fifo), 1, str(fifo),
                         "is a FIFO", "expected a weights file")
        assert_cli_error(cli("ingest", fifo, "--index", world.index), 1, str(fifo), "is a FIFO",
                         "expected a video file")
    folder = tmp_path / "weights.onnx"
    folder.mkdir()
    assert_raises(WeightsError, lambda: Engine.open(world.index, weights=folder), str(folder), "is a folder",
                  "expected a weights file")


@pytest.mark.parametrize("device", ["gpu", "cuda7", "cuda:x", "CPU"])
def test_device_that_is_no_device(device: str, world: World, unchanged: None) -> None:
    res = cli("query", world.query, "--index", world.index, "--device", device)
    assert_cli_error(res, 1, repr(device), "expected 'cpu', 'cuda', 'cuda:N' or 'auto'")


def test_cuda_device_without_an_nvidia_driver(world: World, unchanged: None) -> None:
    """An explicit CUDA device where no driver is loaded is refused (it was used as the CPU without a word)."""
    from reid_engine.encoders import base

    if base._nvidia_driver():
        pytest.skip("an NVIDIA driver is loaded here")
    res = cli("query", world.query, "--index", world.index, "--device", "cuda:7")
    assert_cli_error(res, 1, "'cuda:7'", "no NVIDIA driver")
    with Engine.open(world.index, device="cuda") as eng:
        assert_raises(InvalidInputError, lambda: eng.query([str(world.query)]), "'cuda'", "no NVIDIA driver")


@pytest.mark.parametrize("glob", ["", "/etc/*"])
def test_glob_that_pathlib_refuses(glob: str, world: World, unchanged: None) -> None:
    assert_cli_error(cli("index", world.gallery, "--index", world.index, "--glob", glob), 1, repr(glob), "relative")
    assert_raises(InvalidInputError, lambda: scan_source(world.gallery, glob=glob), repr(glob))


# -- output folders that cannot be written ---------------------------------------------------------------
@pytest.mark.parametrize("option", ["--save-crops", "--render"])
def test_query_output_folder_below_a_file(option: str, world: World, tmp_path: Path, unchanged: None) -> None:
    blocker = _write(tmp_path / "plain.txt", b"a file, not a folder")
    out = blocker / "hits"
    line = assert_cli_error(cli("query", world.query, "--index", world.index, "-k", "2", option, out), 1, str(out))
    assert "cannot write" in line and "writable folder" in line
    assert blocker.read_bytes() == b"a file, not a folder"


def test_eval_report_and_cache_folders_below_a_file(world: World, tmp_path: Path) -> None:
    csv_path = _csv_world(tmp_path, EVAL_GOOD)
    blocker = _write(tmp_path / "plain.txt", b"a file, not a folder")
    base = ("eval", csv_path, "--encoder", "tiny-test", "--weights", world.weights)
    line = assert_cli_error(cli(*base, "--no-cache", "--report", blocker / "report"), 1, str(blocker / "report"))
    assert "report folder" in line
    line = assert_cli_error(cli(*base, "--cache-dir", blocker / "cache"), 1, str(blocker / "cache"))
    assert "--no-cache" in line


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs /proc (a file system where mkdir fails)")
def test_new_index_where_no_folder_can_be_made(world: World) -> None:
    target = Path("/proc/reid-engine-no-such/idx")
    res = cli("index", world.gallery, "--index", target, "--encoder", "tiny-test", "--weights", world.weights)
    assert_cli_error(res, 1, str(target), "cannot create an index folder")
    assert_raises(
        InvalidInputError, lambda: Engine.create(target, encoder="tiny-test", weights=world.weights), str(target)
    )


# -- CSV manifests ------------------------------------------------------------------------------------
def _csv_world(tmp_path: Path, text: str, encoding: str = "utf-8", bom: bool = False) -> Path:
    for i in range(4):
        _write(tmp_path / "m" / f"img{i}.png", real_png(60 + i))
    data = text.encode(encoding)
    if bom:
        data = b"\xef\xbb\xbf" + data
    return _write(tmp_path / "m" / "list.csv", data)


def _rows(index: Path) -> dict[str, dict]:
    eng = Engine.open(index)
    with eng.store.sql.connect() as conn:
        rows = {Path(r["path"]).name: dict(r) for r in conn.execute(sa.select(db.crops)).mappings()}
    eng.close()
    return rows


GOOD_CSV = "file,pid,camid,role,timestamp\nimg0.png,012,1,gallery,2024-05-01T10:00:00\nimg1.png,013,2,gallery,100\n"


@pytest.mark.parametrize(
    "name, text, bom, role",
    [
        (
            "spaces_in_header",
            "file, pid, camid, role\nimg0.png, 012, 1, gallery\nimg1.png,013,2,gallery\n",
            False,
            "gallery",
        ),
        ("bom_excel", GOOD_CSV, True, "gallery"),
        ("bom_no_role", "file,pid,camid\nimg0.png,012,1\nimg1.png,013,2\n", True, None),
        (
            "upper_case_header",
            "FILE,PID,CAMID,ROLE\nimg0.png,012,1,gallery\nimg1.png,013,2,Gallery\n",
            False,
            "gallery",
        ),
        ("crlf_line_ends", GOOD_CSV.replace("\n", "\r\n"), False, "gallery"),
        ("blank_lines", GOOD_CSV.replace("\n", "\n\n"), False, "gallery"),
    ],
)
def test_csv_variants_that_must_be_read(
    name: str, text: str, bom: bool, role: Optional[str], world: World, tmp_path: Path
) -> None:
    csv_path = _csv_world(tmp_path, text, bom=bom)
    idx = world.copy(tmp_path / "idx")
    args = ("--role", role) if role else ()
    doc = json.loads(assert_cli_ok(cli("index", csv_path, "--index", idx, "--json", *args)))
    assert doc["added"] == 2
    rows = _rows(idx)
    assert (rows["img0.png"]["pid"], rows["img0.png"]["camera"]) == ("012", "1")
    assert (rows["img1.png"]["pid"], rows["img1.png"]["camera"]) == ("013", "2")


@pytest.mark.parametrize("empty_col", ["pid", "camid", "timestamp"])
def test_csv_empty_cell_in_the_first_row_loses_nothing_in_the_others(
    empty_col: str, world: World, tmp_path: Path
) -> None:
    cells = {"pid": ["012", "013", "014"], "camid": ["1", "2", "3"], "timestamp": ["10", "20", "30"]}
    cells[empty_col][0] = ""
    lines = ["file,pid,camid,timestamp"] + [
        f"img{i}.png,{cells['pid'][i]},{cells['camid'][i]},{cells['timestamp'][i]}" for i in range(3)
    ]
    csv_path = _csv_world(tmp_path, "\n".join(lines) + "\n")
    idx = world.copy(tmp_path / "idx")
    assert json.loads(assert_cli_ok(cli("index", csv_path, "--index", idx, "--json")))["added"] == 3
    rows = _rows(idx)
    col = {"pid": "pid", "camid": "camera", "timestamp": "timestamp"}[empty_col]
    assert rows["img0.png"][col] is None
    expect = {"pid": ["013", "014"], "camid": ["2", "3"], "timestamp": [20.0, 30.0]}[empty_col]
    assert [rows["img1.png"][col], rows["img2.png"][col]] == expect


def test_csv_later_row_with_empty_pid(world: World, tmp_path: Path) -> None:
    csv_path = _csv_world(tmp_path, "file,pid,camid\nimg0.png,012,1\nimg1.png,,2\nimg2.png,014,3\n")
    idx = world.copy(tmp_path / "idx")
    assert_cli_ok(cli("index", csv_path, "--index", idx, "--commit-every", "2"))
    rows = _rows(idx)
    assert [rows[f"img{i}.png"]["pid"] for i in range(3)] == ["012", None, "014"]


@pytest.mark.parametrize(
    "name, text, args, needles",
    [
        ("roles_match_nothing", GOOD_CSV, ("--role", "query"), ("no row has role 'query'", "'gallery' (2)")),
        ("role_without_column", "file,pid\nimg0.png,1\n", ("--role", "gallery"), ("no 'role' column",)),
        ("no_file_column", "image_name,pid\nimg0.png,1\n", (), ("'file'", "image_name")),
        ("semicolons", "file;pid\nimg0.png;1\n", (), ("'file'", "file;pid")),
        ("empty_file_cell", "file,pid\nimg0.png,1\n,2\n", (), ("list.csv:3", "empty")),
        ("short_row_no_file", "pid,file\n1,img0.png\n7\n", (), ("list.csv:3", "empty 'file'")),
        ("bad_frame", "file,frame\nimg0.png,7\nimg1.png,seven\n", (), ("list.csv:3", "'seven'")),
        ("huge_frame_float", "file,frame\nimg0.png,1e30\n", (), ("list.csv:2", "'1e30'", "out of range")),
        ("frame_beyond_32_bits", "file,frame\nimg0.png,99999999999\n", (), ("list.csv:2", "out of range")),
        ("bad_timestamp", "file,timestamp\nimg0.png,yesterday\n", (), ("list.csv:2", "'yesterday'")),
        ("nan_timestamp", "file,timestamp\nimg0.png,nan\n", (), ("list.csv:2", "'nan'")),
        ("inf_timestamp", "file,timestamp\nimg0.png,inf\n", (), ("list.csv:2", "'inf'")),
        ("timestamp_past_year_9999", "file,timestamp\nimg0.png,1e20\n", (), ("list.csv:2", "'1e20'", "years 1 and 9999")),
        ("timestamp_before_year_1", "file,timestamp\nimg0.png,-1e12\n", (), ("list.csv:2", "'-1e12'", "years 1")),
        ("empty_csv", "", (), ("'file'", "[]")),
        ("header_only", "file,pid\n", (), ("no images found",)),
    ],
)
def test_bad_csv_manifests(
    name: str, text: str, args: tuple, needles: tuple, world: World, tmp_path: Path, unchanged: None
) -> None:
    csv_path = _csv_world(tmp_path, text)
    assert_cli_error(cli("index", csv_path, "--index", world.index, *args), 1, "list.csv", *needles)


def test_csv_not_utf8(world: World, tmp_path: Path, unchanged: None) -> None:
    csv_path = _csv_world(tmp_path, "file,pid\nimg0.png,Jos\xe9\n", encoding="latin-1")
    assert_cli_error(cli("index", csv_path, "--index", world.index), 1, "list.csv", "not UTF-8")


@pytest.mark.parametrize(
    "name, meta_line, needles",
    [
        ("pid_too_long", "img0.png,," + "p" * 80, ("pid", "64")),
    ],
)
def test_csv_values_the_table_cannot_hold(
    name: str, meta_line: str, needles: tuple, world: World, tmp_path: Path, unchanged: None
) -> None:
    csv_path = _csv_world(tmp_path, "file,frame,pid\n" + meta_line + "\n")
    assert_cli_error(cli("index", csv_path, "--index", world.index), 1, "img0.png", *needles)


def test_csv_listing_a_missing_file(world: World, tmp_path: Path, unchanged: None) -> None:
    csv_path = _csv_world(tmp_path, "file\nnot_there.png\n")
    doc = json.loads(assert_cli_ok(cli("index", csv_path, "--index", world.index, "--json")))
    assert doc["added"] == 0 and "not_there.png" in doc["failed"][0]["reason"]
    assert_cli_error(cli("index", csv_path, "--index", world.index, "--strict"), 1, "not_there.png")


# -- eval CSVs (dataset reader) -------------------------------------------------------------------------
EVAL_GOOD = "file,pid,camid,role\nimg0.png,1,1,query\nimg1.png,1,2,gallery\nimg2.png,2,2,gallery\n"


@pytest.mark.parametrize(
    "name, text, bom",
    [
        ("plain", EVAL_GOOD, False),
        ("bom", EVAL_GOOD, True),
        ("spaces", EVAL_GOOD.replace(",", ", "), False),
        ("upper_roles", EVAL_GOOD.replace("query", "Query"), False),
    ],
)
def test_eval_csv_variants_are_read(name: str, text: str, bom: bool, tmp_path: Path) -> None:
    split = read_dataset(_csv_world(tmp_path, text, bom=bom))
    assert (len(split.query), len(split.gallery)) == (1, 2)


@pytest.mark.parametrize(
    "name, text, needles",
    [
        (
            "only_train_roles",
            EVAL_GOOD.replace("query", "train").replace("gallery", "train"),
            ("no row has role 'query'", "'train' (3)"),
        ),
        ("no_gallery", EVAL_GOOD.replace("gallery", "query"), ("no row has role 'gallery'", "'query' (3)")),
        ("unknown_role", EVAL_GOOD.replace("gallery", "probe", 1), ("list.csv:3", "'probe'")),
        ("empty_pid_later", "file,pid,camid,role\nimg0.png,1,1,query\nimg1.png,,2,gallery\n", ("list.csv:3", "'pid'")),
        ("missing_column", "file,camid\nimg0.png,1\n", ("pid",)),
        ("missing_image", EVAL_GOOD + "gone.png,3,1,gallery\n", ("missing", "gone.png")),
    ],
)
def test_eval_csv_errors_say_what_was_found(name: str, text: str, needles: tuple, tmp_path: Path) -> None:
    csv_path = _csv_world(tmp_path, text)
    assert_raises(InvalidInputError, lambda: read_dataset(csv_path), "list.csv", *needles)


def test_eval_csv_not_utf8(tmp_path: Path) -> None:
    csv_path = _csv_world(tmp_path, "file,pid,camid\nimg0.png,Jos\xe9,1\n", encoding="latin-1")
    assert_raises(InvalidInputError, lambda: read_dataset(csv_path), "list.csv", "not UTF-8")


def test_eval_cli_roles_that_match_nothing(world: World, tmp_path: Path) -> None:
    csv_path = _csv_world(tmp_path, EVAL_GOOD.replace("query", "train").replace("gallery", "train"))
    res = cli("eval", csv_path, "--encoder", "tiny-test", "--weights", world.weights, "--no-cache")
    assert_cli_error(res, 1, "list.csv", "roles found")


# -- option values --------------------------------------------------------------------------------------
def test_empty_index_path_builds_nothing_in_the_current_folder(
    world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    for args in (("index", world.gallery), ("query", world.query), ("info",), ("remove", "--id", "1")):
        res = cli(
            *args,
            "--index",
            "",
            *(("--encoder", "tiny-test", "--weights", world.weights) if args[0] == "index" else ()),
        )
        assert_cli_error(res, res.exit_code if res.exit_code in (1, 2) else 1, "index")  # usage or library error
    assert list(cwd.iterdir()) == []


def _path_option_cases(world: World) -> list[tuple[str, ...]]:
    """Commands whose path argument or option is given as an empty string (each would have meant the current
    folder: ``Path("")`` is ``Path(".")``)."""
    idx, w, q = str(world.index), str(world.weights), str(world.query)
    new = ("--index", "new_idx", "--encoder", "tiny-test", "--weights", w)
    return [
        ("index", "", *new),
        ("index", str(world.gallery), "--index", "new_idx", "--encoder", "tiny-test", "--weights", ""),
        ("query", "", "--index", idx),
        ("query", q, "--index", idx, "--save-crops", ""),
        ("query", q, "--index", idx, "--render", " "),
        ("eval", str(world.gallery), "--encoder", "tiny-test", "--weights", w, "--report", ""),
        ("eval", str(world.gallery), "--encoder", "tiny-test", "--weights", w, "--cache-dir", ""),
        ("eval", "", "--encoder", "tiny-test", "--weights", w),
        ("ingest", str(world.gallery), *new, "--detector-weights", ""),
    ]


def test_empty_paths_are_refused_and_nothing_lands_in_the_current_folder(
    world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, unchanged: None
) -> None:
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    for args in _path_option_cases(world):
        line = assert_cli_error(cli(*args), 2, "expected a path, not an empty value")
        assert "''" in line or "' '" in line, line
    assert list(cwd.iterdir()) == []


def test_a_path_option_expands_the_home_folder(
    world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, unchanged: None
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(tmp_path)
    res = cli("query", world.query, "--index", world.index, "-k", "2", "--rerank", "none", "--save-crops", "~/hits")
    assert_cli_ok(res)
    assert len(list((home / "hits").rglob("*.png"))) == 2
    assert not (tmp_path / "~").exists()


@pytest.mark.parametrize(
    "args, needles",
    [
        (("--camera", ""), ("camera ''", "empty")),
        (("--camera", "c1,"), ("camera 'c1,'", "empty")),
        (("--exclude-camera", " "), ("camera ' '",)),
        (("--source", ""), ("source ''",)),
        (("--attr", ""), ("attribute ''",)),
        (("--time-from", ""), ("time_from ''", "ISO-8601")),
        (("--time-to", "  "), ("time_to '", "ISO-8601")),
        (("--query-camera", ""), ("query camera ''",)),
    ],
)
def test_empty_filter_values_are_refused_not_dropped(
    args: tuple, needles: tuple, world: World, unchanged: None
) -> None:
    """An empty name or time would have widened the search to every camera, source or time without a word."""
    assert_cli_error(cli("query", world.query, "--index", world.index, *args), 1, *needles)


def test_remove_with_an_empty_camera_removes_nothing(world: World, unchanged: None) -> None:
    """``--camera ''`` beside ``--id`` used to be dropped, so the id was removed whatever its camera."""
    first_id = world.baseline[1][0][0]
    assert_cli_error(cli("remove", "--index", world.index, "--id", first_id, "--camera", ""), 1, "camera ''")


@pytest.mark.parametrize("option", ["--camera", "--role", "--source-name"])
def test_index_with_an_empty_name_option_builds_nothing(option: str, world: World, tmp_path: Path) -> None:
    target = tmp_path / "new_idx"
    res = cli(
        "index", world.gallery, "--index", target, "--encoder", "tiny-test", "--weights", world.weights, option, ""
    )
    assert_cli_error(res, 1, "''", "empty")
    assert not (target / "manifest.json").exists()


@pytest.mark.parametrize(
    "option, value", [("--rerank", ""), ("--rerank", "none,"), ("--fusion", " "), ("--query-camera", ""),
                      ("--gallery-camera", ",")]
)
def test_eval_empty_names_are_usage_errors(option: str, value: str, world: World, tmp_path: Path) -> None:
    csv_path = _csv_world(tmp_path, EVAL_GOOD)
    res = cli("eval", csv_path, "--encoder", "tiny-test", "--weights", world.weights, "--no-cache", option, value)
    assert_cli_error(res, 2, option, "empty")


@pytest.mark.parametrize("command", ["index", "query", "info", "remove"])
@pytest.mark.parametrize("where", ["file", "below_file"])
def test_index_path_at_or_below_a_regular_file(command: str, where: str, world: World, tmp_path: Path) -> None:
    f = _write(tmp_path / "plain.txt", b"not an index")
    target = f if where == "file" else f / "idx"
    before, after = {
        "index": ((world.gallery,), ("--encoder", "tiny-test", "--weights", world.weights)),
        "query": ((world.query,), ()),
        "info": ((), ()),
        "remove": ((), ("--id", "1")),
    }[command]
    line = assert_cli_error(cli(command, *before, "--index", target, *after), 1)
    assert str(f) in line
    assert f.read_bytes() == b"not an index"


@pytest.mark.parametrize(
    "args, code, needles",
    [
        (("--id", str(2**70)), 1, (str(2**70), "out of range")),
        (("--id", str(-(2**70))), 1, (str(-(2**70)),)),
        (("--id", "abc"), 2, ("abc",)),
        (("--id", "1.5"), 2, ("1.5",)),
        ((), 2, ("--id",)),
    ],
)
def test_bad_remove_options(args: tuple, code: int, needles: tuple, world: World, unchanged: None) -> None:
    assert_cli_error(cli("remove", "--index", world.index, *args), code, *needles)


def test_remove_of_an_id_that_is_not_there_removes_nothing(world: World, unchanged: None) -> None:
    out = assert_cli_ok(cli("remove", "--index", world.index, "--id", str(2**62), "--json"))
    assert json.loads(out)["removed"] == 0


@pytest.mark.parametrize(
    "args, code, needles",
    [
        (("-k", "0"), 2, ("-k",)),
        (("-k", "-5"), 2, ("-k",)),
        (("-k", "abc"), 2, ("abc",)),
        (("-k", "2.5"), 2, ("2.5",)),
        (("--time-from", "nan"), 1, ("'nan'", "finite")),
        (("--time-from", "inf"), 1, ("'inf'",)),
        (("--time-from", "-inf"), 1, ("'-inf'",)),
        (("--time-to", "NaN"), 1, ("'NaN'",)),
        (("--time-from", "1e400"), 1, ("'1e400'",)),
        (("--time-from", "yesterday"), 1, ("'yesterday'", "ISO-8601")),
        (("--time-to", "2024-13-45"), 1, ("'2024-13-45'",)),
        (("--rerank", "no-such-preset"), 1, ("no-such-preset",)),
        (("--fusion", "no-such-mode"), 1, ("no-such-mode",)),
        (("--attr", "male"), 1, ("attributes",)),
    ],
)
def test_bad_query_options(args: tuple, code: int, needles: tuple, world: World, unchanged: None) -> None:
    assert_cli_error(cli("query", world.query, "--index", world.index, *args), code, *needles)


def test_query_with_a_huge_k_is_clipped_to_the_gallery(world: World, unchanged: None) -> None:
    res = cli("query", world.query, "--index", world.index, "-k", "10000", "--json", "--rerank", "none")
    assert len(json.loads(assert_cli_ok(res))["queries"][0]["hits"]) == world.baseline[0]
    with Engine.open(world.index) as eng, memory_cap():
        hits = eng.query([str(world.query)], k=1_000_000_000, rerank="none")[0].hits
    assert len(hits) == world.baseline[0]


@pytest.mark.parametrize(
    "args, code, needles",
    [
        (("--commit-every", "0"), 2, ("--commit-every",)),
        (("--batch-size", "0"), 2, ("--batch-size",)),
        (("--db-url", "mysql+pymysql://user:secret@localhost/db"), 1, ("pymysql", "not installed")),
        (("--db-url", "nosuchdialect://x/y"), 1, ("nosuchdialect", "unknown database")),
        (("--db-url", "not a url"), 1, ("not a url",)),
        (("--db-url", "postgresql+psycopg://u:secret@127.0.0.1:1/x"), 1, ("127.0.0.1:1", "cannot use the database")),
        (("--db-url", "sqlite:////nonexistent-dir/zz/crops.db"), 1, ("no folder /nonexistent-dir/zz", "cannot use the database")),
        (("--encoder", "no-such-encoder"), 1, ("no-such-encoder",)),
        (("--db-url", "sqlite://"), 1, ("sqlite://", "in-memory")),  # every row was lost at exit
        (("--db-url", "sqlite:///:memory:"), 1, ("in-memory",)),
    ],
)
def test_bad_index_options_for_a_new_index(
    args: tuple, code: int, needles: tuple, world: World, tmp_path: Path
) -> None:
    target = tmp_path / "new_idx"
    res = cli("index", world.gallery, "--index", target, "--encoder", "tiny-test", "--weights", world.weights, *args)
    line = assert_cli_error(res, code, *needles)
    assert "secret" not in line
    assert not target.exists()  # not even an empty folder


def test_missing_weights_file(world: World, tmp_path: Path) -> None:
    res = cli(
        "index", world.gallery, "--index", tmp_path / "n", "--encoder", "tiny-test", "--weights", tmp_path / "no.w"
    )
    assert_cli_error(res, 1, "no.w")


def test_after_a_deleted_manifest_the_message_names_the_folder_and_a_way_forward(world: World, tmp_path: Path) -> None:
    idx = world.copy(tmp_path / "idx")
    (idx / "manifest.json").unlink()
    line = assert_cli_error(cli("info", "--index", idx), 1, str(idx), "manifest.json", "restore")
    assert "{index}" not in line
    res = cli("index", world.gallery, "--index", idx, "--encoder", "tiny-test", "--weights", world.weights)
    line = assert_cli_error(res, 1, str(idx.resolve()))
    assert "{index}" not in line


# -- library arguments ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def engine(world: World) -> Iterator[Engine]:
    with Engine.open(world.index) as eng:
        yield eng


@pytest.mark.parametrize(
    "images, kwargs, needles",
    [
        ([None], {}, ("None", "image")),
        ([123], {}, ("123",)),
        ([""], {}, ("''",)),
        ([["a.png"]], {}, ("['a.png']",)),
        ("QUERY", {"k": 2.5}, ("2.5", "integer")),
        ("QUERY", {"k": "3"}, ("'3'", "integer")),
        ("QUERY", {"k": 0}, ("k 0",)),
        ("QUERY", {"k": -1}, ("k -1",)),
        ("QUERY", {"k": True}, ("True",)),
        ("QUERY", {"k": None}, ("None",)),
        ("QUERY", {"time_from": float("nan")}, ("nan",)),
        ("QUERY", {"time_from": "nan"}, ("'nan'",)),
        ("QUERY", {"time_to": float("inf")}, ("inf",)),
        ("QUERY", {"time_to": "next week"}, ("'next week'",)),
        ("QUERY", {"time_from": True}, ("True",)),
    ],
)
def test_bad_library_query_arguments(images: Any, kwargs: dict, needles: tuple, engine: Engine, world: World) -> None:
    imgs = [str(world.query)] if images == "QUERY" else images
    assert_raises(InvalidInputError, lambda: engine.query(imgs, **kwargs), *needles)


@pytest.mark.parametrize(
    "features, needles",
    [
        (np.zeros((1, 7), np.float32), ("(1, 7)", "16")),
        (np.full((1, 16), np.nan, np.float32), ("NaN",)),
        (np.zeros((2, 3, 16), np.float32), ("(2, 3, 16)",)),
        ("abc", ("str",)),
        (np.zeros((1, 16), np.float32), ("row 0 is all zeros",)),  # was answered as if it were a person
        (np.vstack([np.ones(16), np.zeros(16)]).astype(np.float32), ("row 1 is all zeros",)),
    ],
)
def test_bad_query_features(features: Any, needles: tuple, engine: Engine) -> None:
    assert_raises(InvalidInputError, lambda: engine.query_features(features, k=3), *needles)


def test_library_k_of_numpy_integer_is_accepted(engine: Engine, world: World) -> None:
    hits = engine.query([str(world.query)], k=np.int64(2), rerank="none")[0].hits
    assert [(h.id, h.path) for h in hits] == world.baseline[1][:2]


@pytest.mark.parametrize(
    "kwargs, needles",
    [
        ({"ids": ["a"]}, ("'a'", "integer")),
        ({"ids": [2**70]}, (str(2**70), "out of range")),
        ({"ids": [1.5]}, ("1.5",)),
        ({"ids": [None]}, ("None",)),
        ({"ids": [True]}, ("True",)),
        ({"ids": "3"}, ("'3'", "list")),
        ({"ids": 3}, ("3", "list")),
        ({"cameras": "1"}, ("'1'", "list")),
        ({"sources": "abc"}, ("'abc'", "list")),
        ({"cameras": [None]}, ("None",)),
        ({}, ("filter",)),
    ],
)
def test_bad_library_remove_arguments(kwargs: dict, needles: tuple, world: World, unchanged: None) -> None:
    with Engine.open(world.index) as eng:
        assert_raises(InvalidInputError, lambda: eng.remove(**kwargs), *needles)


@pytest.mark.parametrize(
    "kwargs, needles",
    [
        ({"commit_every": 0}, ("commit_every 0", "positive")),
        ({"commit_every": -1}, ("commit_every -1",)),
        ({"commit_every": 2.5}, ("2.5",)),
        ({"commit_every": "10"}, ("'10'",)),
        ({"batch_size": 0}, ("batch_size 0",)),
    ],
)
def test_bad_library_add_arguments(kwargs: dict, needles: tuple, world: World, tmp_path: Path, unchanged: None) -> None:
    src = tmp_path / "src"
    write_crops(src, 2, seed=71)
    with Engine.open(world.index) as eng:
        assert_raises(InvalidInputError, lambda: eng.add(scan_source(src), **kwargs), *needles)


@pytest.mark.parametrize(
    "items, needles",
    [
        ("a_folder_path", ("scan_source",)),
        ([None], ("None",)),
        ([123], ("123",)),
        ([""], ("''",)),
        ([CropItem(Path("IMG"), {"frame": "seven"})], ("frame", "'seven'")),
        ([CropItem(Path("IMG"), {"box": (1, 2, 3)})], ("box",)),
        ([CropItem(Path("IMG"), {"timestamp": float("nan")})], ("nan",)),
        ([CropItem(Path("IMG"), {"pid": "x" * 65})], ("pid", "64")),
        ([CropItem(Path("IMG"), {"note": object()})], ("metadata",)),
        ([CropItem(Path("IMG"), {"box_w": 3})], ("box_w given without the rest",)),  # broke every query showing it
        ([CropItem(Path("IMG"), {"box_x": 1, "box_y": 2, "box_h": 4})], ("box_x, box_y, box_h given",)),
        ([CropItem(Path("IMG"), {"box": (0, 0, 5e9, 50)})], ("box_w 5000000000.0", "pixels")),  # OpenCV could not draw
        ([CropItem(Path("IMG"), {"extra": [1, 2]})], ("extra [1, 2]", "mapping")),
        ([CropItem(Path("IMG"), {"extra": "abc"})], ("extra 'abc'", "mapping")),
    ],
)
def test_bad_library_add_items(items: Any, needles: tuple, world: World, tmp_path: Path, unchanged: None) -> None:
    img = _write(tmp_path / "one.png", real_png(81))
    if isinstance(items, list):
        items = [CropItem(img, it.meta) if isinstance(it, CropItem) else it for it in items]
    with Engine.open(world.index) as eng:
        assert_raises(InvalidInputError, lambda: eng.add(items), *needles)


def test_images_of_nan_pixels_are_refused_not_made_up(world: World, tmp_path: Path, unchanged: None) -> None:
    """Float pixels that are NaN were cast to arbitrary bytes and answered (or indexed) like a photo."""
    nan_image = np.full((32, 16, 3), np.nan, np.float32)
    with Engine.open(world.index) as eng:
        assert_raises(ImageReadError, lambda: eng.query([nan_image]), "NaN or infinite pixel values")
    idx = world.copy(tmp_path / "idx")
    with Engine.open(idx) as eng:
        rep = eng.add([CropItem(Path("nan-crop"), {}, image=nan_image)], show_progress=False)
        assert rep.added == 0 and len(rep.failed) == 1 and "NaN" in rep.failed[0][1]
        assert eng.stats()["crops"] == world.baseline[0]


def test_features_past_float32_lengths_are_kept_not_zeroed(world: World, tmp_path: Path) -> None:
    """A row of finite values whose length overflows float32 (1e20 each) was stored as all zeros, so it matched
    nothing, not even itself; rows of tiny values underflowed the same way."""
    idx = world.copy(tmp_path / "idx")
    with Engine.open(idx) as eng:
        dim = eng.store.manifest.dim
        base = _unit_rows(2, dim, seed=17)
        rows = np.vstack([base[0] * 1e20, base[1] * 1e-25]).astype(np.float32)
        ids = eng.add_features(rows, [CropItem(tmp_path / "big.png", {}), CropItem(tmp_path / "tiny.png", {})],
                               hashes=["big", "tiny"])
        np.testing.assert_allclose(eng.store.vectors(ids), base, atol=1e-5)  # the reference: the unit rows
        for row, own in zip(rows, ids):
            hit = eng.query_features(row[None], k=1, rerank="none")[0].hits[0]
            assert hit.id == own and hit.distance == pytest.approx(0.0, abs=1e-5)
        zero_row = [CropItem(tmp_path / "z.png", {})]
        assert_raises(InvalidInputError, lambda: eng.add_features(np.zeros((1, dim)), zero_row, hashes=["zero"]),
                      "z.png", "all zeros")
        assert_raises(InvalidInputError, lambda: eng.add_features(base[:1], None), "items of type NoneType")  # type: ignore[arg-type]
        assert eng.stats()["crops"] == world.baseline[0] + 2


def _unit_rows(n: int, dim: int, seed: int = 5) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize(
    "case, error, needles",
    [
        ("features_none", InvalidInputError, ("features of type NoneType", "array of numbers")),
        ("features_one_row", InvalidInputError, ("features of shape (",)),
        ("features_text", InvalidInputError, ("features", "array of numbers")),
        ("item_none", InvalidInputError, ("items[0]", "NoneType", "CropItem")),
        ("hash_none", InvalidInputError, ("hashes[0] None",)),
        ("hash_count", InvalidInputError, ("2 hashes for 1 crops",)),
        ("same_crop_twice", InvalidInputError, ("b.png", "items[0]")),
        ("already_indexed", InvalidInputError, (QUERY_NAME, "already indexed")),
        ("no_file_to_hash", ImageReadError, ("missing.png", "hashes=")),
    ],
)
def test_bad_library_add_features(
    case: str, error: type, needles: tuple, world: World, tmp_path: Path, unchanged: None
) -> None:
    """Typed errors before anything is written (they were TypeError, AttributeError, IntegrityError...)."""
    with Engine.open(world.index) as eng:
        dim = eng.store.manifest.dim
        one, two = _unit_rows(1, dim), _unit_rows(2, dim)
        img = _write(tmp_path / "new.png", real_png(83))
        call: Callable[[], Any] = {
            "features_none": lambda: eng.add_features(None, [CropItem(img, {})]),  # type: ignore[arg-type]
            "features_text": lambda: eng.add_features(np.array([["a"] * dim]), [CropItem(img, {})]),
            "features_one_row": lambda: eng.add_features(one[0], [CropItem(img, {})]),
            "item_none": lambda: eng.add_features(one, [None]),  # type: ignore[list-item]
            "hash_none": lambda: eng.add_features(one, [CropItem(img, {})], hashes=[None]),  # type: ignore[list-item]
            "hash_count": lambda: eng.add_features(one, [CropItem(img, {})], hashes=["a", "b"]),
            "same_crop_twice": lambda: eng.add_features(
                two, [CropItem(Path("a.png"), {}), CropItem(Path("b.png"), {})], hashes=["h1", "h1"]),
            "already_indexed": lambda: eng.add_features(one, [CropItem(world.query, {})]),
            "no_file_to_hash": lambda: eng.add_features(one, [CropItem(tmp_path / "missing.png", {})]),
        }[case]
        assert_raises(error, call, *needles)


def test_an_indexed_crop_stops_the_feature_add_at_its_block(world: World, tmp_path: Path) -> None:
    """The database's unique rule finds it at its block's commit (no lookup on the way of every add): a typed
    error naming the crop; the block before it stays committed, nothing of its own block is added."""
    idx = world.copy(tmp_path / "idx")
    with Engine.open(idx) as eng:
        n = eng.stats()["crops"]
        rows = _unit_rows(5000, eng.store.manifest.dim)  # two commit blocks; the indexed crop in the second
        items = [CropItem(Path(f"f{i}.png"), {}) for i in range(4999)] + [CropItem(world.query, {})]
        hashes = [f"feat{i:06d}" for i in range(4999)] + [CropItem(world.query, {}).sha256()]
        assert_raises(InvalidInputError, lambda: eng.add_features(rows, items, hashes=hashes),
                      QUERY_NAME, "already indexed", "nothing of its block")
        assert eng.stats()["crops"] == n + 4096
        first, second = eng.query_features(rows[[0, 4096]], k=1, rerank="none")
        assert first.hits[0].distance < 1e-5 and first.hits[0].path.endswith("f0.png")  # the first block's row
        assert second.hits[0].distance > 1e-3  # the second block's rows are not in the index
    assert world.snapshot(world.index) == world.baseline


@pytest.mark.parametrize(
    "call, needles",
    [
        (lambda eng, q, w: eng.query_features(q, search_params={"bogus": 1}), ("'bogus'", "ef_search")),
        (lambda eng, q, w: eng.query_features(q, search_params=[1, 2]), ("[1, 2]", "mapping")),
        (lambda eng, q, w: eng.query_features(q, search_params={"exact": 1}), ("exact=1", "true or false")),
        (lambda eng, q, w: eng.query([str(w.query)], batch_size="4"), ("batch_size '4'",)),
        # these raised TypeError, ValueError, KeyError or AttributeError
        (lambda eng, q, w: eng.query([w.query.read_bytes()]), ("query image 0 b'", "of type bytes")),
        (lambda eng, q, w: eng.query({str(w.query): 1}), ("of type dict",)),
        (lambda eng, q, w: eng.query(np.uint8(3)), ("of type uint8",)),
        (lambda eng, q, w: eng.query_features(q, cameras=1), ("cameras=1",)),
        (lambda eng, q, w: eng.query_features(q, cameras=[None]), ("None is not a name",)),  # matched nothing
        (lambda eng, q, w: eng.query_features(q, exclude_cameras=[None]), ("None is not a name",)),  # left out none
        (lambda eng, q, w: eng.query_tracks([str(w.query)], rerank="kr"), ("rerank", "not of track queries")),
        (lambda eng, q, w: eng.query_tracks([str(w.query)], attributes=["male"]), ("attributes",)),
        (lambda eng, q, w: eng.query_tracks_features(q, fusion="clothes-change"), ("fusion",)),
        (lambda eng, q, w: eng.find(5), ("attributes 5",)),
        (lambda eng, q, w: eng.find([5]), ("attribute terms [5]",)),
        (lambda eng, q, w: eng.add(None), ("items 'None'",)),
        (lambda eng, q, w: eng.add([CropItem(w.query, None)]), ("items[0]", "metadata None")),  # type: ignore[arg-type]
        (lambda eng, q, w: eng.add([CropItem(None, {})]), ("items[0]: path None",)),  # type: ignore[arg-type]
        (lambda eng, q, w: eng.add([CropItem(w.query, {}, image="abc")]), ("image of type str",)),  # type: ignore[arg-type]
        (lambda eng, q, w: eng.add_features(q, [CropItem(w.query, None)], hashes=["x"]), ("metadata None",)),  # type: ignore[arg-type]
        (lambda eng, q, w: Engine.open(w.index, weights=5), ("5 of type int", "expected a path")),
        (lambda eng, q, w: eng.query_features(np.vstack([q, -q]), query_cameras=["1", "2"], same_person=True,
                                              exclude_same_camera=True), ("cameras 1, 2", "exclude_cameras")),
    ],
)
def test_bad_library_search_arguments(call: Callable, needles: tuple, world: World, unchanged: None) -> None:
    with Engine.open(world.index) as eng:
        q = _unit_rows(1, eng.store.manifest.dim)
        assert_raises(InvalidInputError, lambda: call(eng, q, world), *needles)


def test_no_query_is_no_answers(world: World) -> None:
    with Engine.open(world.index) as eng:
        assert eng.query([]) == []
        assert eng.query_features(np.zeros((0, eng.store.manifest.dim), np.float32)) == []


def test_commit_every_one_adds_everything(world: World, tmp_path: Path) -> None:
    src = tmp_path / "src"
    write_crops(src, 3, seed=91)
    idx = world.copy(tmp_path / "idx")
    with Engine.open(idx) as eng:
        rep = eng.add(scan_source(src), commit_every=1)
        assert rep.added == 3 and eng.stats()["crops"] == world.baseline[0] + 3


@pytest.mark.parametrize("bad", ["", "   ", "a\x00b", None, 5])
def test_library_index_paths(bad: Any, world: World) -> None:
    assert_raises(InvalidInputError, lambda: Engine.open(bad), repr(bad) if bad is not None and bad != 5 else str(bad))
    assert_raises(
        InvalidInputError,
        lambda: Engine.create(bad, encoder="tiny-test", weights=world.weights),
        repr(bad) if bad is not None and bad != 5 else str(bad),
    )


@pytest.mark.parametrize(
    "kwargs, needles",
    [
        ({"db_url": "sqlite://"}, ("in-memory",)),
        ({"db_url": "sqlite:///file:mem1?mode=memory&uri=true"}, ("in-memory",)),
        ({"db_url": 5}, ("db_url 5", "URL text")),
        ({"db_url": "nope://"}, ("nope://",)),
        ({"backend_options": [1]}, ("backend_options [1]", "mapping")),
    ],
)
def test_library_create_options_that_cannot_keep_an_index(kwargs: dict, needles: tuple, world: World,
                                                           tmp_path: Path) -> None:
    """An in-memory database took the rows and lost them at exit; other cases raised raw TypeErrors. None leaves
    a folder behind."""
    target = tmp_path / "idx"
    assert_raises(ReidEngineError, lambda: Engine.create(target, encoder="tiny-test", weights=world.weights, **kwargs),
                  *needles)
    assert not target.exists()


# -- damaged indexes ----------------------------------------------------------------------------------------
def _edit_manifest(idx: Path, change: Callable[[dict], Any]) -> None:
    doc = json.loads((idx / "manifest.json").read_text())
    out = change(doc)
    (idx / "manifest.json").write_text(json.dumps(doc if out is None else out))


MANIFEST_DAMAGE: dict[str, tuple[Callable[[Path], None], tuple[str, ...]]] = {
    "json_list": (lambda i: _edit_manifest(i, lambda d: [d]), ("JSON object", "list")),
    "json_string": (lambda i: _edit_manifest(i, lambda d: "hello"), ("JSON object", "str")),
    "encoder_null": (lambda i: _edit_manifest(i, lambda d: d.update(encoder=None)), ("'encoder'", "None")),
    "encoder_no_name": (lambda i: _edit_manifest(i, lambda d: d.update(encoder={})), ("'encoder'", "name")),
    "encoder_text": (lambda i: _edit_manifest(i, lambda d: d.update(encoder="osnet")), ("'encoder'",)),
    "dim_text": (lambda i: _edit_manifest(i, lambda d: d.update(dim="abc")), ("'dim'", "'abc'")),
    "dim_negative": (lambda i: _edit_manifest(i, lambda d: d.update(dim=-4)), ("'dim'", "-4")),
    "dim_null": (lambda i: _edit_manifest(i, lambda d: d.update(dim=None)), ("'dim'",)),
    "dim_missing": (lambda i: _edit_manifest(i, lambda d: (d.pop("dim"), None)[1]), ("lacks dim",)),
    "db_url_null": (lambda i: _edit_manifest(i, lambda d: d.update(db_url=None)), ("'db_url'",)),
    "db_url_number": (lambda i: _edit_manifest(i, lambda d: d.update(db_url=5)), ("'db_url'",)),
    "db_driver_missing": (
        lambda i: _edit_manifest(i, lambda d: d.update(db_url="mysql+pymysql://u@h/d")),
        ("pymysql", "not installed"),
    ),
    "db_dialect_unknown": (lambda i: _edit_manifest(i, lambda d: d.update(db_url="nosuch://x")), ("nosuch",)),
    "format_version_99": (lambda i: _edit_manifest(i, lambda d: d.update(format_version=99)), ("format version 99",)),
    "format_version_missing": (
        lambda i: _edit_manifest(i, lambda d: (d.pop("format_version"), None)[1]),
        ("format version None",),
    ),
    "annotators_text": (lambda i: _edit_manifest(i, lambda d: d.update(annotators="attributes")), ("'annotators'",)),
    "hooks_number": (lambda i: _edit_manifest(i, lambda d: d.update(hooks=5)), ("'hooks'",)),
    "backend_options_list": (
        lambda i: _edit_manifest(i, lambda d: d.update(backend_options=[])),
        ("'backend_options'",),
    ),
    "generation_text": (lambda i: _edit_manifest(i, lambda d: d.update(generation="x")), ("'generation'",)),
    "backend_option_text": (
        lambda i: _edit_manifest(i, lambda d: d.update(backend_options={**d["backend_options"], "flat_limit": "x"})),
        ("flat_limit='x'", "positive integer"),
    ),
    "backend_option_nan": (
        lambda i: _edit_manifest(i, lambda d: d.update(backend_options={**d["backend_options"], "nlist_factor": "nan"})),
        ("nlist_factor='nan'", "positive number"),
    ),
    "not_json": (lambda i: (i / "manifest.json").write_text("{not json"), ("unreadable manifest",)),
    "empty_file": (lambda i: (i / "manifest.json").write_bytes(b""), ("unreadable manifest",)),
    "binary": (lambda i: (i / "manifest.json").write_bytes(b"\xff\xfe\x00garbage"), ("unreadable manifest",)),
    "is_a_folder": (lambda i: ((i / "manifest.json").unlink(), (i / "manifest.json").mkdir()), ("not a file",)),
}


@pytest.mark.parametrize("command", ["info", "query"])
@pytest.mark.parametrize("case", sorted(MANIFEST_DAMAGE))
def test_damaged_manifest(case: str, command: str, world: World, tmp_path: Path) -> None:
    idx = world.copy(tmp_path / "idx")
    damage, needles = MANIFEST_DAMAGE[case]
    damage(idx)
    before = (idx / "manifest.json").read_bytes() if (idx / "manifest.json").is_file() else None
    args = ("info",) if command == "info" else ("query", world.query)
    line = assert_cli_error(cli(*args, "--index", idx), 1, *needles)
    assert "manifest.json" in line or str(idx) in line or "pymysql" in line or "nosuch" in line
    if before is not None:
        assert (idx / "manifest.json").read_bytes() == before  # opening never rewrites what it cannot read


@pytest.mark.parametrize("recorded", [None, 5, ""])
def test_manifest_weights_path_that_is_not_a_path(recorded: Any, world: World, tmp_path: Path) -> None:
    """The encoder's recorded weights path edited to null or a number: a query asks for --weights (was TypeError)."""
    idx = world.copy(tmp_path / "idx")
    _edit_manifest(idx, lambda d: d["encoder"].update(weights_path=recorded))
    assert_cli_error(cli("query", world.query, "--index", idx), 1, str(idx), "pass --weights")
    assert_cli_ok(cli("query", world.query, "--index", idx, "--weights", world.weights))


def test_damaged_manifest_in_library_raises_typed_errors(world: World, tmp_path: Path) -> None:
    for case, (damage, needles) in MANIFEST_DAMAGE.items():
        idx = world.copy(tmp_path / case)
        damage(idx)
        with pytest.raises(ReidEngineError) as info:
            Engine.open(idx)
        assert "\n" not in str(info.value) and all(n in str(info.value) for n in needles), (case, str(info.value))


def _set_meta(idx: Path, key: str, value: Optional[str]) -> None:
    con = sqlite3.connect(idx / "crops.db")
    if value is None:
        con.execute("DELETE FROM reid_meta WHERE key = ?", (key,))
    else:
        con.execute("UPDATE reid_meta SET value = ? WHERE key = ?", (value, key))
    con.commit()
    con.close()


def _truncate(path: Path, size: int) -> None:
    with open(path, "r+b") as f:
        f.truncate(size)


def _checkpoint_wal(idx: Path) -> None:
    """Fold the WAL into crops.db so that damaging the file damages the data."""
    con = sqlite3.connect(idx / "crops.db")
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()
    for suffix in ("-wal", "-shm"):
        (idx / f"crops.db{suffix}").unlink(missing_ok=True)


DB_DAMAGE: dict[str, tuple[Callable[[Path], None], tuple[str, ...], type]] = {
    "text_file": (
        lambda i: (i / "crops.db").write_text("these are not rows\n" * 50),
        ("crops.db", "not"),
        IndexCorruptError,
    ),
    "random_bytes": (
        lambda i: (i / "crops.db").write_bytes(np.random.default_rng(1).bytes(8192)),
        ("crops.db",),
        IndexCorruptError,
    ),
    "truncated_100": (lambda i: _truncate(i / "crops.db", 100), ("crops.db",), IndexCorruptError),
    "truncated_half": (lambda i: _truncate(i / "crops.db", (i / "crops.db").stat().st_size // 2), (), ReidEngineError),
    "generation_text": (lambda i: _set_meta(i, "generation", "seven"), ("seven",), IndexCorruptError),
    "generation_missing": (lambda i: _set_meta(i, "generation", None), ("committed",), IndexCorruptError),
    "state_not_json": (lambda i: _set_meta(i, "state", "{oops"), ("state",), IndexCorruptError),
    "state_missing": (lambda i: _set_meta(i, "state", None), ("committed",), IndexCorruptError),
    "is_a_folder": (lambda i: ((i / "crops.db").unlink(), (i / "crops.db").mkdir()), ("crops.db",), ReidEngineError),
}


@pytest.mark.parametrize("command", ["info", "query"])
@pytest.mark.parametrize("case", sorted(DB_DAMAGE))
def test_damaged_database(case: str, command: str, world: World, tmp_path: Path) -> None:
    idx = world.copy(tmp_path / "idx")
    _checkpoint_wal(idx)
    damage, needles, _ = DB_DAMAGE[case]
    damage(idx)
    args = ("info",) if command == "info" else ("query", world.query)
    assert_cli_error(cli(*args, "--index", idx), 1, *needles)


@pytest.mark.parametrize("case", sorted(DB_DAMAGE))
def test_damaged_database_in_library(case: str, world: World, tmp_path: Path) -> None:
    idx = world.copy(tmp_path / "idx")
    _checkpoint_wal(idx)
    damage, needles, exc_type = DB_DAMAGE[case]
    damage(idx)
    assert_raises(exc_type, lambda: Engine.open(idx), *needles)


@contextmanager
def _read_only_folder(folder: Path) -> Iterator[None]:
    """``folder`` where no file can be made: mode 0555, or for root (who writes through modes) the immutable flag."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        try:
            yield
        finally:
            folder.chmod(0o755)
        return
    if subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode != 0:
        pytest.skip("as root, a read-only folder needs chattr +i, which this file system or process refuses")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(folder)], check=True)


def test_index_in_a_folder_sqlite_cannot_write_to(world: World, tmp_path: Path) -> None:
    """SQLite must make its -wal and -shm files even to read: the error says the folder is not writable."""
    idx = world.copy(tmp_path / "idx")
    _checkpoint_wal(idx)  # no -wal / -shm left beside crops.db
    with _read_only_folder(idx):
        for args in (("info",), ("query", world.query)):
            assert_cli_error(cli(*args, "--index", idx), 1, str(idx), "not writable", "crops.db")
        assert_raises(DatabaseUnavailableError, lambda: Engine.open(idx), str(idx), "not writable")
    assert world.snapshot(idx) == world.baseline


def test_a_database_file_opened_read_only_is_named(tmp_path: Path) -> None:
    """A read-only SQLite database (here a read-only URI) is named as such, not as 'cannot use the database'."""
    path = tmp_path / "crops.db"
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE t (x)")
    con.close()
    url = f"sqlite:///file:{path}?mode=ro&uri=true"
    assert_raises(DatabaseUnavailableError, lambda: db.connect(url, wal=True), "crops.db is read-only")


# -- videos -----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("videos")
    full = write_video(folder / "full.avi", 70)
    short = write_video(folder / "short.avi", 30)
    cut = folder / "cut.avi"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    return {"full": full, "short": short, "cut": cut}


def _ingest(engine: Engine, video: Path, **kw: Any) -> Any:
    kw.setdefault("checkpoint_frames", 20)
    return ingest_video(
        engine, video, "cam9", detector=StubDetector(), show_progress=False, start_time="2024-01-01T00:00:00", **kw
    )


def test_a_video_replaced_by_a_longer_one_is_ingested_again(
    videos: dict[str, Path], world: World, tmp_path: Path
) -> None:
    ref_idx = world.copy(tmp_path / "ref")
    with Engine.open(ref_idx) as eng:
        full = _ingest(eng, videos["full"])
        assert full.done and full.crops > 0
        ref = sorted((r["frame"], r["sha256"]) for r in _rows(ref_idx).values() if r["source"])
    idx = world.copy(tmp_path / "idx")
    path = tmp_path / "camera.avi"
    shutil.copy(videos["short"], path)
    with Engine.open(idx) as eng:
        first = _ingest(eng, path)
        assert first.done and 0 < first.crops < full.crops
        shutil.copy(videos["full"], path)  # the same path now holds the whole footage
        again = _ingest(eng, path)
        assert not again.already_done and again.done and again.replaced == first.crops
        assert "replaced" in again.summary()
        same = _ingest(eng, path)
        assert same.already_done
        os.utime(path, (1, 1))  # touching the file does not change its content
        assert _ingest(eng, path).already_done
    got = sorted((r["frame"], r["sha256"]) for r in _rows(idx).values() if r["source"])
    assert got == ref


def test_ingest_checkpoints_by_elapsed_time(videos: dict[str, Path], world: World, tmp_path: Path) -> None:
    idx = world.copy(tmp_path / "idx")

    class Killed(Exception):
        pass

    def observer(frame: int, dets: Any, tracked: Any) -> None:
        if frame == 25:
            raise Killed()

    with Engine.open(idx) as eng:
        with pytest.raises(Killed):
            _ingest(eng, videos["full"], checkpoint_frames=10_000, checkpoint_seconds=1e-6, observer=observer)
        with eng.store.sql.connect() as conn:
            row = conn.execute(sa.select(db.ingest_sources)).mappings().one()
    assert row["next_frame"] == 25  # every frame was committed: nothing but the frame in work is lost


def test_truncated_video_file_does_not_crash(videos: dict[str, Path], world: World, tmp_path: Path) -> None:
    idx = world.copy(tmp_path / "idx")
    with Engine.open(idx) as eng:
        try:
            rep = _ingest(eng, videos["cut"])
        except ReidEngineError as exc:
            assert "cut.avi" in str(exc) and "\n" not in str(exc)
        else:
            assert rep.done


@pytest.mark.parametrize(
    "kwargs, needles",
    [
        ({"every": 0}, ("every 0",)),
        ({"start_frame": -1}, ("frame range",)),
        ({"start_frame": 10, "end_frame": 5}, ("frame range",)),
        ({"max_frames": 0}, ("max_frames 0",)),
        ({"checkpoint_frames": 0}, ("checkpoint_frames",)),
        ({"checkpoint_seconds": 0}, ("checkpoint_seconds 0",)),
        ({"checkpoint_seconds": "60"}, ("checkpoint_seconds '60'",)),
        ({"fps": -1.0}, ("fps -1.0",)),
        ({"fps": float("nan")}, ("fps nan", "frame rate")),
        ({"fps": float("inf")}, ("fps inf", "frame rate")),
        ({"fps": 1e-300}, ("fps 1e-300", "frame rate")),
        ({"every": 2**40}, ("every 1099511627776",)),
        ({"start_time": 1e20}, ("1e+20", "years 1 and 9999")),
        ({"start_time": "nan"}, ("'nan'",)),
        ({"start_time": "last tuesday"}, ("'last tuesday'",)),
    ],
)
def test_bad_ingest_arguments(
    kwargs: dict, needles: tuple, videos: dict[str, Path], world: World, unchanged: None
) -> None:
    kwargs = dict(kwargs)
    start = kwargs.pop("start_time", "2024-01-01T00:00:00")
    with Engine.open(world.index) as eng:
        assert_raises(
            InvalidInputError,
            lambda: ingest_video(
                eng, videos["full"], "cam9", detector=StubDetector(), show_progress=False, start_time=start, **kwargs
            ),
            *needles,
        )


@pytest.mark.parametrize(
    "video, needles",
    [
        ("missing", ("no such file", "expected a video file")),
        ("text", ("OpenCV cannot open",)),
        ("empty", ("empty.avi",)),
    ],
)
def test_bad_video_files_through_the_cli(
    video: str, needles: tuple, world: World, tmp_path: Path, unchanged: None
) -> None:
    path = {
        "missing": tmp_path / "missing.avi",
        "text": _write(tmp_path / "text.avi", b"not a video\n" * 20),
        "empty": _write(tmp_path / "empty.avi", b""),
    }[video]
    assert_cli_error(cli("ingest", path, "--index", world.index), 1, path.name, *needles)


@pytest.mark.parametrize(
    "case, code, needles",
    [
        ("missing", 1, ("missing.avi", "no such file")),
        ("text", 1, ("text.avi", "OpenCV cannot open")),
        ("start_time", 1, ("'soon'",)),
        ("camera", 2, ("--camera", "empty")),
    ],
)
def test_ingest_that_cannot_start_makes_no_new_index(
    case: str, code: int, needles: tuple, videos: dict[str, Path], world: World, tmp_path: Path
) -> None:
    """A wrong video path (or start time) used to leave an empty new index behind."""
    video, extra = {
        "missing": (tmp_path / "missing.avi", ()),
        "text": (_write(tmp_path / "text.avi", b"not a video\n" * 20), ()),
        "start_time": (videos["short"], ("--start-time", "soon")),
        "camera": (videos["short"], ("--camera", "")),
    }[case]
    target = tmp_path / "new_idx"
    res = cli("ingest", video, "--index", target, "--encoder", "tiny-test", "--weights", world.weights, *extra)
    assert_cli_error(res, code, *needles)
    assert not target.exists()


@pytest.mark.parametrize(
    "args, code, needles",
    [
        (("--fps", "0"), 2, ("--fps",)),
        (("--every", "0"), 2, ("--every",)),
        (("--start-frame", "-1"), 2, ("--start-frame",)),
        (("--start-time", "nan"), 1, ("'nan'",)),
        (("--start-time", "not a time"), 1, ("'not a time'",)),
        (("--start-time", "1e20"), 1, ("'1e20'", "years 1 and 9999")),
        (("--fps", "nan"), 1, ("fps nan", "frame rate")),
        (("--fps", "1e308"), 1, ("fps 1e+308", "frame rate")),
        (("--every", "99999999999999999999"), 1, ("every 99999999999999999999",)),
    ],
)
def test_bad_ingest_options(
    args: tuple, code: int, needles: tuple, videos: dict[str, Path], world: World, unchanged: None
) -> None:
    assert_cli_error(
        cli("ingest", videos["full"], "--index", world.index, "--detector", "no-such", *args), code, *needles
    )


def test_rows_with_times_outside_the_calendar_are_still_listed(world: World, tmp_path: Path) -> None:
    """Rows written before times were range-checked: info and a text query list them (they raised before)."""
    idx = world.copy(tmp_path / "idx")
    _checkpoint_wal(idx)
    con = sqlite3.connect(idx / "crops.db")
    con.execute("UPDATE crops SET timestamp = 1e20 WHERE id = (SELECT MIN(id) FROM crops)")
    con.execute("UPDATE crops SET timestamp = -1e12 WHERE id = (SELECT MAX(id) FROM crops)")
    con.commit()
    con.close()
    assert "1e+20" in assert_cli_ok(cli("info", "--index", idx))
    out = assert_cli_ok(cli("query", world.query, "--index", idx, "-k", "6", "--rerank", "none"))
    assert "1e+20" in out and "-1e+12" in out


NO_USER = "~reid-engine-no-such-user"


@pytest.mark.parametrize(
    "args, code",
    [
        (("info", "--index", f"{NO_USER}/idx"), 1),
        (("query", "QUERY", "--index", "INDEX", "--weights", f"{NO_USER}/w.onnx"), 2),  # a path option: usage
        (("ingest", f"{NO_USER}/v.avi", "--index", "INDEX"), 1),
    ],
)
def test_a_path_for_a_user_that_does_not_exist(args: tuple, code: int, world: World, unchanged: None) -> None:
    """``~name/...`` with no user ``name``: one line naming the path (pathlib raised RuntimeError)."""
    swap = {"QUERY": world.query, "INDEX": world.index, "WEIGHTS": world.weights}
    res = cli(*[swap.get(a, a) for a in args])
    assert_cli_error(res, code, NO_USER, "no user")


def test_a_path_for_a_user_that_does_not_exist_in_the_library_and_environment(
    world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert_raises(InvalidInputError, lambda: Engine.open(f"{NO_USER}/idx"), NO_USER, "no user")
    lines = ["file,pid,camid,role"] + [
        f"{p},{p.name[:4]},{p.name[6]},{'query' if p.name[6] == '1' else 'gallery'}"
        for p in sorted(world.gallery.glob("*.png"))
    ]
    protocol = _write(tmp_path / "protocol.csv", ("\n".join(lines) + "\n").encode())
    monkeypatch.setenv("REID_ENGINE_CACHE", f"{NO_USER}/cache")
    res = cli("eval", protocol, "--encoder", "tiny-test", "--weights", world.weights)
    assert_cli_error(res, 1, NO_USER, "no user")


@pytest.mark.parametrize(
    "args, needles",
    [
        (("--max-upload-mb", "nan"), ("--max-upload-mb nan",)),
        (("--host", "no such host!!"), ("--host 'no such host!!'", "resolves")),
        (("--device", "cuda:9"), ("'cuda:9'",)),
        (("--port", "BUSY"), ("cannot listen on 127.0.0.1:", "in use")),
    ],
)
def test_serve_refuses_before_it_starts(
    args: tuple, needles: tuple, world: World, monkeypatch: pytest.MonkeyPatch, unchanged: None
) -> None:
    """Bad settings end in one line before the server starts (uvicorn printed its own log and exited 3;
    a device or upload size it could not use failed at the first request)."""
    import socket

    import uvicorn

    from reid_engine.encoders import base

    if "cuda:9" in args and base._nvidia_driver():
        pytest.skip("an NVIDIA driver is loaded here")
    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: pytest.fail("the server was started"))
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        args = tuple(str(busy.getsockname()[1]) if a == "BUSY" else a for a in args)
        assert_cli_error(cli("serve", "--index", world.index, *args), 1, *needles)


@pytest.mark.parametrize("detector", ["onnx-ssd", "openvino-ssd"])
def test_detector_weights_that_are_not_a_detector(
    detector: str, shared: Path, osnet_onnx: Path, videos: dict[str, Path], world: World, unchanged: None
) -> None:
    """A real model whose output is not SSD detections (here a ReID encoder) is refused when the detector is
    built, naming the file and the shape (it was a reshape ValueError at the first frame)."""
    weights = osnet_onnx if detector == "onnx-ssd" else (
        shared / "weights" / "intel" / "person-reidentification-retail-0277" / "FP16"
        / "person-reidentification-retail-0277.xml")
    if not weights.is_file():
        pytest.skip(f"no {weights}")
    res = cli("ingest", videos["short"], "--index", world.index, "--detector", detector,
              "--detector-weights", weights, "--start-time", "2024-01-01")
    assert_cli_error(res, 1, weights.name, "model output of shape", "SSD detections")


@pytest.mark.parametrize("where", ["encoder", "detector", "attribute_model"])
def test_text_named_as_an_openvino_model_is_refused_before_openvino_reads_it(
    where: str, osnet_onnx: Path, videos: dict[str, Path], world: World, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str],
) -> None:
    """OpenVINO offers a file it cannot place to every front end, and the TensorFlow one printed absl and
    protobuf errors to stderr before the one-line error; such files are refused first."""
    text = _write(tmp_path / "model.xml", b"root:x:0:0\n")
    _write(tmp_path / "model.bin", bytes(64))  # an IR's pair is there: only the .xml is wrong
    capfd.readouterr()
    if where == "encoder":
        res = cli("index", world.gallery, "--index", tmp_path / "new", "--weights", text)
        needles: tuple[str, ...] = (str(text), "not an OpenVINO IR")
    elif where == "detector":
        res = cli("ingest", videos["short"], "--index", world.index, "--detector", "openvino-ssd",
                  "--detector-weights", text, "--start-time", "2024-01-01")
        needles = (str(text), "not an OpenVINO IR")
    else:
        passwd = _write(tmp_path / "passwd", b"root:x:0:0\n")
        monkeypatch.setenv("REID_ENGINE_ATTRIBUTE_MODEL", str(passwd))
        res = cli("index", world.gallery, "--index", tmp_path / "new", "--weights", osnet_onnx, "--attributes")
        needles = (str(passwd), "expected an OpenVINO IR")
    assert_cli_error(res, 1, *needles)
    assert "text_format" not in capfd.readouterr().err


@pytest.mark.parametrize("address", ["garbage://x", "no port", "http://head:10001"])
def test_ray_address_that_is_no_address(address: str, world: World, tmp_path: Path, unchanged: None) -> None:
    """Refused before Ray is started (Ray printed two tracebacks of its own)."""
    src = tmp_path / "src"
    write_crops(src, 2, seed=17)
    res = cli("index", src, "--index", world.index, "--ray", address)
    assert_cli_error(res, 1, repr(address), "ray://HOST:PORT")


@pytest.mark.parametrize("value", ["abc", "nan", "-1", "10s"])
def test_lock_timeout_setting_that_is_no_number_of_seconds(
    value: str, world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A writer names the setting (it fell back to 10 s without a word); readers never read it."""
    idx = world.copy(tmp_path / "idx")
    src = tmp_path / "src"
    write_crops(src, 2, seed=23)
    monkeypatch.setenv("REID_ENGINE_LOCK_TIMEOUT", value)
    assert_cli_error(cli("index", src, "--index", idx), 1, f"REID_ENGINE_LOCK_TIMEOUT={value!r}", "seconds")
    assert_cli_ok(cli("info", "--index", idx))
    assert world.snapshot(idx) == world.baseline


# Cases for the storage owner to add once the segment format lands (vector / neighbour files):
def _segment(idx: Path, suffix: str) -> Path:
    """The (first) committed segment file of the index with this suffix."""
    state = json.loads(_get_meta(idx, "state"))
    files = sorted(p for p in idx.glob(f"seg-*{suffix}") if p.name.split(".")[0] in json.dumps(state))
    assert files, f"no committed segment file *{suffix} in {idx}"
    return files[0]


def _get_meta(idx: Path, key: str) -> str:
    con = sqlite3.connect(idx / "crops.db")
    (value,) = con.execute("SELECT value FROM reid_meta WHERE key = ?", (key,)).fetchone()
    con.close()
    return str(value)


def _edit_state(idx: Path, change: Callable[[dict], None]) -> None:
    state = json.loads(_get_meta(idx, "state"))
    change(state)
    _set_meta(idx, "state", json.dumps(state))


def _rewrite_npy(path: Path, arr: np.ndarray) -> None:
    with open(path, "wb") as f:
        np.save(f, arr)


VECTOR_DAMAGE: dict[str, tuple[Callable[[Path], None], tuple[str, ...]]] = {
    "vectors_truncated_half": (
        lambda i: _truncate(_segment(i, ".vec.npy"), _segment(i, ".vec.npy").stat().st_size // 2), ("seg-",)),
    "vectors_truncated_to_header": (lambda i: _truncate(_segment(i, ".vec.npy"), 64), ("seg-",)),
    "vectors_random_bytes": (
        lambda i: _segment(i, ".vec.npy").write_bytes(np.random.default_rng(2).bytes(4096)), ("seg-",)),
    "vectors_other_dimension": (
        lambda i: _rewrite_npy(_segment(i, ".vec.npy"), np.zeros((world_rows(i), 7), np.float32)), ("seg-",)),
    "vectors_missing": (lambda i: _segment(i, ".vec.npy").unlink(), ("seg-",)),
    "ids_missing": (lambda i: _segment(i, ".ids.npy").unlink(), ("seg-",)),
    "ids_random_bytes": (lambda i: _segment(i, ".ids.npy").write_bytes(b"\x93NUMPY garbage"), ("seg-",)),
    "segment_json_not_json": (lambda i: _segment(i, ".json").write_text("{oops"), ("seg-",)),
    "state_segment_count_text": (
        lambda i: _edit_state(i, lambda s: s["backend"]["segments"][0].update(rows="many")), ("state",)),
    "state_names_unknown_segment": (
        lambda i: _edit_state(i, lambda s: s["backend"]["segments"][0].update(name="seg-999999-dead")), ("seg-",)),
    "state_backend_not_object": (lambda i: _edit_state(i, lambda s: s.update(backend=[1, 2])), ("state",)),
}


def world_rows(idx: Path) -> int:
    return int(np.load(_segment(idx, ".vec.npy"), mmap_mode="r").shape[0])


@pytest.mark.parametrize("case", sorted(VECTOR_DAMAGE))
def test_damaged_vector_files(case: str, world: World, tmp_path: Path) -> None:
    idx = world.copy(tmp_path / "idx")
    _checkpoint_wal(idx)
    damage, needles = VECTOR_DAMAGE[case]
    damage(idx)
    files_before = {p.name: p.read_bytes() for p in idx.iterdir() if p.is_file() and not p.name.startswith("crops.db")}
    assert_cli_error(cli("query", world.query, "--index", idx), 1, *needles)
    assert_raises(IndexCorruptError, lambda: Engine.open(idx).query_features(np.ones((1, 16), np.float32)), *needles)
    files_after = {p.name: p.read_bytes() for p in idx.iterdir() if p.is_file() and not p.name.startswith("crops.db")}
    assert files_after == files_before  # a reader never "repairs" (deletes or rewrites) what it cannot read


# -- a second sweep through the CLI (2026-12-02) -------------------------------------------------------------
def test_a_loop_of_symbolic_links_is_named_not_a_traceback(world: World, tmp_path: Path, unchanged: None) -> None:
    (tmp_path / "loopA").symlink_to(tmp_path / "loopB")
    (tmp_path / "loopB").symlink_to(tmp_path / "loopA")
    loop = tmp_path / "loopA"
    assert_cli_error(cli("ingest", loop, "--index", world.index), 1, "loopA", "loop of symbolic links")
    res = cli("index", world.gallery, "--index", loop / "idx", "--encoder", "tiny-test", "--weights", world.weights)
    assert_cli_error(res, 1, "loopA", "loop of symbolic links")
    assert_cli_error(cli("query", loop, "--index", world.index), 1, "loopA", "symbolic links")


def test_compact_that_cannot_delete_an_old_segment_file_still_compacts(world: World, tmp_path: Path) -> None:
    """The merge was committed, then deleting a replaced file raised a PermissionError traceback."""
    idx = world.copy(tmp_path / "idx")
    first_id = world.baseline[1][0][0]
    assert_cli_ok(cli("remove", "--index", idx, "--id", first_id))
    old = sorted(idx.glob("seg-*"))
    for p in old:
        os.utime(p, (1e9, 1e9))  # past the grace period that spares files a reader may still map
    locked = [p for p in old if p.name.endswith(".vec.npy")]
    if os.geteuid() != 0 or subprocess.run(["chattr", "+i", *map(str, locked)], capture_output=True).returncode:
        pytest.skip("needs root and chattr +i to make a file that cannot be deleted")
    try:
        assert_cli_ok(cli("compact", "--index", idx))
    finally:
        subprocess.run(["chattr", "-i", *map(str, locked)], check=True)
    n, hits = world.snapshot(idx)
    assert n == world.baseline[0] - 1 and first_id not in [i for i, _ in hits]


def test_convert_weights_refuses_an_empty_model_and_its_own_input(tmp_path: Path) -> None:
    pytest.importorskip("onnx")
    empty = _write(tmp_path / "empty.onnx", b"")
    assert_cli_error(cli("convert-weights", empty, "--out", tmp_path / "o.pth"), 1, "empty.onnx", "no inputs")
    model = _write(tmp_path / "m.onnx", b"not really a model")
    res = cli("convert-weights", model, "--out", model, "--force", "--no-verify")
    assert_cli_error(res, 1, "m.onnx", "is the ONNX file being converted")
    assert model.read_bytes() == b"not really a model"


@pytest.mark.parametrize("token", [" ", "two words"])
def test_serve_refuses_a_token_no_header_can_carry(token: str, world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """A blank token said "writes on" but every write then got a 401."""
    uvicorn = pytest.importorskip("uvicorn")
    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: pytest.fail("the server started with that token"))
    assert_cli_error(cli("serve", "--index", world.index, "--port", "0", "--token", token), 1, "token", "spaces")


@pytest.mark.parametrize(
    "text, needles",
    [
        ("file,camid,camid\nIMG,1,7\n", ("'camid'", "more than once")),  # the last one won
        ("file,pid\nIMG,1,extra\n", ("list.csv:2", "more cell(s) than the header")),  # dropped
    ],
)
def test_csv_columns_that_do_not_line_up(text: str, needles: tuple, world: World, tmp_path: Path) -> None:
    img = _write(tmp_path / "m" / "0001_c1s1_000101_00.png", real_png(90))
    manifest = _write(tmp_path / "m" / "list.csv", text.replace("IMG", img.name).encode())
    target = tmp_path / "new_idx"
    res = cli("index", manifest, "--index", target, "--encoder", "tiny-test", "--weights", world.weights)
    assert_cli_error(res, 1, *needles)
    protocol = _write(tmp_path / "m" / "list.csv", text.replace("IMG", img.name).replace("file,", "file,role,")
                      .replace(f"{img.name},", f"{img.name},query,").replace("camid,camid", "pid,pid")
                      .replace("file,role,pid\n", "file,role,pid,camid\n").encode())
    assert_raises(InvalidInputError, lambda: read_dataset(protocol), "list.csv")


@pytest.mark.parametrize("value", ["", "   "])
def test_blank_environment_values_count_as_unset(value: str, world: World, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """REID_ENGINE_INDEXES=' ' built the index in a folder named ' ' (and '' in the current folder)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("REID_ENGINE_INDEXES", value)
    monkeypatch.setenv("REID_ENGINE_CACHE", value)
    assert_cli_ok(cli("index", world.gallery, "--index", "foo", "--encoder", "tiny-test", "--weights", world.weights))
    assert (tmp_path / "indexes" / "foo" / "manifest.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["indexes"]
    from reid_engine.eval.cache import default_cache_dir

    assert default_cache_dir() == Path.home() / ".cache" / "reid-engine" / "embeddings"


def test_a_glob_that_leaves_the_folder_is_refused(world: World, tmp_path: Path, unchanged: None) -> None:
    """Crops found through '..' were stored with this folder as their source (a later remove --source took them)."""
    (tmp_path / "inner").mkdir()
    res = cli("index", tmp_path / "inner", "--index", world.index, "--glob", f"../{world.gallery.name}/*")
    assert_cli_error(res, 1, "'../", "no '..'")


def test_image_names_that_lead_nowhere_are_counted_as_unreadable(world: World, tmp_path: Path) -> None:
    src = tmp_path / "src"
    write_crops(src, 1, seed=95)
    (src / "dangling.png").symlink_to(tmp_path / "nothing-here.png")
    target = tmp_path / "new_idx"
    out = assert_cli_ok(cli("index", src, "--index", target, "--encoder", "tiny-test", "--weights", world.weights,
                            "--json"))
    doc = json.loads(out)
    assert [Path(f["path"]).name for f in doc["failed"]] == ["dangling.png"]
    res = cli("index", src, "--index", tmp_path / "strict_idx", "--encoder", "tiny-test", "--weights", world.weights,
              "--strict")
    assert_cli_error(res, 1, "dangling.png")


@pytest.mark.parametrize(
    "args, needles",
    [
        (("--factory", "HNSW16"), ("factory 'HNSW16'", "the index has 'auto'")),
        (("--nprobe", "5"), ("search_params",)),
        (("--backend", "milvus"), ("backend 'milvus'",)),
        (("--db-url", "sqlite:////tmp/elsewhere.db"), ("db_url",)),
    ],
)
def test_new_index_options_on_an_existing_index_are_refused(args: tuple, needles: tuple, world: World,
                                                            tmp_path: Path, unchanged: None) -> None:
    """They were dropped without a word (exit 0, the index kept its own)."""
    src = tmp_path / "src"
    write_crops(src, 1, seed=97)
    res = cli("index", src, "--index", world.index, *args)
    assert_cli_error(res, 1, str(world.index), "already exists", *needles)


def test_a_resumed_ingest_keeps_to_where_it_stopped(videos: dict[str, Path], world: World, tmp_path: Path) -> None:
    """A second run with another --start-frame continued the first run from where it stopped, up to the new
    --end-frame (398 frames where 3 were asked); the same command again must still resume."""
    idx = world.copy(tmp_path / "idx")
    with Engine.open(idx) as eng:
        first = _ingest(eng, videos["full"], start_frame=10, max_frames=5)
        assert first.frames == 5
        assert_raises(InvalidInputError, lambda: _ingest(eng, videos["full"], start_frame=40, end_frame=43),
                      "stopped at frame 15", "cannot start at frame 40")
        again = _ingest(eng, videos["full"], start_frame=10, max_frames=5)  # the first command, repeated
        assert again.resumed_from == 15 and again.frames == 5
        more = _ingest(eng, videos["full"], max_frames=5)  # no start frame: where it stopped
        assert more.resumed_from == 20
        assert_raises(InvalidInputError, lambda: _ingest(eng, videos["short"], start_frame=500),
                      "start frame 500", "30 frames")


def test_a_first_command_that_fails_leaves_no_empty_index(world: World, videos: dict[str, Path],
                                                         tmp_path: Path) -> None:
    """A new index made by a command that then failed stayed behind empty, and refused the retry with another
    encoder ("encoder does not match the index")."""
    target = tmp_path / "new_idx"
    res = cli("ingest", videos["short"], "--index", target, "--encoder", "tiny-test", "--weights", world.weights,
              "--detector-weights", world.weights, "--max-frames", "2")
    assert_cli_error(res, 1)
    assert not target.exists()
    src = tmp_path / "src"
    _write(src / ("p" * 80 + ".png"), real_png(99))
    res = cli("index", src, "--index", target, "--encoder", "tiny-test", "--weights", world.weights,
              "--pattern", r"(?P<pid>.+)\.png")
    assert_cli_error(res, 1, "pid", "64")  # the file name is longer than a pid may be
    assert not target.exists()
    assert_cli_ok(cli("index", src, "--index", target, "--encoder", "tiny-test", "--weights", world.weights))
    assert (target / "manifest.json").is_file()


def test_options_that_would_be_dropped_are_refused(world: World, tmp_path: Path) -> None:
    """A misspelt --pattern group, and --cache-dir beside --no-cache, were ignored without a word."""
    src = tmp_path / "src"
    write_crops(src, 1, seed=98)
    res = cli("index", src, "--index", tmp_path / "n", "--encoder", "tiny-test", "--weights", world.weights,
              "--pattern", r"(?P<cam>\d+)")
    assert_cli_error(res, 1, "unknown group(s) cam", "camera")
    csv_path = _csv_world(tmp_path, EVAL_GOOD)
    res = cli("eval", csv_path, "--encoder", "tiny-test", "--weights", world.weights, "--no-cache",
              "--cache-dir", tmp_path / "c")
    assert_cli_error(res, 2, "--cache-dir", "--no-cache")


def test_a_source_named_by_a_relative_path_matches_its_crops(world: World, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Sources are recorded as absolute paths, so `--source gallery` matched nothing."""
    idx = world.copy(tmp_path / "idx")
    monkeypatch.chdir(world.gallery.parent)
    out = assert_cli_ok(cli("query", world.query, "--index", idx, "--source", world.gallery.name, "--json",
                            "--rerank", "none"))
    assert len(json.loads(out)["queries"][0]["hits"]) == world.baseline[0]
    out = assert_cli_ok(cli("remove", "--index", idx, "--source", world.gallery.name, "--json"))
    assert json.loads(out)["removed"] == world.baseline[0]


def test_an_unreachable_stream_is_one_line_not_ffmpeg_chatter(tmp_path: Path, shared: Path) -> None:
    """FFmpeg printed its own "[tcp @ 0x...] Connection ... refused" line before the engine's error."""
    env = {**os.environ, "REID_ENGINE_SHARED": str(shared)}
    env.pop("OPENCV_FFMPEG_LOGLEVEL", None)
    res = subprocess.run(
        [sys.executable, "-m", "reid_engine.cli", "ingest", "rtsp://127.0.0.1:1/x", "--index", str(tmp_path / "idx")],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert res.returncode == 1, res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip() and not ln.startswith(("WARNING", "INFO"))]
    assert lines == [lines[0]] and lines[0].startswith("Error: rtsp://127.0.0.1:1/x"), res.stderr
    assert not (tmp_path / "idx").exists()


# -- a sweep through eval (2026-12-02) ---------------------------------------------------------------------
def _market(root: Path, with_query: bool = True) -> Path:
    for pid in (1, 2):
        for cam in (1, 2):
            _write(root / "bounding_box_test" / f"{pid:04d}_c{cam}s1_000{pid}{cam}0_00.png", real_png(pid * 10 + cam))
        if with_query:
            _write(root / "query" / f"{pid:04d}_c3s1_000{pid}30_00.png", real_png(pid * 10 + 3))
    return root


def test_a_release_missing_its_query_folder_is_not_read_as_one_person(tmp_path: Path) -> None:
    """Market-1501 without query/ was read as a folder per person: 'bounding_box_test' became the only person and
    every metric came out 100."""
    root = _market(tmp_path / "market", with_query=False)
    assert_raises(InvalidInputError, lambda: read_dataset(root, query_cameras=["1"]), str(root), "not a dataset")
    assert_raises(InvalidInputError, lambda: read_dataset(root, "folders", query_cameras=["1"]),
                  "not a folders layout")


def test_an_explicit_format_must_match_the_layout(tmp_path: Path) -> None:
    """--format msmt17 on a Market folder raised StopIteration; --format folders on a CSV NotADirectoryError."""
    root = _market(tmp_path / "market")
    assert_raises(InvalidInputError, lambda: read_dataset(root, "msmt17"), "not a msmt17 layout")
    csv_path = _write(tmp_path / "p.csv", b"file,pid,camid,role\n")
    assert_raises(InvalidInputError, lambda: read_dataset(csv_path, "folders"), "not a folders layout")


def test_msmt17_lists_that_are_not_utf8(tmp_path: Path) -> None:
    root = tmp_path / "msmt"
    name = "0000/0000_001_01_0303morning_0015_0.jpg"
    _write(root / "test" / name, real_png(3))
    _write(root / "list_query.txt", f"{name} 0\n".encode() + b"\xe9\n")
    _write(root / "list_gallery.txt", f"{name} 0\n".encode())
    assert_raises(InvalidInputError, lambda: read_dataset(root), "list_query.txt", "not UTF-8")


def test_images_beside_the_person_folders_are_refused_not_skipped(tmp_path: Path) -> None:
    root = tmp_path / "fold"
    for role in ("query", "gallery"):
        for pid in ("0001", "0002"):
            _write(root / role / pid / f"{pid}_c{1 if role == 'query' else 2}_a.png", real_png(int(pid)))
    assert len(read_dataset(root).query) == 2
    _write(root / "query" / "0009_c1_loose.png", real_png(9))
    assert_raises(InvalidInputError, lambda: read_dataset(root), "0009_c1_loose.png", "outside any person folder")


def test_label_clashes_say_which_labels_and_where(tmp_path: Path) -> None:
    root = tmp_path / "mixcam"
    _write(root / "0001" / "cam01_a.png", real_png(1))
    _write(root / "0001" / "c1_b.png", real_png(2))
    _write(root / "0002" / "cam2_a.png", real_png(3))
    assert_raises(InvalidInputError, lambda: read_dataset(root, query_cameras=["1"]),
                  str(root), "camera labels '01' and '1'")


def test_a_dataset_named_by_dot_dot_is_named_by_its_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`eval ..` named the dataset '..', so --visualize wrote its report into the current folder."""
    root = _market(tmp_path / "market")
    (root / "wd").mkdir()
    monkeypatch.chdir(root / "wd")
    assert read_dataset("..").name == "market"


def test_eval_sweep_refuses_the_options_it_would_ignore(world: World, tmp_path: Path) -> None:
    csv_path = _csv_world(tmp_path, EVAL_GOOD)
    base = ("eval", csv_path, "--encoder", "tiny-test", "--weights", world.weights, "--no-cache", "--sweep")
    for extra in (("--exclude-same-camera",), ("--report", tmp_path / "r"), ("--visualize", "2")):
        assert_cli_error(cli(*base, *extra), 2, extra[0], "not with --sweep")
    assert not (tmp_path / "r").exists()


def test_a_damaged_embedding_cache_is_one_line(tmp_path: Path) -> None:
    from reid_engine.eval.cache import EmbeddingCache

    cache = EmbeddingCache(tmp_path / "c", "tiny-test", "ab" * 32)
    rng = np.random.default_rng(0)
    cache.put([f"{i:064x}" for i in range(400)], rng.standard_normal((400, 64)).astype(np.float32))
    data = bytearray(cache.path.read_bytes())
    for page in range(2, len(data) // 4096):
        data[page * 4096 : page * 4096 + 300] = b"\xff" * 300  # every page past the schema's
    cache.path.write_bytes(bytes(data))
    assert_raises(InvalidInputError, lambda: cache.get([f"{i:064x}" for i in range(400)]),
                  str(cache.path), "damaged", "--no-cache")


def test_lower_bound_metrics_say_so_in_the_table() -> None:
    from reid_engine.eval.report import format_table

    report = {
        "metrics": {"rank1": 50.0, "mAP": 40.0, "mINP": 10.0, "num_valid": 2, "num_skipped": 0},
        "dataset": {"name": "big", "num_query": 2, "num_gallery": 6000, "num_ids": 2, "num_cameras": 2},
        "settings": {"k": 100, "exact": False},
    }
    assert "mAP and mINP are lower bounds" in format_table(report) and "-k 6000" in format_table(report)
    report["settings"]["exact"] = True
    assert "lower bounds" not in format_table(report)


def test_report_thumbnails_follow_the_file(tmp_path: Path) -> None:
    """Thumbnails were kept by path: a replaced image still showed its old picture."""
    from reid_engine.eval.visualize import _thumbnail

    src = _write(tmp_path / "a.png", real_png(1))
    first = _thumbnail(src, tmp_path, 64)
    assert _thumbnail(src, tmp_path, 64) == first  # written once
    src.write_bytes(real_png(2, h=40))
    os.utime(src, ns=(src.stat().st_atime_ns, src.stat().st_mtime_ns + 10**9))
    assert _thumbnail(src, tmp_path, 64) != first


# -- a sweep through footage (2026-12-02) ------------------------------------------------------------------
def _footage_rows(eng: Engine) -> list[dict]:
    with eng.store.sql.connect() as conn:
        return [dict(r) for r in conn.execute(sa.select(db.crops).order_by(db.crops.c.id)).mappings()]


def test_videos_with_long_file_names_are_ingested(videos: dict[str, Path], world: World, tmp_path: Path) -> None:
    """The track key camera/stem/N outgrew its column at the first commit for stems past about 62 characters."""
    idx = world.copy(tmp_path / "idx")
    long_name = tmp_path / ("Front_Entrance_Camera_01_2024-05-01T10-00-00Z_to_2024-05-01T11-00-00Z" * 1 + ".avi")
    shutil.copy(videos["short"], long_name)
    with Engine.open(idx) as eng:
        rep = ingest_video(eng, long_name, None, detector=StubDetector(), show_progress=False)
        assert rep.crops > 0
        tracks = {r["track"] for r in _footage_rows(eng) if r["track"]}
        assert tracks and all(len(t) <= db.TEXT_LIMITS["track"] for t in tracks)
        too_long = tmp_path / ("x" * 130 + ".avi")
        shutil.copy(videos["short"], too_long)
        assert_raises(InvalidInputError, lambda: ingest_video(eng, too_long, None, detector=StubDetector()),
                      "longer than 128", "pass a shorter camera name")
        comma = tmp_path / "lobby,east.avi"  # a camera no filter could select (they take comma-separated names)
        shutil.copy(videos["short"], comma)
        assert_raises(InvalidInputError, lambda: ingest_video(eng, comma, None, detector=StubDetector()),
                      "'lobby,east'", "comma")
        one = _unit_rows(1, eng.store.manifest.dim)
        comma_item = [CropItem(tmp_path / "c.png", {"camera": "a,b"})]
        assert_raises(InvalidInputError, lambda: eng.add_features(one, comma_item, hashes=["c"]), "'a,b'", "comma")


def test_a_video_replaced_at_its_path_is_not_shown_as_the_indexed_crops(videos: dict[str, Path], world: World,
                                                                       tmp_path: Path) -> None:
    """Another recording copied over the indexed file was served as the crops' pixels (200, wrong person)."""
    from reid_engine.ingest.show import save_crops
    from reid_engine.service import NoPixelsError, media

    idx = world.copy(tmp_path / "idx")
    video = tmp_path / "v.avi"
    shutil.copy(videos["short"], video)
    with Engine.open(idx) as eng:
        _ingest(eng, video)
        row = next(r for r in _footage_rows(eng) if r["source"] == str(video.resolve()))
        assert media.crop_pixels(row).size  # the indexed video: its crop is served
        hits = eng.query_features(eng.store.vectors([row["id"]]), k=1, rerank="none")
        assert len(save_crops(hits, tmp_path / "before")) == 1
        write_video(video, 30, size=(176, 144))  # another recording at the same path
        assert_raises(NoPixelsError, lambda: media.crop_pixels(row), f"crop {row['id']}", "video changed")
        assert_raises(NoPixelsError, lambda: media.frame_with_box(row), "video changed")
        assert save_crops(hits, tmp_path / "after") == []


def test_removing_a_tracks_best_crop_keeps_the_track_findable(videos: dict[str, Path], world: World,
                                                             tmp_path: Path) -> None:
    """Track search dropped a track whose best crop was removed, although its other crops were still indexed."""
    idx = world.copy(tmp_path / "idx")
    with Engine.open(idx) as eng:
        _ingest(eng, videos["full"])
        by_track: dict[str, list[int]] = {}
        for r in _footage_rows(eng):
            if r["track"]:
                by_track.setdefault(r["track"], []).append(r["id"])
        key, ids = next((k, v) for k, v in by_track.items() if len(v) >= 2)
        from reid_engine.tracks import track_row

        best = track_row(eng.store, key)["best_crop"]
        eng.remove(ids=[best])
        left = [i for i in ids if i != best]
        found = eng.query_tracks_features(eng.store.vectors(left[:1]), k=10)[0].hits
        hit = next((h for h in found if h.track == key), None)
        assert hit is not None, [h.track for h in found]
        assert best not in hit.crop_ids and hit.best.id in left and sorted(hit.crop_ids) == sorted(left)
        assert track_row(eng.store, key)["best_crop"] in left


def test_an_unfinished_ingest_with_no_crops_restarts_with_other_settings(videos: dict[str, Path], world: World,
                                                                        tmp_path: Path) -> None:
    """Its message advised `remove --source`, which removed nothing, and every restart was refused."""

    class Blind(StubDetector):
        def detect(self, frame: np.ndarray) -> Any:
            return super().detect(np.zeros_like(frame))

    idx = world.copy(tmp_path / "idx")
    with Engine.open(idx) as eng:
        first = ingest_video(eng, videos["full"], "cam9", detector=Blind(), show_progress=False, max_frames=5)
        assert first.crops == 0 and not first.done
        again = ingest_video(eng, videos["full"], "cam9", detector=StubDetector(), show_progress=False, every=2)
        assert again.resumed_from is None and again.crops > 0


def test_track_urls_survive_dot_segments() -> None:
    """A camera named '..' gave /tracks/../v1/1, which clients resolve to /v1/1 (404)."""
    from reid_engine.http.routes import track_url

    assert track_url("../v1/1") == "/tracks/%2E%2E/v1/1"
    assert track_url("./x/2") == "/tracks/%2E/x/2"
    assert track_url("cam 1/a.b/3") == "/tracks/cam%201/a.b/3"


def test_an_image_named_as_a_video_and_an_untrainable_factory_are_refused(world: World, tmp_path: Path,
                                                                          unchanged: None) -> None:
    """`ingest crop.png` was read as a one-frame video; IVF<n> with n past any training set was accepted."""
    png = _write(tmp_path / "crop.png", real_png(5))
    assert_cli_error(cli("ingest", png, "--index", world.index), 1, "crop.png", "an image, not a video")
    res = cli("index", world.gallery, "--index", tmp_path / "n", "--encoder", "tiny-test", "--weights", world.weights,
              "--factory", "IVF99999999999,Flat")
    assert_cli_error(res, 1, "IVF99999999999,Flat", "from 1 to")
    assert not (tmp_path / "n").exists()


def test_eval_keeps_a_byte_identical_copy_labelled_with_another_camera(world: World, tmp_path: Path) -> None:
    """The index kept one row per file content with the first copy's camera, so --exclude-same-camera dropped the
    copy labelled with another camera: here the query's only true match."""
    folder = tmp_path / "dup"
    a = _write(folder / "a_cam1.png", real_png(1))
    _write(folder / "a_copy_cam2.png", a.read_bytes())
    _write(folder / "b_cam2.png", real_png(2))
    _write(folder / "q.png", real_png(3))
    protocol = _write(folder / "p.csv", b"file,pid,camid,role\nq.png,1,1,query\na_cam1.png,1,1,gallery\n"
                      b"a_copy_cam2.png,1,2,gallery\nb_cam2.png,2,2,gallery\n")
    res = cli("eval", protocol, "--encoder", "tiny-test", "--weights", world.weights, "--no-cache", "--json",
              "--rerank", "none", "--exclude-same-camera")
    metrics = json.loads(assert_cli_ok(res))["metrics"]
    # the gallery left to the query: the copy (its match) and b; cosine puts the copy first or second
    assert metrics["num_valid"] == 1 and metrics["rank5"] == 100.0 and metrics["mAP"] >= 50.0, metrics
