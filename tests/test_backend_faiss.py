"""FaissBackend: the shared conformance suite (exact, graph and IVF layouts) plus FAISS-specific checks."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest

from reid_engine.errors import InvalidInputError
from reid_engine.index.backend import Changes, SearchFilter, SearchParams, get_backend
from reid_engine.index import faiss_backend
from reid_engine.index.faiss_backend import FaissBackend, parse_factory
from reid_engine.index.topk import top_k_rows

from .backend_conformance import DIM, BackendConformance, Gallery, assert_same, make_fields, unit


class TestFaissConformance(BackendConformance):
    def make_backend(self, tmp_path, dim):
        return FaissBackend(tmp_path / "vectors", dim, {})

    def make_approx_backend(self, tmp_path, dim):
        return FaissBackend(tmp_path / "vectors", dim, {"exact_threshold": 500, "flat_limit": 500})


class TestFaissIVFApproxConformance(BackendConformance):
    def make_backend(self, tmp_path, dim):
        return FaissBackend(tmp_path / "vectors", dim, {})

    def make_approx_backend(self, tmp_path, dim):
        return FaissBackend(tmp_path / "vectors", dim, {"factory": "IVF24,Flat", "flat_limit": 500, "nprobe": 4})


class TestFaissGraphLayoutConformance(BackendConformance):
    """Every commit is merged into HNSW graph segments; a beam wider than the gallery must be exact."""

    def make_backend(self, tmp_path, dim):
        opts = {"flat_limit": 64, "merge_factor": 2, "exact_threshold": 40, "ef_search": 4096}
        return FaissBackend(tmp_path / "vectors", dim, opts)


class TestFaissProjectedGraphLayoutConformance(BackendConformance):
    """Every commit is merged into graphs over 16 of the 24 dimensions, re-scored with the full vectors; a beam
    wider than the gallery must be exact."""

    def make_backend(self, tmp_path, dim):
        opts = {"flat_limit": 64, "merge_factor": 2, "exact_threshold": 40, "ef_search": 4096, "graph_dims": 16}
        return FaissBackend(tmp_path / "vectors", dim, opts)


class TestFaissIVFLayoutConformance(BackendConformance):
    """Every commit is merged into IVF segments; probing all lists must be exact."""

    def make_backend(self, tmp_path, dim):
        opts = {"factory": "IVF4,Flat", "flat_limit": 64, "merge_factor": 2, "nprobe": 4, "exact_threshold": 40}
        return FaissBackend(tmp_path / "vectors", dim, opts)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    p = tmp_path / "vectors"
    p.mkdir()
    return p


def test_registered():
    assert get_backend("faiss") is FaissBackend


@pytest.mark.parametrize("factory,expected", [(None, ("auto", 32)), ("Flat", ("flat", None)),
                                              ("HNSW16", ("hnsw", 16)), ("IVF1024,Flat", ("ivf", 1024))])
def test_factory_strings(factory, expected):
    assert parse_factory(factory) == expected


@pytest.mark.parametrize("factory", ["HNSW2", "HNSW32,Flat", "IVF0,Flat", "IVF64,PQ8", "flat"])
def test_unsupported_factory_names_the_supported_ones(folder, factory):
    with pytest.raises(InvalidInputError, match="IVF<n>,Flat"):
        FaissBackend(folder, 8, {"factory": factory})


def test_topk_merge_against_sort():
    rng = np.random.default_rng(0)
    s = rng.standard_normal((4, 50)).astype(np.float32)
    ids = rng.permutation(200)[:200].reshape(4, 50).astype(np.int64)
    gs, gi = top_k_rows(s, ids, 7)
    for r in range(4):
        o = np.argsort(-s[r])[:7]
        np.testing.assert_array_equal(gi[r], ids[r][o])
    gs, gi = top_k_rows(s[:, :3], ids[:, :3], 5)
    assert (gi[:, 3:] == -1).all() and np.isneginf(gs[:, 3:]).all()


def test_topk_merge_keeps_the_smallest_ids_among_tied_candidates():
    """Segments' candidates with many equal scores (duplicated crops): the merged top k is the k smallest ids
    among the ties, as a full sort by (score desc, id asc) gives; a prefilter that cut ties arbitrarily fails."""
    rng = np.random.default_rng(1)
    k = 10
    levels = np.array([0.9, 0.5, 0.2], np.float32)
    s = levels[rng.integers(0, 3, (6, 400))]
    ids = np.stack([rng.permutation(10_000)[:400] for _ in range(6)]).astype(np.int64)
    ids[0, :50] = -1  # padding
    gs, gi = top_k_rows(s, ids, k)
    for r in range(6):
        ok = ids[r] >= 0
        o = np.lexsort((ids[r][ok], -s[r][ok]))[:k]
        np.testing.assert_array_equal(gi[r], ids[r][ok][o])
        np.testing.assert_array_equal(gs[r], s[r][ok][o])


def test_topk_of_wide_rows_with_ties_at_the_kth_score():
    """Rows wide enough for both narrowing passes (a sampled bound, then the exact k-th) with many scores equal
    to the k-th: the result is the full sort's, smallest ids first among the ties."""
    rng = np.random.default_rng(3)
    k = 20
    s = rng.standard_normal((8, 6000)).astype(np.float32)
    for r in range(8):  # 30 columns tied at about the 15th best score
        kth = np.sort(s[r])[::-1][14]
        s[r, rng.choice(6000, 30, replace=False)] = kth
    ids = np.stack([rng.permutation(100_000)[:6000] for _ in range(8)]).astype(np.int64)
    gs, gi = top_k_rows(s, ids, k)
    for r in range(8):
        o = np.lexsort((ids[r], -s[r]))[:k]
        np.testing.assert_array_equal(gi[r], ids[r][o])
        np.testing.assert_array_equal(gs[r], s[r][o])


@pytest.mark.parametrize("nq,n,k", [(50, 1000, 10), (64, 300, 400), (25, 2000, 1)])
def test_batch_exact_knn_against_brute_force(monkeypatch, nq, n, k):
    """The batch path (NumPy scores, FAISS heaps), in blocks over queries and rows: each query's best rows by a
    full sort of its inner products, padded with -1 past the rows."""
    monkeypatch.setattr(faiss_backend, "KNN_BLOCK_SCORES", 2048)
    monkeypatch.setattr(faiss_backend, "KNN_BLOCK_ROWS", 128)
    rng = np.random.default_rng(4)
    q, x = rng.standard_normal((nq, 16)).astype(np.float32), rng.standard_normal((n, 16)).astype(np.float32)
    s, r = faiss_backend.knn_inner_product(q, x, k)
    full = q.astype(np.float64) @ x.T.astype(np.float64)
    want = np.argsort(-full, axis=1, kind="stable")[:, :k]
    got = min(k, n)
    np.testing.assert_array_equal(r[:, :got], want)
    np.testing.assert_allclose(s[:, :got], np.take_along_axis(full, want, 1), atol=1e-5)
    assert (r[:, got:] == -1).all()


