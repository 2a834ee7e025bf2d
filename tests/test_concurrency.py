"""Readers and writers on one index: the commit protocol, the write lock, crashes, other processes.

Each test runs on every vector backend and on SQLite and (when
REID_ENGINE_TEST_PG_URL is set, as .ci/run does) PostgreSQL rows.
"""
from __future__ import annotations

import json
import multiprocessing as mp
import os
import socket
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest

import reference_backend  # noqa: F401  (registers the "reference" backend)
from pg import pg_url_or_skip
from reid_engine import CropItem, Engine
from reid_engine.errors import IndexBusyError, IndexCorruptError
from reid_engine.index import store as store_mod
from reid_engine.index.backend import SearchFilter

DIM = 16


def _vectors(n: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _items(start: int, n: int, camera: str = "a") -> list[CropItem]:
    return [CropItem(Path(f"/x/{start + i}.png"), {"camera": camera, "pid": str((start + i) % 7)}) for i in range(n)]


def _add(engine: Engine, start: int, n: int, seed: int) -> list[int]:
    return engine.add_features(_vectors(n, seed), _items(start, n), hashes=[f"h{start + i}" for i in range(n)])


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: Any) -> Iterator[str | None]:
    if request.param == "sqlite":
        yield None
    else:
        with pg_url_or_skip() as url:
            yield url


@pytest.fixture(params=["faiss", "reference"])
def backend(request: Any) -> str:
    return str(request.param)


@pytest.fixture
def make_engine(tmp_path: Path, tiny_weights: Path, db_url: str | None, backend: str) -> Any:
    made: list[Engine] = []

    def make(name: str = "idx", hooks: Any = ()) -> Engine:
        eng = Engine.create(tmp_path / name, encoder="tiny-test", weights=tiny_weights, db_url=db_url,
                            backend=backend, hooks=hooks)
        made.append(eng)
        return eng

    yield make
    for e in made:
        e.close()


#: more than any gallery of these tests holds (the stress writer adds 10k+ crops a minute on a fast machine)
ALL = 200_000


def _all_ids(engine: Engine) -> list[int]:
    res = engine.query_features(_vectors(1, 99), k=ALL, rerank="none")
    ids = sorted(h.id for h in res[0].hits)
    assert len(ids) < ALL, "the gallery outgrew _all_ids"
    return ids


def _snapshot(folder: Path) -> dict[str, tuple[int, float]]:
    return {p.name: (p.stat().st_size, p.stat().st_mtime) for p in sorted(folder.iterdir())}


