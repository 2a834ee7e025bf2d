"""Merges built in a background thread and committed later: the answers equal an inline merge's and brute force,
and commits made while a merge is built (adds, removals, another merge) are never lost or undone."""
from __future__ import annotations

import multiprocessing as mp
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pg import pg_url_or_skip
from reid_engine import CropItem, Engine
from reid_engine.index import store as store_mod
from reid_engine.index.backend import SearchParams
from reid_engine.index.faiss_backend import FaissBackend

DIM = 16
#: small enough that a few hundred rows make graphs, grow them and start new ones
OPTIONS = {"exact_threshold": 100, "flat_limit": 60, "graph_rows": 300, "ef_search": 4096}
EXACT = SearchParams(exact=True)


def _vectors(n: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _engine(folder: Path, weights: Path, background: bool = True, db_url: str | None = None) -> Engine:
    eng = Engine.create(folder, encoder="tiny-test", weights=weights, backend_options=dict(OPTIONS), db_url=db_url)
    eng.store.background_merges = background
    return eng


def _add(eng: Engine, start: int, x: np.ndarray) -> list[int]:
    items = [CropItem(Path(f"/x/{start + i}.png"), {"camera": "ab"[i % 2]}) for i in range(len(x))]
    return eng.add_features(x, items, hashes=[f"h{start + i}" for i in range(len(x))])


def _brute(live: dict[int, np.ndarray], q: np.ndarray, k: int) -> list[list[int]]:
    ids = np.array(sorted(live))
    x = np.stack([live[i] for i in ids])
    s = q @ x.T
    order = np.lexsort((np.broadcast_to(ids, s.shape), -s), axis=1)[:, :k]
    return ids[order].tolist()


def _check_against_brute_force(eng: Engine, live: dict[int, np.ndarray]) -> None:
    """Count, exact and approximate (wide beam) top-10 all equal brute force over the live rows."""
    store = eng.store
    assert store.count == len(live)
    q = _vectors(25, 1234)
    want = _brute(live, q, 10)
    assert store.search(q, 10, params=EXACT)[1].tolist() == want
    assert store.search(q, 10)[1].tolist() == want
    # every live row finds itself first through the graphs
    ids = np.array(sorted(live))
    got = store.search(np.stack([live[i] for i in ids]), 1)[1][:, 0]
    assert (got == ids).all()


def _segment_kinds(eng: Engine) -> list[str]:
    return [s["kind"] for s in eng.store.backend.describe()["segments"]]


def test_background_merges_give_the_answers_of_inline_merges(tmp_path: Path, tiny_weights: Path) -> None:
    bg = _engine(tmp_path / "bg", tiny_weights, background=True)
    inline = _engine(tmp_path / "inline", tiny_weights, background=False)
    live: dict[int, np.ndarray] = {}
    for b in range(14):
        x = _vectors(37, b)
        ids = _add(bg, 37 * b, x)
        assert _add(inline, 37 * b, x) == ids
        live.update(zip(ids, x))
        if b % 5 == 4:  # removals commit while a merge may be building
            gone = sorted(live)[b:: 9]
            for eng in (bg, inline):
                eng.remove(ids=gone)
            for i in gone:
                del live[i]
    bg.store.wait_for_merges()
    assert bg.store.last_merge is not None and bg.store.last_merge["applied"]
    assert "graph" in _segment_kinds(bg) and "graph" in _segment_kinds(inline)
    for eng in (bg, inline):
        _check_against_brute_force(eng, live)
    bg.close()
    inline.close()
    reopened = Engine.open(tmp_path / "bg")
    _check_against_brute_force(reopened, live)
    reopened.close()


def test_background_merges_grow_graphs_to_half_the_cap_and_inline_merges_to_the_cap(tmp_path: Path,
                                                                                    tiny_weights: Path) -> None:
    """A merge built in the background while the process serves copies the graph it grows into memory beside the
    mapped file: it grows no graph past graph_rows / 2 (150 rows here) and starts a new one instead, while inline
    merges grow graphs up to graph_rows (300). Both answer as brute force."""
    sizes = {}
    for background in (True, False):
        eng = _engine(tmp_path / str(background), tiny_weights, background=background)
        assert eng.store.backend.describe()["background_graph_rows"] == 150
        live: dict[int, np.ndarray] = {}
        for b in range(16):
            x = _vectors(37, 100 + b)
            live.update(zip(_add(eng, 37 * b, x), x))
            eng.store.wait_for_merges()
        sizes[background] = [s["rows"] for s in eng.store.backend.describe()["segments"] if s["kind"] == "graph"]
        _check_against_brute_force(eng, live)
        eng.close()
    assert max(sizes[True]) <= 150 and len(sizes[True]) >= 3
    assert 150 < max(sizes[False]) <= 300


@pytest.mark.parametrize("rows_in", ["sqlite", "postgresql"])
def test_the_background_thread_commits_its_merge_and_another_process_sees_it(tmp_path: Path, tiny_weights: Path,
                                                                             rows_in: str) -> None:
    def run(url: str | None) -> None:
        eng = _engine(tmp_path / "ix", tiny_weights, db_url=url)
        reader = Engine.open(tmp_path / "ix")
        live: dict[int, np.ndarray] = {}
        for b in range(3):  # the third commit passes the exact threshold: the first graph is due
            gen = eng.store.generation
            x = _vectors(40, b)
            live.update(zip(_add(eng, 40 * b, x), x))
        thread = eng.store._merge_thread
        assert thread is not None and eng.store.merges_started == 1
        thread.join()  # nothing else of this process writes: the thread commits the merge itself
        assert eng.store.generation == gen + 2  # the add, then the merge
        assert eng.store.last_merge is not None and eng.store.last_merge["applied"]
        assert _segment_kinds(eng) == ["graph"]
        reader.refresh()
        assert reader.store.generation == gen + 2
        _check_against_brute_force(reader, live)
        reader.close()
        eng.close()

    if rows_in == "sqlite":
        run(None)
    else:
        with pg_url_or_skip() as url:
            run(url)


def test_a_bulk_add_merges_inside_its_commits_after_the_merge_being_built(tmp_path: Path, tiny_weights: Path,
                                                                          monkeypatch: Any) -> None:
    """An add of several commit blocks (a bulk load) runs its merges inside the commits; a background merge started
    before it is waited for and committed first, not thrown away."""
    monkeypatch.setattr(store_mod, "MAX_COMMIT_ROWS", 50)
    eng = _engine(tmp_path / "ix", tiny_weights)
    store = eng.store
    build = store.backend.build_merge

    def slow_build(job: Any, threads: Any = None) -> None:
        time.sleep(0.5)  # still building when the bulk add reaches its first merge
        build(job, threads)

    monkeypatch.setattr(store.backend, "build_merge", slow_build)
    live: dict[int, np.ndarray] = {}
    for b in range(3):  # one block each: the first graph is built in the background
        x = _vectors(40, b)
        live.update(zip(_add(eng, 40 * b, x), x))
    assert store.merges_started == 1
    x = _vectors(400, 10)  # 8 blocks of 50 in one call
    live.update(zip(_add(eng, 1000, x), x))
    assert store.merges_started == 1  # none started by the bulk add
    assert store.last_merge is not None and store.last_merge["applied"]
    assert not store._merge_building() and store._merge_ready is None
    kinds = _segment_kinds(eng)
    assert kinds.count("graph") >= 1 and sum(s["rows"] for s in store.backend.describe()["segments"]
                                             if s["kind"] == "flat") < 2 * OPTIONS["flat_limit"]
    _check_against_brute_force(eng, live)
    eng.close()


def test_rows_added_and_removed_while_a_merge_is_built_stay_as_committed(tmp_path: Path, tiny_weights: Path) -> None:
    """A merge planned on generation G, built, then applied after adds and removals committed at G+1.. (some of
    the removed rows are in the segments it merged): the removals hold and the added rows are found."""
    eng = _engine(tmp_path / "ix", tiny_weights)
    store = eng.store
    live: dict[int, np.ndarray] = {}
    started: list[Any] = []
    store._start_merge = lambda: started.append(store.generation)  # type: ignore[method-assign]  # no thread
    for b in range(4):  # 160 rows: past the exact threshold, a merge is due
        x = _vectors(40, b)
        live.update(zip(_add(eng, 40 * b, x), x))
    assert started
    job = store.backend.plan_merge(store.generation)
    assert job is not None and len(job.consumed) >= 2
    planned_gen = store.generation
    # commits made while the merge is being built
    x = _vectors(30, 99)
    live.update(zip(_add(eng, 1000, x), x))
    in_merged = sorted(live)[3:40:4]  # rows of the segments being merged
    eng.remove(ids=in_merged)
    for i in in_merged:
        del live[i]
    store.backend.build_merge(job)
    store._merge_ready = job
    store.wait_for_merges()
    assert store.generation == planned_gen + 3  # the add, the removal, the merge
    assert set(job.consumed).isdisjoint(s["name"] for s in store.backend.describe()["segments"])
    assert "graph" in _segment_kinds(eng)
    _check_against_brute_force(eng, live)
    eng.close()
    reopened = Engine.open(tmp_path / "ix")
    _check_against_brute_force(reopened, live)
    reopened.close()


def test_a_merge_overtaken_by_a_compaction_is_dropped_with_its_files(tmp_path: Path, tiny_weights: Path) -> None:
    eng = _engine(tmp_path / "ix", tiny_weights)
    store = eng.store
    store._start_merge = lambda: None  # type: ignore[method-assign]
    live: dict[int, np.ndarray] = {}
    for b in range(5):
        x = _vectors(40, b)
        live.update(zip(_add(eng, 40 * b, x), x))
        if b == 2:
            eng.compact()  # the first graph: a later merge grows it
    job = store.backend.plan_merge(store.generation)
    assert job is not None and job.base is not None
    eng.compact()  # merges the same segments first (graphs are made the same way: only the segments differ)
    gen = store.generation
    before = sorted(p.name for p in (tmp_path / "ix").iterdir())
    store.backend.build_merge(job)
    assert job.files and all(any(p.startswith(f) for p in os.listdir(tmp_path / "ix")) for f in job.files)
    store._merge_ready = job
    store.wait_for_merges()
    assert store.generation == gen  # nothing committed
    assert sorted(p.name for p in (tmp_path / "ix").iterdir()) == before  # and nothing of it left
    _check_against_brute_force(eng, live)
    eng.close()


def test_cleanup_leaves_a_merge_being_built_alone(tmp_path: Path) -> None:
    """A writer's cleanup (even with no grace period) never removes the files of a merge not yet committed."""
    from backend_conformance import Gallery

    b = FaissBackend(tmp_path / "v", DIM, dict(OPTIONS))
    g = Gallery(b)
    rng = np.random.default_rng(0)
    for i in range(3):
        g.add_random(rng, 60, 60 * i)
    job = b.plan_merge(g.gen)
    assert job is not None
    b.build_merge(job)
    b.cleanup(g.state, grace_seconds=0.0)
    state = b.apply_merge(job, g.gen + 1)
    assert state is not None
    g.gen += 1
    b.load(state)
    assert [s["kind"] for s in b.describe()["segments"]] == ["graph"]
    q = _vectors(5, 7)
    np.testing.assert_array_equal(b.search(q, 5)[1], g.reference(q, 5)[1])


def _add_then_die_before_the_merge_commits(folder: str, weights: str) -> None:
    eng = Engine.open(Path(folder))
    eng.store.background_merges = True

    apply = eng.store._apply_ready_merge

    def die() -> bool:
        if eng.store._merge_ready is not None:
            os._exit(9)  # the merge's files are written; its commit never happens
        return apply()

    eng.store._apply_ready_merge = die  # type: ignore[method-assign]
    _add(eng, 500, _vectors(80, 50))  # a merge is due after this commit
    eng.store._merge_thread.join()  # type: ignore[union-attr]
    os._exit(0)


def test_a_process_killed_before_its_background_merge_commits_loses_nothing(tmp_path: Path,
                                                                             tiny_weights: Path) -> None:
    folder = tmp_path / "ix"
    eng = _engine(folder, tiny_weights, background=False)
    live: dict[int, np.ndarray] = {}
    x = _vectors(90, 3)
    live.update(zip(_add(eng, 0, x), x))
    eng.close()
    proc = mp.get_context("spawn").Process(target=_add_then_die_before_the_merge_commits,
                                           args=(str(folder), str(tiny_weights)))
    proc.start()
    proc.join(120)
    assert proc.exitcode == 9
    assert list(folder.glob("seg-*.hnsw"))  # the merge was built
    reopened = Engine.open(folder)
    ids = reopened.store.ids_where(None)
    assert len(ids) == 170 and reopened.store.count == 170  # the add committed; the merge did not
    assert all(s["kind"] == "flat" for s in reopened.store.backend.describe()["segments"])
    live.update(zip(sorted(set(ids.tolist()) - set(live)), _vectors(80, 50)))
    _check_against_brute_force(reopened, live)
    # the next writer merges (inline here) and the answers stay
    reopened.store.background_merges = False
    _add(reopened, 900, _vectors(5, 60))
    assert "graph" in _segment_kinds(reopened)
    reopened.close()


def test_background_merges_can_be_turned_off_from_the_environment(tmp_path: Path, tiny_weights: Path,
                                                                 monkeypatch: Any) -> None:
    monkeypatch.setenv("REID_ENGINE_BACKGROUND_MERGES", "0")
    eng = Engine.create(tmp_path / "ix", encoder="tiny-test", weights=tiny_weights, backend_options=dict(OPTIONS))
    for b in range(3):
        _add(eng, 40 * b, _vectors(40, b))
    assert eng.store.merges_started == 0 and _segment_kinds(eng) == ["graph"]  # merged inside the third commit
    eng.close()