def test_batch_exact_knn_keeps_the_first_rows_among_ties(monkeypatch):
    """Duplicated rows: like FAISS's own search, the batch path keeps the earliest rows of a tie (so a segment,
    whose rows are in id order, gives its smallest ids; the backend orders ties by id after)."""
    monkeypatch.setattr(faiss_backend, "KNN_BLOCK_SCORES", 4096)
    monkeypatch.setattr(faiss_backend, "KNN_BLOCK_ROWS", 100)
    rng = np.random.default_rng(5)
    base = unit(rng, 3)
    x = base[rng.integers(0, 3, 900)]
    q = np.repeat(base, 10, axis=0)
    s, r = faiss_backend.knn_inner_product(q, x, 25)
    for i in range(len(q)):
        sims = np.round(x @ q[i], 5)
        np.testing.assert_array_equal(np.sort(r[i]), np.sort(np.lexsort((np.arange(900), -sims))[:25]))


def test_search_over_duplicated_vectors_returns_the_smallest_ids(folder):
    """Exact search over segments holding many copies of a few vectors: ties are broken by ascending id."""
    b = FaissBackend(folder, DIM, {"exact_threshold": 10_000})
    g = Gallery(b)
    rng = np.random.default_rng(2)
    base = unit(rng, 3)
    for c in range(4):
        ids = np.arange(300 * c, 300 * c + 300)[::-1].copy()
        g.commit(ids, base[rng.integers(0, 3, 300)], make_fields(rng, 300))
    q = base + 0.0
    got = b.search(q, 25)[1]
    for r in range(len(q)):
        sims = g.x @ q[r]
        want = g.ids[np.lexsort((g.ids, -np.round(sims, 5)))][:25]
        np.testing.assert_array_equal(got[r], want)


@pytest.mark.parametrize("n_want", [0, 1, 3, 8, 9, 20])
def test_code_filters_equal_isin(n_want):
    """A segment's rows pass a camera / source / track filter when their code is among the wanted ones: the
    comparisons (up to CODE_COMPARES codes) and the lookup table (more) against np.isin, codes -1 (no value)
    included."""
    rng = np.random.default_rng(n_want)
    n_codes = 24
    values = rng.integers(-1, n_codes, 5000).astype(np.int32)
    codes = np.sort(rng.choice(n_codes, n_want, replace=False)).astype(np.int32)
    got = faiss_backend._in_codes(values, codes, n_codes)
    assert got.dtype == bool and np.array_equal(got, np.isin(values, codes))
    assert np.array_equal(faiss_backend._in_codes(values[::7], codes, n_codes), np.isin(values[::7], codes))


def test_copies_finds_each_rows_first_copy():
    rng = np.random.default_rng(3)
    base = rng.standard_normal((30, 6)).astype(np.float32)
    base[5, :2] = base[4, :2]  # rows that share their first 8 bytes but differ after them are not copies
    x = base[rng.integers(0, 30, 400)]
    first_of: dict[bytes, int] = {}
    want = np.array([first_of.setdefault(row.tobytes(), i) for i, row in enumerate(x)])
    assert np.array_equal(faiss_backend.copies(x), want)
    assert faiss_backend.copies(base) is None and faiss_backend.copies(base[:1]) is None


def _rounding_search(q: np.ndarray, x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """An exact search whose product rounds later columns up (as OpenBLAS does for some columns on some CPUs)."""
    s = (q @ x.T).astype(np.float64) + 1e-6 * np.arange(len(x)) / max(len(x), 1)
    r = np.argsort(-s, axis=1, kind="stable")[:, :k]
    out = np.take_along_axis(s, r, 1).astype(np.float32)
    if r.shape[1] < k:
        pad = k - r.shape[1]
        out = np.concatenate([out, np.full((len(q), pad), -np.inf, np.float32)], 1)
        r = np.concatenate([r, np.full((len(q), pad), -1)], 1)
    return out, r.astype(np.int64)


@pytest.mark.parametrize("k", [1, 7, 40, 700])
def test_copies_tie_whatever_the_product_rounds(k):
    """Rows repeated many times, searched through a product that rounds by column: the lower rows of a group of
    copies come first, as a full sort of float64 products (each row's own) lists them. Without the copies'
    handling the rounding decides (checked, so the case really needs it)."""
    rng = np.random.default_rng(k)
    base = unit(rng, 12)
    x = base[rng.integers(0, 12, 600)]
    q = np.concatenate([base[:4], unit(rng, 4)])
    s, r = faiss_backend.search_with_copies(_rounding_search, q, x, k, faiss_backend.copies(x))
    full = (q.astype(np.float64)[:, None, :] * x.astype(np.float64)[None]).sum(-1)
    m = min(k, len(x))
    for j in range(len(q)):
        o = np.lexsort((np.arange(len(x)), -full[j]))[:m]
        assert r[j, :m].tolist() == o.tolist()
        np.testing.assert_allclose(s[j, :m], full[j][o], atol=1e-5)
        assert (r[j, m:] == -1).all() and np.isneginf(s[j, m:]).all()
    _, plain = faiss_backend.search_with_copies(_rounding_search, q, x, k, None)
    assert not np.array_equal(plain[:, :m], r[:, :m])


def test_commit_writes_only_new_rows_as_an_immutable_segment(folder):
    rng = np.random.default_rng(1)
    b = FaissBackend(folder, DIM, {})
    g = Gallery(b)
    g.add_random(rng, 200, 1)
    first = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    g.add_random(rng, 30, 1000)
    seg = g.state["segments"][-1]
    assert seg["rows"] == 30
    vec = np.load(folder / f"{seg['name']}.vec.npy")
    ids = np.load(folder / f"{seg['name']}.ids.npy")[0]
    assert vec.shape == (30, DIM) and vec.dtype == np.float32
    np.testing.assert_array_equal(ids, np.arange(1000, 1030))
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir() if p.name in first} == first
    g.commit(remove=[3, 1004])
    assert not any(f.endswith(".vec.npy") and f not in first for f in
                   set(os.listdir(folder)) - set(first) - {f"{seg['name']}.vec.npy"})
    assert g.state["tombstones"]["count"] == 2
    assert not any(".tmp" in f for f in os.listdir(folder))


def test_duplicate_and_live_ids_are_refused(folder):
    rng = np.random.default_rng(2)
    g = Gallery(FaissBackend(folder, DIM, {}))
    g.add_random(rng, 10, 1)
    with pytest.raises(InvalidInputError, match="already"):
        g.backend.prepare(5, Changes(add_ids=np.array([3]), add_vectors=unit(rng, 1)))
    with pytest.raises(InvalidInputError, match="twice"):
        g.backend.prepare(5, Changes(add_ids=np.array([50, 50]), add_vectors=unit(rng, 2)))
    with pytest.raises(InvalidInputError, match="shape"):
        g.backend.prepare(5, Changes(add_ids=np.array([50]), add_vectors=unit(rng, 1, DIM + 1)))