def test_crash_before_the_sql_commit_keeps_the_last_committed_state(make_engine: Any, monkeypatch: Any) -> None:
    eng = make_engine()
    first = _add(eng, 0, 20, 1)

    def crash() -> None:
        raise RuntimeError("simulated crash between the new files and the SQL commit")

    monkeypatch.setattr(store_mod, "_after_vectors_written", crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        _add(eng, 20, 10, 2)
    monkeypatch.undo()
    assert _all_ids(eng) == first
    again = Engine.open(eng.path)
    assert again.stats()["crops"] == 20 and _all_ids(again) == first
    # a re-run adds what is missing, with fresh ids that were never visible
    added = _add(again, 20, 10, 2)
    assert len(added) == 10 and _all_ids(again) == sorted(first + added)
    again.close()


def test_opening_and_querying_never_modify_the_index(make_engine: Any) -> None:
    eng = make_engine()
    _add(eng, 0, 30, 3)
    eng.close()
    before = _snapshot(eng.path)
    time.sleep(0.05)
    reader = Engine.open(eng.path)
    reader.query_features(_vectors(3, 4), k=5)
    reader.stats()
    reader.close()
    after = _snapshot(eng.path)
    assert {k: v for k, v in after.items() if not k.endswith(("-shm", "-wal"))} == {
        k: v for k, v in before.items() if not k.endswith(("-shm", "-wal"))
    }


def test_a_reader_sees_another_engines_commits_on_its_next_query(make_engine: Any) -> None:
    writer = make_engine()
    ids = _add(writer, 0, 10, 5)
    reader = Engine.open(writer.path)
    assert _all_ids(reader) == ids
    more = _add(writer, 10, 5, 6)
    assert _all_ids(reader) == sorted(ids + more)
    writer.remove(ids=ids[:3])
    assert _all_ids(reader) == sorted(ids[3:] + more)
    reader.close()


def test_removed_ids_are_never_reused(make_engine: Any) -> None:
    eng = make_engine()
    ids = _add(eng, 0, 5, 7)
    eng.remove(ids=[ids[-1]])
    new = _add(eng, 5, 1, 8)
    assert new[0] > ids[-1]
    res = eng.query_features(_vectors(1, 8), k=1, rerank="none")
    assert res[0].hits[0].id == new[0]


def _hold_lock(path: str, ready: Any, release: Any) -> None:
    eng = Engine.open(path)
    with eng.store.writing():
        ready.set()
        release.wait(20)
    eng.close()


def test_a_second_writer_is_told_who_holds_the_lock(make_engine: Any) -> None:
    eng = make_engine()
    _add(eng, 0, 5, 9)
    ctx = mp.get_context("spawn")
    ready, release = ctx.Event(), ctx.Event()
    proc = ctx.Process(target=_hold_lock, args=(str(eng.path), ready, release))
    proc.start()
    try:
        assert ready.wait(30)
        t0 = time.monotonic()
        with pytest.raises(IndexBusyError) as err:
            with eng.store.writing(timeout=0.3):
                pass
        assert time.monotonic() - t0 >= 0.3
        msg = str(err.value)
        assert f"process {proc.pid} on host {socket.gethostname()}" in msg and "\n" not in msg
        before = _all_ids(eng)
    finally:
        release.set()
        proc.join(30)
    assert _add(eng, 5, 2, 10)  # the lock is free again
    assert len(_all_ids(eng)) == len(before) + 2


def _writer(path: str, blocks: int, size: int, log_path: str) -> None:
    eng = Engine.open(path)
    committed = []
    for b in range(blocks):
        ids = _add(eng, 1000 + b * size, size, 100 + b)
        committed.append(ids)
        time.sleep(0.01)
    Path(log_path).write_text(json.dumps(committed))
    eng.close()


def _reader(path: str, seconds: float, out_path: str) -> None:
    eng = Engine.open(path)
    seen, errors = [], []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            seen.append(_all_ids(eng))
            eng.query_features(_vectors(1, 98), k=5)  # the default re-ranking reads the hooks' state too
        except Exception as exc:  # every error is a failure of the test
            errors.append(f"{type(exc).__name__}: {exc}")
    Path(out_path).write_text(json.dumps({"seen": seen, "errors": errors}))
    eng.close()


def test_readers_answer_from_committed_generations_while_a_process_adds(make_engine: Any, tmp_path: Path) -> None:
    eng = make_engine()
    base = _add(eng, 0, 8, 11)
    ctx = mp.get_context("spawn")
    log, out = tmp_path / "writer.json", tmp_path / "reader.json"
    w = ctx.Process(target=_writer, args=(str(eng.path), 12, 6, str(log)))
    r = ctx.Process(target=_reader, args=(str(eng.path), 6.0, str(out)))
    r.start()
    w.start()
    w.join(120)
    r.join(120)
    assert w.exitcode == 0 and r.exitcode == 0
    blocks = json.loads(log.read_text())
    report = json.loads(out.read_text())
    assert report["errors"] == []
    prefixes = [sorted(base)]
    for b in blocks:
        prefixes.append(sorted(prefixes[-1] + b))
    assert report["seen"], "the reader answered no query"
    assert all(ans in prefixes for ans in report["seen"]), "an answer mixed uncommitted and committed crops"
    assert _all_ids(eng) == prefixes[-1]


def test_filters_run_inside_the_search(make_engine: Any) -> None:
    eng = make_engine()
    x = _vectors(40, 12)
    items = [CropItem(Path(f"/f/{i}.png"), {"camera": "ab"[i % 2], "timestamp": 1000.0 + i}) for i in range(40)]
    ids = eng.add_features(x, items, hashes=[f"f{i}" for i in range(40)])
    q = x[:1]
    got = eng.store.search(q, 5, SearchFilter(cameras=("b",), time_from=1010.0))[1][0]
    ok = [i for i in ids if i % 2 == 1 and i >= 10]
    sims = (x[ok] @ q[0])
    want = [ok[j] for j in np.argsort(-sims)[:5]]
    assert got.tolist() == want


def test_a_damaged_state_is_a_clear_error(make_engine: Any) -> None:
    eng = make_engine()
    _add(eng, 0, 4, 13)
    with eng.store.sql.begin() as conn:
        from reid_engine.index import db

        db.set_meta(conn, "generation", "not-a-number")
    eng.close()
    with pytest.raises(IndexCorruptError, match="damaged"):
        Engine.open(eng.path)


@pytest.mark.skipif(os.name != "posix", reason="kill -9 needs POSIX signals")
def test_kill_during_add_loses_nothing_committed(make_engine: Any, tmp_path: Path) -> None:
    import signal

    eng = make_engine()
    _add(eng, 0, 4, 14)
    ctx = mp.get_context("spawn")
    log = tmp_path / "w.json"
    w = ctx.Process(target=_writer, args=(str(eng.path), 200, 4, str(log)))
    w.start()
    time.sleep(3.0)
    os.kill(w.pid, signal.SIGKILL)
    w.join(10)
    again = Engine.open(eng.path)
    ids = _all_ids(again)
    assert len(ids) >= 4 and len(ids) % 4 == 0  # whole blocks only
    more = _add(again, 5000, 4, 15)  # the next writer cleans up and commits
    assert _all_ids(again) == sorted(ids + more)
    again.close()


def _stress_writer(path: str, seconds: float, size: int, log_path: str) -> None:
    eng = Engine.open(path)
    committed, b = [], 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        committed.append(_add(eng, 10_000 + b * size, size, 500 + b))
        b += 1
    removed = committed[0][:3]
    eng.remove(ids=removed)
    Path(log_path).write_text(json.dumps({"blocks": committed, "removed": removed}))
    eng.close()


@pytest.mark.slow
def test_stress_four_readers_one_writer_for_a_minute(make_engine: Any, tmp_path: Path) -> None:
    """4 reader processes query while a writer adds for 60 s, then removes: no reader error, every answer
    is a committed generation's content, and everything the writer reported is there."""
    eng = make_engine(hooks=None)  # every index-time hook, as a default index keeps
    base = _add(eng, 0, 8, 400)
    ctx = mp.get_context("spawn")
    wlog = tmp_path / "w.json"
    writer = ctx.Process(target=_stress_writer, args=(str(eng.path), 60.0, 16, str(wlog)))
    readers = [ctx.Process(target=_reader, args=(str(eng.path), 66.0, str(tmp_path / f"r{j}.json"))) for j in range(4)]
    for p in readers:
        p.start()
    writer.start()
    writer.join(300)
    for p in readers:
        p.join(300)
    assert writer.exitcode == 0 and all(p.exitcode == 0 for p in readers)
    log = json.loads(wlog.read_text())
    prefixes = [sorted(base)]
    for block in log["blocks"]:
        prefixes.append(sorted(prefixes[-1] + block))
    final = sorted(set(prefixes[-1]) - set(log["removed"]))
    valid = {tuple(p) for p in prefixes} | {tuple(final)}
    answers = 0
    for j in range(4):
        rep = json.loads((tmp_path / f"r{j}.json").read_text())
        assert rep["errors"] == [], rep["errors"][:3]
        assert all(tuple(a) in valid for a in rep["seen"])
        answers += len(rep["seen"])
    assert answers > 100 and len(log["blocks"]) > 20
    assert _all_ids(eng) == final
