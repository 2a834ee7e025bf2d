"""Queries: top-k against brute force, filters applied inside the search, same-camera exclusion."""
from __future__ import annotations

import numpy as np
import pytest

from reid_engine import Engine
from reid_engine.errors import InvalidInputError
from reid_engine.ingest import CropItem


@pytest.fixture
def gallery(tmp_path, tiny_weights):
    """300 random unit vectors over 3 cameras, 2 sources and 300 seconds."""
    rng = np.random.default_rng(7)
    feats = rng.standard_normal((300, 16)).astype(np.float32)
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    cams = np.array(["c1", "c2", "c3"])[rng.integers(0, 3, 300)]
    srcs = np.array(["s1", "s2"])[rng.integers(0, 2, 300)]
    times = 1_700_000_000.0 + np.arange(300, dtype=np.float64)
    items = [
        CropItem(tmp_path / f"g{i}.png", {"camera": cams[i], "source": srcs[i], "timestamp": times[i], "pid": str(i % 50)})
        for i in range(300)
    ]
    eng = Engine.create(tmp_path / "ix", encoder="tiny-test", weights=tiny_weights)
    eng.add_features(feats, items, hashes=[f"{i:064x}" for i in range(300)])
    return eng, feats, cams, srcs, times


def _brute(q, feats, mask, k):
    sims = q @ feats.T
    sims[:, ~mask] = -np.inf
    order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return [[int(i) for i in row if mask[i]] for row in order]


def _queries(n=12, seed=11):
    q = np.random.default_rng(seed).standard_normal((n, 16)).astype(np.float32)
    return q / np.linalg.norm(q, axis=1, keepdims=True)


def test_unfiltered_topk_equals_brute_force(gallery):
    eng, feats, *_ = gallery
    q = _queries()
    res = eng.query_features(q, k=10, rerank="none")
    assert [[h.id for h in r.hits] for r in res] == _brute(q, feats, np.ones(300, bool), 10)
    d = np.array([[h.distance for h in r.hits] for r in res])
    np.testing.assert_allclose(d, 1 - np.sort(q @ feats.T, axis=1)[:, ::-1][:, :10], atol=1e-5)
    assert all(np.all(np.diff(row) >= -1e-7) for row in d)


@pytest.mark.parametrize(
    "filters",
    [
        {"cameras": ["c2"]},
        {"exclude_cameras": ["c1", "c3"]},
        {"sources": ["s1"], "cameras": ["c1", "c3"]},
        {"time_from": 1_700_000_100.0, "time_to": 1_700_000_130.0},
        {"time_from": "2023-11-14T22:15:00Z"},
    ],
)
def test_filters_run_inside_the_search_not_after_the_cut(gallery, filters):
    eng, feats, cams, srcs, times = gallery
    mask = np.ones(300, bool)
    if "cameras" in filters:
        mask &= np.isin(cams, filters["cameras"])
    if "exclude_cameras" in filters:
        mask &= ~np.isin(cams, filters["exclude_cameras"])
    if "sources" in filters:
        mask &= np.isin(srcs, filters["sources"])
    if "time_from" in filters:
        t0 = filters["time_from"] if isinstance(filters["time_from"], float) else 1_700_000_100.0
        mask &= times >= t0
    if "time_to" in filters:
        mask &= times <= filters["time_to"]
    q = _queries()
    k = 10
    res = eng.query_features(q, k=k, rerank="none", **filters)
    want = _brute(q, feats, mask, k)
    assert [[h.id for h in r.hits] for r in res] == want
    # every query gets a full list although most of its unfiltered top-10 is filtered away
    assert all(len(r.hits) == min(k, int(mask.sum())) for r in res)


def test_time_window_narrower_than_k_returns_only_what_exists(gallery):
    eng, *_ = gallery
    res = eng.query_features(_queries(2), k=10, time_from=1_700_000_000.0, time_to=1_700_000_002.0)
    assert [sorted(h.id for h in r.hits) for r in res] == [[0, 1, 2], [0, 1, 2]]


def test_exclude_same_camera_uses_each_querys_camera(gallery):
    eng, feats, cams, *_ = gallery
    q = _queries(6)
    qcams = ["c1", "c2", "c3", "c1", "c2", "c3"]
    res = eng.query_features(q, k=10, query_cameras=qcams, exclude_same_camera=True, rerank="none")
    for i, r in enumerate(res):
        assert r.camera == qcams[i]
        assert [h.id for h in r.hits] == _brute(q[i : i + 1], feats, cams != qcams[i], 10)[0]
    with pytest.raises(InvalidInputError, match="camera is unknown"):
        eng.query_features(q, k=3, exclude_same_camera=True)