def test_auto_mode_builds_graphs_past_the_threshold(folder):
    rng = np.random.default_rng(3)
    b = FaissBackend(folder, DIM, {"exact_threshold": 300, "flat_limit": 100})
    g = Gallery(b)
    g.add_random(rng, 250, 1)
    assert g.compact(force=False) is None
    assert b.describe()["index_type"] == "flat"
    g.add_random(rng, 100, 1000)
    assert g.compact(force=False) is not None
    d = b.describe()
    assert d["index_type"] == "hnsw" and d["graph_m"] == 32
    assert [s["kind"] for s in d["segments"]] == ["graph"]
    wide = SearchParams(ef_search=4096)  # a beam wider than the gallery walks the whole graph: exact
    q = unit(rng, 5)
    assert_same(b.search(q, 10, params=wide), g.reference(q, 10))
    for c in range(12):
        g.add_random(rng, 100, 5000 + 100 * c)
        g.compact(force=False)
    d = b.describe()
    assert {s["kind"] for s in d["segments"]} <= {"graph", "flat"} and "graph" in {s["kind"] for s in d["segments"]}
    assert_same(b.search(q, 10, params=wide), g.reference(q, 10))
    cam = SearchFilter(cameras=("c3",))
    assert_same(b.search(q, 10, where=cam, params=wide), g.reference(q, 10, cam))
    g.commit(remove=g.ids[:40])
    assert_same(b.search(q, 10, params=wide), g.reference(q, 10))
    # the default beam finds most of the exact top-10 (these random points have no neighbour structure)
    got = b.search(q, 10)[1]
    want = g.reference(q, 10)[1]
    assert np.mean([len(np.intersect1d(a, w)) / 10 for a, w in zip(got, want)]) >= 0.8


def test_graph_segments_keep_their_vectors_once_in_the_graph(folder):
    """A graph segment has no .vec.npy: its vectors are the graph's storage, equal to what was added."""
    rng = np.random.default_rng(5)
    b = FaissBackend(folder, DIM, {"exact_threshold": 100, "flat_limit": 100})
    g = Gallery(b)
    g.add_random(rng, 150, 1)
    assert g.compact(force=False) is not None
    (seg,) = [s for s in g.state["segments"] if s.get("graph")]
    assert seg["vectors"] == "graph"
    assert (folder / f"{seg['name']}.hnsw").exists() and not (folder / f"{seg['name']}.vec.npy").exists()
    assert f"{seg['name']}.vec.npy" not in b.files(g.state)
    np.testing.assert_allclose(b.reconstruct(g.ids), g.x, atol=1e-6)
    reopened = FaissBackend(folder, DIM, {"exact_threshold": 100, "flat_limit": 100})
    reopened.load(g.state)
    q = unit(rng, 4)
    assert_same(reopened.search(q, 10, params=SearchParams(exact=True)), g.reference(q, 10))
    # a later merge reads the graph segment's vectors from the graph
    g.add_random(rng, 120, 1000)
    g.compact(force=True)
    np.testing.assert_allclose(b.reconstruct(g.ids), g.x, atol=1e-6)
    assert not list(folder.glob("*.vec.npy.tmp*"))


@pytest.mark.parametrize("dims", [None, 16])
def test_a_graph_grows_by_new_rows_until_its_cap_and_every_row_is_inserted_once(folder, monkeypatch, dims):
    """Merges add flat rows to the growing graph (no row is built into a graph twice) until ``graph_rows``; then a
    new graph starts. Readers of the previous state keep their answers; a graph with removed rows is not grown.
    A projected graph grows in its own projection."""
    rng = np.random.default_rng(11)
    opts = {"exact_threshold": 100, "flat_limit": 60, "graph_rows": 400, **({"graph_dims": dims} if dims else {})}
    b = FaissBackend(folder, DIM, opts)
    builds: list[tuple[int, int]] = []  # (rows of the new graph, rows it kept from the graph it grew)
    real_build = b._build_graph

    def spy(name, rows, vectors, grow=None):
        builds.append((rows, 0 if grow is None else grow.rows))
        return real_build(name, rows, vectors, grow=grow)

    monkeypatch.setattr(b, "_build_graph", spy)
    g = Gallery(b)
    wide = SearchParams(ef_search=4096)  # a beam wider than the gallery walks the whole graph: exact
    q = unit(rng, 6)
    start = 0
    grew = 0
    while start < 900:
        before = dict(g.state)
        reader = FaissBackend(folder, DIM, opts)  # a reader of the last committed state
        reader.load(before)
        ref_before = g.reference(q, 10)
        g.add_random(rng, 30, 10_000 + start)
        start += 30
        n_builds = len(builds)
        g.compact(force=False)
        if len(builds) > n_builds and builds[-1][1] > 0:
            grew += 1
            assert_same(reader.search(q, 10, params=wide), ref_before)  # the grown graph's source is untouched
        reader.close()
    graphs = [s for s in b.describe()["segments"] if s["kind"] == "graph"]
    assert grew >= 3 and len(graphs) >= 2
    assert sum(rows - kept for rows, kept in builds) == sum(s["rows"] for s in graphs)  # each row inserted once
    assert all(s["rows"] <= 400 for s in graphs[1:])
    assert all(s["graph_dim"] == (dims or DIM) for s in graphs)
    cam = SearchFilter(cameras=("c3",))
    assert_same(b.search(q, 10, params=wide), g.reference(q, 10))
    assert_same(b.search(q, 10, where=cam, params=wide), g.reference(q, 10, cam))
    # removed rows in the graph that would grow: the next merge leaves it as it is
    growing = max((s for s in graphs if s["rows"] < 400), key=lambda s: s["rows"], default=None)
    if growing is not None:
        seg = next(x for x in b._view.segments if x.name == growing["name"])
        g.commit(remove=np.asarray(seg.ids[:3]))
        g.add_random(rng, 60, 50_000)
        g.compact(force=False)
        names = {s["name"] for s in b.describe()["segments"]}
        assert growing["name"] in names
    assert_same(b.search(q, 10, params=wide), g.reference(q, 10))


@pytest.mark.parametrize("dims", [None, 16])
def test_a_grown_graph_that_is_never_committed_leaves_the_previous_state_intact(folder, dims):
    """Crash after a merge wrote the grown graph but before the commit that names it: the previous state opens
    with the same answers, cleanup removes only the uncommitted files, and the next merge grows the graph again."""
    rng = np.random.default_rng(12)
    opts = {"exact_threshold": 100, "flat_limit": 60, "graph_rows": 1000, **({"graph_dims": dims} if dims else {})}
    b = FaissBackend(folder, DIM, opts)
    g = Gallery(b)
    g.add_random(rng, 120, 1)
    assert g.compact(force=False) is not None  # the first graph
    g.add_random(rng, 70, 1000)
    committed = dict(g.state)
    files_before = {p.name: p.read_bytes() for p in folder.iterdir()}
    grown = b.compact(g.gen + 1, force=False)  # written, never committed (the process dies here)
    assert grown is not None and len([s for s in grown["segments"] if s.get("graph")]) == 1
    assert {p.name for p in folder.iterdir()} > set(files_before)
    (base,) = [s["name"] for s in committed["segments"] if s.get("graph")]
    (new,) = [s["name"] for s in grown["segments"] if s.get("graph")]
    # nothing the committed state reads was rewritten: every file keeps its bytes, except that a projected graph's
    # vectors file is shared with the grown graph (a hard link), which appended its rows after them
    for n, data in files_before.items():
        now = folder.joinpath(n).read_bytes()
        if dims and n == f"{base}.vec.npy":
            assert len(now) == len(data) + 70 * DIM * 4 and now[:len(data)] == data
            assert os.path.samefile(folder / n, folder / f"{new}.vec.npy")
        else:
            assert now == data, n
    reopened = FaissBackend(folder, DIM, opts)
    reopened.load(committed)
    wide = SearchParams(ef_search=4096)
    q = unit(rng, 5)
    assert_same(reopened.search(q, 10, params=wide), g.reference(q, 10))
    reopened.cleanup(committed, grace_seconds=0)
    assert {p.name for p in folder.iterdir()} == reopened.files(committed)
    again = reopened.compact(g.gen + 1, force=False)
    assert again is not None
    reopened.load(again)
    assert [s["kind"] for s in reopened.describe()["segments"]] == ["graph"]
    assert_same(reopened.search(q, 10, params=wide), g.reference(q, 10))
    np.testing.assert_allclose(reopened.reconstruct(g.ids), g.x, atol=1e-6)
    if dims:  # the base's file holds the first merge's rows past its own: this merge copied its rows instead
        (again_name,) = [s["name"] for s in again["segments"]]
        assert not os.path.samefile(folder / f"{base}.vec.npy", folder / f"{again_name}.vec.npy")


@pytest.mark.parametrize("locked", [False, True])
def test_a_grown_projected_graph_appends_its_rows_to_its_bases_vectors_file(folder, locked):
    """A projected graph grown at a merge writes only its new rows: its .vec.npy is a hard link of its base's with
    the rows appended. A reader of the previous state keeps its vectors and answers; the base's name can be retired
    while the grown one stays readable; the next merge appends again. While another merge holds the file
    (``flock``), a merge copies the rows into a file of its own instead, with the same vectors."""
    import fcntl

    rng = np.random.default_rng(13)
    opts = {"exact_threshold": 100, "flat_limit": 60, "graph_rows": 1000, "graph_dims": 16}
    b = FaissBackend(folder, DIM, opts)
    g = Gallery(b)
    g.add_random(rng, 120, 1)
    assert g.compact(force=False) is not None  # the first graph: a file of its own
    q = unit(rng, 5)
    wide = SearchParams(ef_search=4096)
    for step in range(2):
        g.add_random(rng, 70, 1000 + 100 * step)
        before = json.loads(json.dumps(g.state))
        (base,) = [s["name"] for s in before["segments"] if s.get("graph")]
        reader = FaissBackend(folder, DIM, opts)  # a reader of the last committed state
        reader.load(before)
        old_ids = np.asarray(next(x for x in reader._view.segments if x.name == base).ids)
        old_vec = reader.reconstruct(old_ids)
        ref_before = g.reference(q, 10)
        held = open(folder / f"{base}.vec.npy", "rb") if locked else None
        if held is not None:
            fcntl.flock(held.fileno(), fcntl.LOCK_EX)
        try:
            g.compact(force=False)
        finally:
            if held is not None:
                held.close()
        (grown,) = [s for s in g.state["segments"] if s.get("graph")]
        shared = os.path.samefile(folder / f"{base}.vec.npy", folder / f"{grown['name']}.vec.npy")
        assert shared is not locked
        size = (folder / f"{grown['name']}.vec.npy").stat().st_size
        assert size - grown["rows"] * DIM * 4 == 128  # the header (its row count is the first writer's)
        np.testing.assert_array_equal(reader.reconstruct(old_ids), old_vec)  # the reader's bytes are untouched
        assert_same(reader.search(q, 10, params=wide), ref_before)
        reader.close()
        b.cleanup(g.state, grace_seconds=0)  # the base's names go; the shared file lives on under the new name
        assert not (folder / f"{base}.vec.npy").exists()
        reopened = FaissBackend(folder, DIM, opts)
        reopened.load(g.state)
        np.testing.assert_allclose(reopened.reconstruct(g.ids), g.x, atol=1e-6)
        assert_same(reopened.search(q, 10, params=wide), g.reference(q, 10))
        reopened.close()


def test_a_segments_vectors_file_must_hold_its_rows(folder):
    """The state's row count says how many rows a segment maps: a vectors file with fewer rows, or whose header
    counts more rows than the state, is a corrupt index."""
    from reid_engine.errors import IndexCorruptError

    rng = np.random.default_rng(14)
    g = Gallery(FaissBackend(folder, DIM, {}))
    g.add_random(rng, 40, 1)
    (seg,) = g.state["segments"]
    path = folder / f"{seg['name']}.vec.npy"
    data = path.read_bytes()
    path.write_bytes(data[:-DIM * 4])
    with pytest.raises(IndexCorruptError, match=r"holds 39 rows, expected 40"):
        FaissBackend(folder, DIM, {}).load(g.state)
    path.write_bytes(data + data[-DIM * 4:])  # one row more than the state names: read as 40 rows
    b = FaissBackend(folder, DIM, {})
    b.load(g.state)
    np.testing.assert_allclose(b.reconstruct(g.ids), g.x, atol=1e-6)
    fewer = json.loads(json.dumps(g.state))
    fewer["segments"][0]["rows"] = 39
    with pytest.raises(IndexCorruptError):
        FaissBackend(folder, DIM, {}).load(fewer)


def test_graph_projection_keeps_the_leading_directions_of_the_rows():
    """graph_projection: orthonormal rows spanning the data's own subspace, as few as keep the energy asked
    (a multiple of 16); None where that is most of the dimensions; exactly ``dims`` when given."""
    from reid_engine.index.faiss_backend import graph_projection

    rng = np.random.default_rng(21)
    basis = np.linalg.qr(rng.standard_normal((96, 20)))[0]  # a 20-d subspace of 96 dimensions
    x = rng.standard_normal((3000, 20)) @ basis.T + 0.01 * rng.standard_normal((3000, 96))
    p = graph_projection(x, energy=0.99)
    assert p is not None and p.shape == (32, 96)
    np.testing.assert_allclose(p @ p.T, np.eye(32), atol=1e-5)
    # the subspace lies inside the projection's span: projecting back loses only the noise
    np.testing.assert_allclose((basis.T @ p.T) @ p, basis.T, atol=1e-3)
    assert graph_projection(rng.standard_normal((3000, 96)), energy=0.99) is None  # isotropic: no gain
    assert graph_projection(x[:50], energy=0.99) is None  # fewer rows than dimensions
    assert graph_projection(x, dims=8).shape == (8, 96)
    # a large mean shared by every row (as ReLU embeddings have) does not count as spread: the 20 directions that
    # tell the rows apart are kept although the mean alone holds 99% of the energy
    mean = 10.0 * np.linalg.qr(rng.standard_normal((96, 21)))[0][:, 0]
    spread = np.linalg.qr(np.c_[mean, basis])[0][:, 1:]  # orthogonal to the mean
    y = mean + 0.22 * rng.standard_normal((3000, 20)) @ spread.T + 0.001 * rng.standard_normal((3000, 96))
    p = graph_projection(y, energy=0.99)
    assert p is not None and p.shape == (32, 96)
    np.testing.assert_allclose((spread.T @ p.T) @ p, spread.T, atol=1e-3)
    assert graph_projection(x, dims=96) is None