def test_hits_carry_metadata(gallery):
    eng, feats, cams, srcs, times = gallery
    hit = eng.query_features(feats[42:43], k=1, rerank="none")[0].hits[0]
    assert hit.id == 42 and hit.distance == pytest.approx(0.0, abs=1e-5)
    assert (hit.camera, hit.source, hit.timestamp, hit.pid) == (cams[42], srcs[42], times[42], "42")


def test_query_by_array_and_by_indexed_file_camera(tmp_path, tiny_weights):
    import cv2

    from .conftest import write_crops

    paths = write_crops(tmp_path / "g", 6)
    eng = Engine.create(tmp_path / "ix2", encoder="tiny-test", weights=tiny_weights)
    eng.add([CropItem(p, {"camera": "A" if i < 3 else "B"}) for i, p in enumerate(paths)])
    img = cv2.imread(str(paths[4]))
    by_array = eng.query([img], k=1)[0]
    assert by_array.query == "<array 0>" and by_array.hits[0].path == str(paths[4].resolve())
    # the query file is indexed (camera B): exclude_same_camera looks its camera up
    res = eng.query([str(paths[4])], k=6, exclude_same_camera=True)[0]
    assert res.camera == "B" and {h.camera for h in res.hits} == {"A"} and len(res.hits) == 3


def test_bad_query_arguments(gallery):
    eng, *_ = gallery
    with pytest.raises(InvalidInputError, match="dimension 8"):
        eng.query_features(np.ones((1, 8), np.float32))
    with pytest.raises(InvalidInputError, match="k 0"):
        eng.query_features(_queries(1), k=0)
    with pytest.raises(InvalidInputError, match="ISO-8601"):
        eng.query_features(_queries(1), time_from="yesterday")


@pytest.mark.parametrize("rerank", ["none", "default"])
def test_same_person_queries_give_one_pooled_list(gallery, rerank):
    eng, feats, *_ = gallery
    # three noisy views of gallery crop 5: alone each may miss it, pooled they agree on it
    rng = np.random.default_rng(3)
    views = feats[[5, 5, 5]] + 0.12 * rng.standard_normal((3, 16)).astype(np.float32)
    res = eng.query_features(views, k=20, rerank=rerank, same_person=True)
    assert len(res) == 1
    ids = [h.id for h in res[0].hits]
    assert len(ids) == len(set(ids)) == 20
    assert ids[0] == 5
    # reference for the plain preset: each view's top-100 pool; a crop scores the mean over the views of its
    # similarity, or of that view's 100th similarity when it is not in the view's pool
    if rerank == "none":
        q = views / np.linalg.norm(views, axis=1, keepdims=True)
        sims = q @ feats.T
        pools = [set(np.argsort(-row, kind="stable")[:100].tolist()) for row in sims]
        floor = [np.sort(row)[::-1][99] for row in sims]
        union = sorted(set().union(*pools))
        score = {c: np.mean([sims[v, c] if c in pools[v] else floor[v] for v in range(3)]) for c in union}
        want = sorted(union, key=lambda c: (-score[c], c))[:10]
        assert ids[:10] == want


def test_a_candidate_pool_set_per_query_is_what_the_re_ranking_re_scores(gallery):
    """``pool`` re-ranks that many first-stage candidates: the list's first ``pool`` answers are the cosine top
    ``pool`` in a re-ranked order, and the rest of the top k is cosine order from rank ``pool + 1`` on."""
    eng, feats, *_ = gallery
    q = _queries(6, seed=5)
    cos = _brute(q, feats, np.ones(300, bool), 30)
    for pool in (12, 1):
        res = eng.query_features(q, k=30, rerank="kr", search_params={"pool": pool})
        got = [[h.id for h in r.hits] for r in res]
        for g, c in zip(got, cos):
            assert sorted(g[:pool]) == sorted(c[:pool]) and g[pool:] == c[pool:]
        if pool > 1:  # the re-ranking did act on the pool
            assert any(g[:pool] != c[:pool] for g, c in zip(got, cos))
    # the default pool of the same preset re-ranks past rank 12
    wide = [[h.id for h in r.hits] for r in eng.query_features(q, k=30, rerank="kr")]
    assert any(w[12:] != c[12:] for w, c in zip(wide, cos))