def _low_rank(rng: np.random.Generator, n: int, basis: np.ndarray) -> np.ndarray:
    x = rng.standard_normal((n, basis.shape[1])) @ basis.T + 0.05 * rng.standard_normal((n, basis.shape[0]))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_auto_graphs_of_low_rank_vectors_are_projected_and_rescored_with_the_full_vectors(folder):
    """Vectors in a 12-d subspace of 64: the graph holds them projected (a .proj.npy, the full vectors kept in
    .vec.npy); a search's similarities are the exact inner products of the full vectors; a beam wider than the
    gallery is exact and the default beam finds the exact top-10; a missing projection is a corrupt index."""
    from reid_engine.errors import IndexCorruptError

    dim = 64
    rng = np.random.default_rng(22)
    basis = np.linalg.qr(rng.standard_normal((dim, 12)))[0]
    opts = {"exact_threshold": 500, "flat_limit": 200}
    b = FaissBackend(folder, dim, opts)
    ids = np.arange(1, 1201)
    x = _low_rank(rng, len(ids), basis)
    state = b.prepare(1, Changes(add_ids=ids, add_vectors=x, add_fields=make_fields(rng, len(ids))))
    b.load(state)
    state = b.compact(2, force=True)
    b.load(state)
    (seg,) = state["segments"]
    assert seg["kind"] == "graph" and 0 < seg["proj"] < dim
    assert {f"{seg['name']}.proj.npy", f"{seg['name']}.vec.npy", f"{seg['name']}.hnsw"} <= b.files(state)
    assert b.describe()["segments"][0]["graph_dim"] == seg["proj"]
    np.testing.assert_allclose(b.reconstruct(ids), x, atol=1e-6)
    q = _low_rank(rng, 20, basis)
    exact = q @ x.T
    ref_i = ids[np.argsort(-exact, axis=1, kind="stable")[:, :10]]
    s, i = b.search(q, 10)
    np.testing.assert_allclose(s, np.take_along_axis(exact, i - 1, 1), atol=1e-5)  # exact similarities
    assert np.mean([len(np.intersect1d(a, w)) for a, w in zip(i, ref_i)]) >= 9.5
    np.testing.assert_array_equal(b.search(q, 10, params=SearchParams(ef_search=4096))[1], ref_i)
    b.cleanup(state, grace_seconds=0)
    reopened = FaissBackend(folder, dim, opts)
    reopened.load(state)
    np.testing.assert_array_equal(reopened.search(q, 10)[1], i)
    (folder / f"{seg['name']}.proj.npy").unlink()
    with pytest.raises(IndexCorruptError, match="projection"):
        FaissBackend(folder, dim, opts).load(state)


@pytest.mark.parametrize("kernel_copy", [True, False])
def test_copied_rows_are_the_source_files_first_rows(tmp_path, monkeypatch, kernel_copy):
    """_copy_rows (a grown graph's segment starts with its base's rows): the bytes appended after what the file
    already holds are the source array's first rows, by the kernel's copy or by reading; a source shorter than
    asked is a corrupt index."""
    from reid_engine.errors import IndexCorruptError
    from reid_engine.index import faiss_backend as fb

    if not kernel_copy:
        monkeypatch.delattr(os, "copy_file_range", raising=False)
    rng = np.random.default_rng(41)
    x = rng.standard_normal((300, 24)).astype(np.float32)
    np.save(tmp_path / "src.npy", x)
    with open(tmp_path / "out.bin", "wb") as f:
        f.write(b"head")
        fb._copy_rows(f, tmp_path / "src.npy", 200, 24)
        f.write(b"tail")
    got = (tmp_path / "out.bin").read_bytes()
    assert got[:4] == b"head" and got[-4:] == b"tail"
    np.testing.assert_array_equal(np.frombuffer(got[4:-4], np.float32).reshape(200, 24), x[:200])
    with open(tmp_path / "bad.bin", "wb") as f, pytest.raises(IndexCorruptError, match="src.npy"):
        fb._copy_rows(f, tmp_path / "src.npy", 301, 24)


def test_rescoring_a_batch_equals_brute_force_with_or_without_dropping_pages(tmp_path, monkeypatch):
    """_rescore: the best k of each query's candidates by exact inner product, ties by id, -1 candidates ignored;
    a batch's blocks scored in threads, and the mapped pages dropped after it, change nothing."""
    from reid_engine.index import faiss_backend as fb

    rng = np.random.default_rng(23)
    x = rng.standard_normal((5000, 32)).astype(np.float32)
    x[7] = x[9]  # a tie: the smaller id first
    np.save(tmp_path / "v.npy", x)
    vec = np.asarray(np.load(tmp_path / "v.npy", mmap_mode="r"))
    q = rng.standard_normal((60, 32)).astype(np.float32)
    rows = np.stack([rng.choice(np.r_[0:7, 10:5000], 40, replace=False) for _ in range(60)])  # as a graph returns
    rows[:, :2] = [7, 9]
    rows[::3, -5:] = -1
    ids = np.where(rows >= 0, rows + 100, -1)
    want_s = np.full((60, 10), -np.inf, np.float32)
    want_i = np.full((60, 10), -1, np.int64)
    for j in range(60):
        r = rows[j][rows[j] >= 0]
        s = x[r] @ q[j]
        o = np.lexsort((r, -s))[:10]
        want_s[j], want_i[j] = s[o], r[o] + 100
    monkeypatch.setattr(fb, "RESCORE_BLOCK", 100)  # several blocks
    for release in (None, tmp_path / "v.npy"):
        s, i = fb._rescore(vec, q, rows, ids, 10, release=release)
        np.testing.assert_array_equal(i, want_i)
        np.testing.assert_allclose(s, want_s, rtol=1e-5, atol=1e-5)


def _mapped_rss_kib(path: Path) -> int:
    """Resident KiB of this process's mappings of the file ``path`` (/proc/self/smaps)."""
    total, inside, want = 0, False, str(path.resolve())
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split()
        if head and "-" in head[0] and len(head) >= 5 and not head[0].endswith(":"):
            inside = len(head) == 6 and head[5] == want
        elif inside and line.startswith("Rss:"):
            total += int(head[1])
    return total


@pytest.mark.skipif(not Path("/proc/self/smaps").exists(), reason="needs Linux /proc/self/smaps")
def test_a_batch_rescoring_leaves_none_of_the_file_it_read_resident(tmp_path):
    """A batch search's re-scoring reads rows all over the mapped vectors; once it is done they are no longer
    resident in this process (a single query's re-scoring keeps them, as the query path does)."""
    from reid_engine.index import faiss_backend as fb

    rng = np.random.default_rng(5)
    x = rng.standard_normal((16384, 128)).astype(np.float32)  # 8 MB
    np.save(tmp_path / "v.npy", x)
    path = tmp_path / "v.npy"
    vec = np.load(path, mmap_mode="r")
    q = rng.standard_normal((512, 128)).astype(np.float32)
    rows = np.arange(512 * 32).reshape(512, 32)  # every row of the file once
    s_keep, i_keep = fb._rescore(vec, q, rows, rows, 8)
    kept = _mapped_rss_kib(path)
    assert kept > 0.8 * x.nbytes / 1024  # read whole and kept
    del vec
    vec = np.load(path, mmap_mode="r")  # a fresh mapping: nothing resident yet
    s, i = fb._rescore(vec, q, rows, rows, 8, release=path)
    assert _mapped_rss_kib(path) < 0.1 * x.nbytes / 1024
    np.testing.assert_array_equal(i, i_keep)
    np.testing.assert_array_equal(s, s_keep)


def test_graph_codes_option_is_validated_and_sets_how_new_projected_graphs_keep_their_rows(folder):
    """``graph_codes``: "sq8" (the default) or "float"; either way a projected graph's search re-scores its
    candidates with the full vectors, so a beam as wide as the graph gives the exact top-k, similarities included,
    and the default beam nearly all of it; reopened, the graph keeps its kind."""
    for bad in ("SQ8", "pq", 8, None, True):
        with pytest.raises(InvalidInputError, match="graph_codes"):
            FaissBackend(folder, DIM, {"graph_codes": bad})
    assert FaissBackend(folder, DIM, {}).graph_codes == "sq8"
    dim = 64
    rng = np.random.default_rng(12)
    basis = np.linalg.qr(rng.standard_normal((dim, 12)))[0]
    ids = np.arange(1, 1201)
    x = _low_rank(rng, len(ids), basis)
    q = _low_rank(rng, 30, basis)
    exact = q.astype(np.float64) @ x.T.astype(np.float64)
    want = ids[np.argsort(-exact, axis=1, kind="stable")[:, :10]]
    for codes in ("sq8", "float"):
        sub = folder / codes
        sub.mkdir()
        opts = {"exact_threshold": 500, "flat_limit": 200, "graph_codes": codes}
        b = FaissBackend(sub, dim, opts)
        b.load(b.prepare(1, Changes(add_ids=ids, add_vectors=x, add_fields=make_fields(rng, len(ids)))))
        state = b.compact(2, force=True)
        b.load(state)
        (seg,) = b.describe()["segments"]
        assert seg["kind"] == "graph" and 0 < seg["graph_dim"] < dim and seg["graph_codes"] == codes
        s, i = b.search(q, 10, params=SearchParams(ef_search=4096))
        np.testing.assert_array_equal(i, want)
        np.testing.assert_allclose(s, np.take_along_axis(exact, want - 1, 1), atol=1e-5)
        assert np.mean([len(np.intersect1d(a, w)) for a, w in zip(b.search(q, 10)[1], want)]) >= 9.5
        reopened = FaissBackend(sub, dim, {**opts, "graph_codes": "float" if codes == "sq8" else "sq8"})
        reopened.load(state)
        assert reopened.describe()["segments"][0]["graph_codes"] == codes


def test_graph_dims_option_is_validated(folder):
    for bad in (0, -3, "16", 2.5, True):
        with pytest.raises(InvalidInputError, match="graph_dims"):
            FaissBackend(folder, DIM, {"graph_dims": bad})
    assert FaissBackend(folder, DIM, {"graph_dims": "auto"}).graph_dims is None


def test_single_queries_searched_segment_by_segment_in_threads_equal_the_batch(folder):
    """A query alone (segments searched side by side in threads) gets the same list as inside a large batch."""
    rng = np.random.default_rng(8)
    b = FaissBackend(folder, DIM, {"exact_threshold": 100, "flat_limit": 100, "graph_rows": 100})
    g = Gallery(b)
    for c in range(5):
        g.add_random(rng, 80, 1000 * (c + 1))
        g.compact(force=False)
    assert len(b.describe()["segments"]) >= 3
    q = unit(rng, 25)
    cam = SearchFilter(cameras=("c1", "c2"))
    for where in (None, cam):
        batch = b.search(q, 10, where=where)
        for r in (0, 7, 24):
            alone = b.search(q[r:r + 1], 10, where=where)
            np.testing.assert_array_equal(alone[1][0], batch[1][r])
            np.testing.assert_allclose(alone[0][0], batch[0][r], rtol=1e-5)
        wide = SearchParams(ef_search=4096)
        assert_same(b.search(q[:3], 10, where=where, params=wide), g.reference(q[:3], 10, where))


def test_default_graph_beam_widens_with_the_graph_but_a_chosen_one_is_kept():
    from reid_engine.index.faiss_backend import GRAPH_BEAM_ROWS, graph_beam

    assert graph_beam(128, 100, GRAPH_BEAM_ROWS) == 200  # twice the results on a small graph
    assert graph_beam(128, 10, GRAPH_BEAM_ROWS) == 128
    assert 400 <= graph_beam(128, 100, 4 * GRAPH_BEAM_ROWS) <= 800
    assert graph_beam(128, 100, 8 * GRAPH_BEAM_ROWS) > graph_beam(128, 100, 4 * GRAPH_BEAM_ROWS)
    assert graph_beam(40, 16, 8 * GRAPH_BEAM_ROWS, scaled=False) == 40  # the caller's beam (the neighbour hook)
    assert graph_beam(40, 100, 8 * GRAPH_BEAM_ROWS, scaled=False) == 200  # never narrower than 2k
    assert graph_beam(128, 5000, 10 ** 7) == 4096
    assert graph_beam(128, 10, 16 * GRAPH_BEAM_ROWS) >= 512  # the default efSearch widens too
    assert graph_beam(128, 10, 16 * GRAPH_BEAM_ROWS, scaled=False) == 128


def test_ivf_factory_trains_past_the_threshold(folder):
    rng = np.random.default_rng(3)
    b = FaissBackend(folder, DIM, {"factory": "IVF16,Flat", "exact_threshold": 300, "flat_limit": 100,
                                   "nprobe": 10_000})
    g = Gallery(b)
    g.add_random(rng, 250, 1)
    g.compact(force=False)
    g.add_random(rng, 100, 1000)
    assert g.compact(force=False) is not None
    d = b.describe()
    assert d["index_type"] == "ivf_flat" and d["nlist"] == 16
    q = unit(rng, 5)
    assert_same(b.search(q, 10), g.reference(q, 10))  # nprobe covers every list


def test_flat_factory_never_trains(folder):
    rng = np.random.default_rng(4)
    b = FaissBackend(folder, DIM, {"factory": "Flat", "exact_threshold": 50, "merge_factor": 2})
    g = Gallery(b)
    for c in range(5):
        g.add_random(rng, 40, 100 * c)
        g.compact(force=False)
    d = b.describe()
    assert d["index_type"] == "flat" and d["nlist"] is None and len(d["segments"]) <= 3
    q = unit(rng, 3)
    assert_same(b.search(q, 10, params=SearchParams(exact=False)), g.reference(q, 10))


def test_compaction_drops_tombstones_and_merged_files(folder):
    rng = np.random.default_rng(5)
    b = FaissBackend(folder, DIM, {})
    g = Gallery(b)
    g.add_random(rng, 50, 1)
    g.add_random(rng, 50, 100)
    g.commit(remove=[1, 2, 101])
    old = set(os.listdir(folder))
    g.compact(force=True)
    d = b.describe()
    assert d["tombstones"] == 0 and len(d["segments"]) == 1 and d["segments"][0]["rows"] == 97
    assert g.state["tombstones"] is None
    b.cleanup(g.state, grace_seconds=0)
    left = set(os.listdir(folder))
    assert not (left & old)
    assert g.compact(force=True) is None