def test_ef_search_and_pool_reach_the_first_stage_per_query_over_stored_defaults(gallery, tmp_path, tiny_weights,
                                                                                 monkeypatch):
    """A query's ``ef_search`` reaches the backend's search and its ``pool`` sets how many candidates are
    searched for; an index created with them stores them as defaults that a query overrides."""
    from reid_engine.index.store import IndexStore

    eng, feats, *_ = gallery
    asked = []
    real = IndexStore.search

    def spy(self, queries, k, where=None, params=None):
        asked.append((k, self.search_params(params).ef_search))
        return real(self, queries, k, where, params)

    monkeypatch.setattr(IndexStore, "search", spy)
    q = _queries(1)
    eng.query_features(q, k=5, search_params={"ef_search": 7, "pool": 40})
    eng.query_features(q, k=60, rerank="none", search_params={"pool": 40})
    assert asked == [(40, 7), (60, None)]
    stored = Engine.create(tmp_path / "stored", encoder="tiny-test", weights=tiny_weights,
                           search_params={"ef_search": 24, "pool": 30})
    stored.add_features(feats[:50], [CropItem(tmp_path / f"s{i}.png", {}) for i in range(50)],
                        hashes=[f"{i:064x}" for i in range(50)])
    stored.close()
    asked.clear()
    reopened = Engine.open(tmp_path / "stored")
    reopened.query_features(q, k=5)
    reopened.query_features(q, k=5, search_params={"ef_search": 9, "pool": 20})
    reopened.close()
    assert asked == [(30, 24), (20, 9)]
    with pytest.raises(InvalidInputError, match="pool=0"):
        eng.query_features(q, k=5, search_params={"pool": 0})


def test_batch_independence_of_the_default(gallery):
    eng, *_ = gallery
    q = _queries(6, seed=4)
    together = eng.query_features(q, k=15)
    alone = [eng.query_features(q[i : i + 1], k=15)[0] for i in range(len(q))]
    assert [[h.id for h in r.hits] for r in together] == [[h.id for h in r.hits] for r in alone]


def test_the_default_walks_half_the_beam_unfiltered_and_ranks_on_one_blas_thread(gallery, monkeypatch):
    """The default's Expand step completes the first stage, so an unfiltered default query asks the backend
    for half its default beam, and its k-reciprocal tail needs the recall of the head's 100 of its pool of 200
    only, so half of that again; a filtered one drops Expand's half; a preset without either asks for the full
    beam. BLAS runs on one thread during the query and gets its threads back after it."""
    from threadpoolctl import threadpool_info

    from reid_engine.index.store import IndexStore
    from reid_engine.rerank import Pipeline, Reranker, get_pipeline

    eng, *_ = gallery
    asked, blas = [], []
    real = IndexStore.search

    def spy(self, queries, k, where=None, params=None):
        asked.append(None if params is None else params.beam_scale)
        return real(self, queries, k, where, params)

    class Probe(Reranker):
        name = "probe"

        def rerank(self, queries, pool, ctx):
            blas.append([i["num_threads"] for i in threadpool_info()
                         if i["user_api"] == "blas" and i["threading_layer"] != "openmp"])
            return pool

    monkeypatch.setattr(IndexStore, "search", spy)
    q = _queries(2)
    eng.query_features(q, k=5)
    eng.query_features(q, k=5, cameras=["c1"])
    eng.query_features(q, k=5, rerank="kr")
    eng.query_features(q, k=5, search_params={"beam_scale": 2.0})
    assert asked == [0.25, 0.25, 0.5, 0.5, None, None, 2.0, 2.0]
    before = [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]  # FAISS's own too
    eng.query_features(q, k=5, rerank=get_pipeline("default").with_steps(Probe()))
    eng.query_features(q, k=5, rerank=Pipeline("p", (Probe(),)))
    assert blas and all(set(n) == {1} for n in blas)
    assert [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"] == before


def test_overlapping_queries_of_two_threads_restore_the_blas_threads_once_both_end():
    """A query of another thread that starts first and ends first neither lifts the one-thread limit under this
    thread's query nor leaves it behind: the last to end restores the threads there were before the first came."""
    import threading

    from threadpoolctl import threadpool_info

    from reid_engine.threads import one_blas_thread

    def blas():  # OpenMP-threaded BLAS (FAISS's own) keeps per-thread limits and is left alone
        return [i["num_threads"] for i in threadpool_info()
                if i["user_api"] == "blas" and i["threading_layer"] != "openmp"]

    before = blas()
    other_in, mine_in, other_out = threading.Event(), threading.Event(), threading.Event()

    def other():
        with one_blas_thread():
            other_in.set()
            mine_in.wait(5)
        other_out.set()

    worker = threading.Thread(target=other)
    worker.start()
    assert other_in.wait(5)
    with one_blas_thread():
        mine_in.set()
        assert other_out.wait(5)
        during = blas()
    worker.join(5)
    assert set(during) == {1}  # the other query ended first: this one still runs on one thread
    assert blas() == before