def test_cleanup_leaves_foreign_files_alone(folder):
    b = FaissBackend(folder, DIM, {})
    g = Gallery(b)
    g.add_random(np.random.default_rng(6), 10, 1)
    (folder / "manifest.json").write_text("{}")
    (folder / "seg-000099-abcdef12.vec.npy.tmpab12").write_bytes(b"x")
    old = time.time() - 3600
    os.utime(folder / "seg-000099-abcdef12.vec.npy.tmpab12", (old, old))
    b.cleanup(g.state, grace_seconds=60)
    assert (folder / "manifest.json").exists()
    assert not (folder / "seg-000099-abcdef12.vec.npy.tmpab12").exists()


def test_reload_reuses_mapped_segments(folder):
    rng = np.random.default_rng(7)
    b = FaissBackend(folder, DIM, {})
    g = Gallery(b)
    g.add_random(rng, 10, 1)
    seg = b._view.segments[0]
    g.add_random(rng, 10, 100)
    assert b._view.segments[0] is seg


def test_ivf_filters_use_exact_rows_when_selective(folder):
    """Selective filters on a trained IVF with few probes still find the exact filtered top-k."""
    rng = np.random.default_rng(8)
    b = FaissBackend(folder, DIM, {"factory": "IVF32,Flat", "nprobe": 1, "flat_limit": 100})
    g = Gallery(b)
    for c in range(4):
        g.add_random(rng, 500, 1000 * c)
        g.compact(force=False)
    g.compact(force=True)
    assert b.describe()["segments"][0]["kind"] == "ivf"
    q = unit(rng, 5)
    for where in (SearchFilter(tracks=("t7",)), SearchFilter(ids=np.arange(0, 4000, 50)),
                  SearchFilter(cameras=("rare",)), SearchFilter(time_from=10.0, time_to=30.0)):
        assert_same(b.search(q, 10, where=where), g.reference(q, 10, where))


def test_describe_reports_storage(folder):
    rng = np.random.default_rng(9)
    b = FaissBackend(folder, DIM, {})
    g = Gallery(b)
    g.add_random(rng, 64, 1)
    d = b.describe()
    assert d["bytes_on_disk"] >= 64 * DIM * 4
    assert d["segments"][0]["rows"] == 64 and d["count"] == 64
    json.dumps(d)


def _rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs Linux /proc/self/maps")
def test_releasing_a_mapped_graph_drops_its_pages_but_never_its_data(tmp_path):
    """The pages of a memory-mapped graph's vectors leave this process's memory and read back the same; an array
    that is not a read-only mapping of that file (anonymous memory, another file) is left alone."""
    import faiss

    from reid_engine.index.faiss_backend import _graph_vectors, _release_pages

    rng = np.random.default_rng(4)
    x = rng.standard_normal((20000, 256)).astype(np.float32)
    index = faiss.IndexHNSWFlat(256, 8)
    index.add(x)
    path = tmp_path / "g.hnsw"
    faiss.write_index(index, str(path))
    graph = faiss.read_index(str(path), faiss.IO_FLAG_MMAP_IFC)
    vec = _graph_vectors(graph, 20000, 256)
    assert np.array_equal(vec, x)  # every page is now resident
    before = _rss_mib()
    _release_pages(vec, path)
    assert before - _rss_mib() > 0.5 * x.nbytes / 2**20
    assert np.array_equal(vec, x)
    anon = x.copy()
    _release_pages(anon, path)  # not a mapping of that file
    _release_pages(vec, tmp_path / "other.hnsw")  # the wrong file
    assert np.array_equal(anon, x) and np.array_equal(vec, x)


@pytest.mark.parametrize("codes", ["float", "sq8"])
def test_a_graph_copied_for_growing_is_the_file_byte_for_byte_and_grows_in_place(tmp_path, codes):
    """The private copy a merge grows (read block by block from the mapped file into buffers with room for the new
    rows) is what ``faiss.read_index`` reads: the same bytes when written back, the same bytes again after the same
    rows are added to both (one thread: insertion order fixed), and adding within the room never moves its
    vectors (no reallocation, which would briefly hold them twice). For graphs of float rows and of 8-bit codes
    (whose trained ranges the copy keeps: rows added later are coded alike)."""
    import faiss

    from reid_engine.index import faiss_backend as fb

    rng = np.random.default_rng(9)
    x = rng.standard_normal((3000, 32)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    index = fb._new_graph(32, 16, codes, x[:1000])
    assert isinstance(index, faiss.IndexHNSWSQ if codes == "sq8" else faiss.IndexHNSWFlat)
    index.add(x[:2000])
    path = tmp_path / "g.hnsw"
    faiss.write_index(index, str(path))
    old_block = fb._COPY_BLOCK
    fb._COPY_BLOCK = 4096  # many blocks, each dropped after copying
    try:
        copy = fb._graph_copy(path, 3000, 16)
    finally:
        fb._COPY_BLOCK = old_block
    assert copy.ntotal == 2000 and copy.hnsw.neighbors.is_owned
    out = tmp_path / "copy.hnsw"
    faiss.write_index(copy, str(out))
    assert out.read_bytes() == path.read_bytes()
    codes = faiss.downcast_index(copy.storage).codes
    start = codes.data()
    plain = faiss.read_index(str(path))
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        copy.add(x[2000:])
        plain.add(x[2000:])
    finally:
        faiss.omp_set_num_threads(threads)
    assert codes.data() == start
    faiss.write_index(copy, str(out))
    faiss.write_index(plain, str(tmp_path / "plain.hnsw"))
    assert out.read_bytes() == (tmp_path / "plain.hnsw").read_bytes()
    assert np.array_equal(copy.search(x[:50], 5)[1], plain.search(x[:50], 5)[1])


def test_a_graph_read_through_before_mapping_is_the_graph_faiss_reads(tmp_path):
    """Opening reads a graph file through before FAISS maps it (cold page caches): the index is the one
    ``faiss.read_index`` gives, still mapped, and a damaged or missing file still fails in FAISS."""
    import faiss
    from reid_engine.index import faiss_backend as fb

    rng = np.random.default_rng(3)
    x = rng.standard_normal((1500, 24)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    index = fb._new_graph(24, 16, "sq8", x[:1000])
    index.add(x)
    path = tmp_path / "g.hnsw"
    faiss.write_index(index, str(path))
    old_block = fb.PREREAD_BLOCK
    fb.PREREAD_BLOCK = 4096  # many blocks
    try:
        got = fb._read_mapped_graph(path)
    finally:
        fb.PREREAD_BLOCK = old_block
    assert not got.hnsw.neighbors.is_owned  # the links are a view of the mapping
    want = faiss.read_index(str(path))
    for a, b in zip(got.search(x[:40], 7), want.search(x[:40], 7)):
        np.testing.assert_array_equal(a, b)
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(RuntimeError):
        fb._read_mapped_graph(path)
    with pytest.raises(RuntimeError):
        fb._read_mapped_graph(tmp_path / "missing.hnsw")


def test_growing_graphs_under_random_adds_removals_and_merges_equal_brute_force(folder):
    """Random commits (adds, removals, re-adds of removed ids) with merges after each, a small graph cap so that
    graphs grow, seal and are rebuilt: a wide-beam search always equals brute force over the live rows."""
    rng = np.random.default_rng(21)
    opts = {"exact_threshold": 60, "flat_limit": 40, "merge_factor": 3, "graph_rows": 150, "ef_search": 4096}
    b = FaissBackend(folder, DIM, opts)
    g = Gallery(b)
    q = unit(rng, 4)
    next_id = 0
    removed: list[int] = []
    grew = 0
    for _ in range(40):
        n_add = int(rng.integers(5, 35))
        add = np.arange(next_id, next_id + n_add, dtype=np.int64)
        next_id += n_add
        if removed and rng.random() < 0.3:  # a removed id comes back with a new vector
            add = np.concatenate([add, [removed.pop()]]).astype(np.int64)
        rm = None
        if len(g.ids) > 20 and rng.random() < 0.4:
            rm = rng.choice(np.setdiff1d(g.ids, add), int(rng.integers(1, 12)), replace=False)
            removed.extend(int(v) for v in rm)
        g.commit(add, unit(rng, len(add)), make_fields(rng, len(add)), remove=rm)
        before = {s["name"] for s in g.state["segments"] if s.get("graph")}
        g.compact(force=False)
        after = {s["name"] for s in g.state["segments"] if s.get("graph")}
        grew += int(bool(after - before) and bool(before - after))
        assert_same(b.search(q, 10), g.reference(q, 10))
        cam = SearchFilter(cameras=("c1",))
        assert_same(b.search(q, 10, where=cam), g.reference(q, 10, cam))
        np.testing.assert_allclose(b.reconstruct(g.ids[:5]), g.x[:5], atol=1e-6)
    assert grew >= 3
    assert len([s for s in b.describe()["segments"] if s["kind"] == "graph"]) >= 2


@pytest.mark.parametrize("dims", [None, 16])
def test_beam_scale_multiplies_the_default_beam_only(folder, monkeypatch, dims):
    """``SearchParams.beam_scale`` scales the beam the index picks (never below k), not one the caller set;
    the answers stay exact similarities of live rows, best first, and a narrower beam finds no more."""
    rng = np.random.default_rng(12)
    b = FaissBackend(folder, DIM, {"exact_threshold": 100, "flat_limit": 100, **({"graph_dims": dims} if dims else {})})
    g = Gallery(b)
    g.add_random(rng, 400, 1)
    g.compact(force=True)
    assert all(s.get("graph") for s in g.state["segments"])
    made = []
    real = faiss_backend.faiss.SearchParametersHNSW

    def spy():
        made.append(real())
        return made[-1]

    monkeypatch.setattr(faiss_backend.faiss, "SearchParametersHNSW", spy)
    q = unit(rng, 20)
    beams, recall = {}, {}
    for scale in (None, 0.5, 0.01):
        made.clear()
        s, i = b.search(q, 10, params=SearchParams(beam_scale=scale))
        beams[scale] = made[-1].efSearch
        x = dict(zip(g.ids.tolist(), g.x))
        np.testing.assert_allclose(s, [[x[j] @ qq for j in row] for row, qq in zip(i, q)], atol=1e-5)
        assert all(len(set(row)) == 10 and np.all(np.diff(sr) <= 1e-6) for row, sr in zip(i, s))
        recall[scale] = np.mean([len(np.intersect1d(a, w)) / 10 for a, w in zip(i, g.reference(q, 10)[1])])
    assert beams[0.5] == -(-beams[None] // 2) and beams[0.01] == 10  # half; never below k
    assert recall[None] >= recall[0.5] >= recall[0.01] and recall[None] >= 0.8
    made.clear()
    b.search(q, 10, params=SearchParams(ef_search=300, beam_scale=0.5))
    assert made[-1].efSearch == 300  # a beam the caller chose is used as given


@pytest.mark.parametrize("bad", [0, -1.0, float("nan"), float("inf"), True, "0.5"])
def test_a_bad_beam_scale_is_a_typed_error(bad):
    with pytest.raises(InvalidInputError, match="beam_scale"):
        SearchParams(beam_scale=bad)


def test_an_approximate_tail_is_the_projections_best_rows_rescored_and_never_a_removed_one(folder):
    """``SearchParams(approx_tail=True)`` in an index with a projected graph: the flat segments' answers are
    each query's best ``ef_search`` tail rows by inner product in the graph's projection (NumPy here),
    re-scored with the full vectors, and merged with the graph's answers as without it. Removed rows are never
    answers; the exact regime, a filtered search and a search without it are unchanged."""
    dim = 64
    rng = np.random.default_rng(31)
    basis = np.linalg.qr(rng.standard_normal((dim, 12)))[0]
    b = FaissBackend(folder, dim, {"exact_threshold": 500, "flat_limit": 100_000, "merge_factor": 100})
    g = Gallery(b)
    q = _low_rank(rng, 40, basis)
    g.commit(np.arange(1, 901), _low_rank(rng, 900, basis), make_fields(rng, 900))
    for a, w in zip(b.search(q, 10, params=SearchParams(approx_tail=True)), b.search(q, 10)):
        np.testing.assert_array_equal(a, w)  # no graph yet: exact either way
    g.compact(force=True)
    for start in (901, 1201):
        g.commit(np.arange(start, start + 300), _low_rank(rng, 300, basis), make_fields(rng, 300))
    removed = np.arange(1201, 1251)
    g.commit(remove=removed)
    graph = [s for s in g.state["segments"] if s.get("proj")]
    assert len(graph) == 1 and len(g.state["segments"]) == 3
    proj = np.load(folder / f"{graph[0]['name']}.proj.npy")
    tail = g.ids > 900  # the live rows of the two flat segments
    want = 24
    s, i = b.search(q, 10, params=SearchParams(ef_search=want, approx_tail=True))
    only_graph = FaissBackend(folder, dim, b.options)  # the graph's own answers: a state of the graph alone
    only_graph.load({**g.state, "segments": graph, "tombstones": None})
    gs, gi = only_graph.search(q, 10, params=SearchParams(ef_search=want))
    cand = np.argsort(-((q @ proj.T) @ (g.x[tail] @ proj.T).T), axis=1, kind="stable")[:, :want]
    ts = np.take_along_axis(q @ g.x[tail].T, cand, 1)
    ref_s, ref_i = top_k_rows(np.concatenate([gs, ts], 1), np.concatenate([gi, g.ids[tail][cand]], 1), 10)
    np.testing.assert_array_equal(i, ref_i)
    np.testing.assert_allclose(s, ref_s, atol=1e-5)
    assert not np.isin(i, removed).any()
    exact = g.reference(q, 10)[1]
    assert np.mean([len(np.intersect1d(a, w)) / 10 for a, w in zip(i, exact)]) >= 0.9
    flt = SearchFilter(cameras=("c0", "c1", "c2"))  # a filtered search keeps its exact tail
    for a, w in zip(b.search(q, 10, where=flt, params=SearchParams(ef_search=want, approx_tail=True)),
                    b.search(q, 10, where=flt, params=SearchParams(ef_search=want))):
        np.testing.assert_array_equal(a, w)


@pytest.mark.parametrize("bad", [1, "yes", 0.0])
def test_a_bad_approx_tail_is_a_typed_error(bad):
    with pytest.raises(InvalidInputError, match="approx_tail"):
        SearchParams(approx_tail=bad)
