"""The Milvus vector backend on Milvus Lite: searches against a numpy reference, generations, crash safety."""
from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pymilvus")
pytest.importorskip("milvus_lite")

from reid_engine.errors import InvalidInputError, UnsupportedOperationError  # noqa: E402
from reid_engine.index.backend import Changes, SearchFilter, SearchParams, get_backend  # noqa: E402
from reid_engine.index.milvus_backend import MilvusBackend, choose_index, filter_expr, quote  # noqa: E402

from .backend_conformance import BackendConformance  # noqa: E402

DIM = 12
CAMS = [None, "01", "02", 'q"uote', "back\\slash", "it's"]


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def make_data(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    ids = np.arange(10, 10 + 3 * n, 3, dtype=np.int64)  # not 0..n-1, to catch id/row mix-ups
    vecs = unit(rng.standard_normal((n, DIM)))
    fields = {
        "camera": np.array([CAMS[i % len(CAMS)] for i in range(n)], dtype=object),
        "source": np.array([f"video{i % 3}.avi" for i in range(n)], dtype=object),
        "track": np.array([None if i % 5 == 0 else f"t{i % 7}" for i in range(n)], dtype=object),
        "timestamp": np.array([np.nan if i % 4 == 0 else 1000.0 + i for i in range(n)]),
    }
    return ids, vecs, fields


def reference(vecs, ids, fields, q, k, where=None):
    """Brute-force top-k by inner product over the rows the filter lets through (ties by id)."""
    keep = np.ones(len(ids), bool) if where is None else where.mask(ids, fields)
    s_all = q @ vecs[keep].T
    out_s = np.full((len(q), k), -np.inf, np.float32)
    out_i = np.full((len(q), k), -1, np.int64)
    for r in range(len(q)):
        order = np.lexsort((ids[keep], -s_all[r]))[:k]
        out_s[r, : len(order)] = s_all[r][order]
        out_i[r, : len(order)] = ids[keep][order]
    return out_s, out_i


def raw_rows(b: MilvusBackend) -> set[str]:
    """Every row the collection holds, visible or not, as "id@generation"."""
    name = b._committed()["collection"]
    if not b.client.has_collection(name):
        return set()
    rows = b.client.query(name, filter="id >= 0", output_fields=["id", "generation"], limit=16384)
    return {f"{r['id']}@{r['generation']}" for r in rows}


_SHARED: list[Path] = []


def shared_lite_file() -> str:
    """One Milvus Lite file for the whole module: each index gets its own collection (as on a server)."""
    if not _SHARED:
        _SHARED.append(Path(tempfile.mkdtemp(prefix="reid-milvus-")) / "shared.db")
    return str(_SHARED[0])


class TestMilvusConformance(BackendConformance):
    """The shared suite on Milvus Lite; "storage" is the set of rows in the index's collection."""

    def make_backend(self, tmp_path, dim):
        return MilvusBackend(tmp_path / "milvus", dim, {"uri": shared_lite_file()})

    def make_approx_backend(self, tmp_path, dim):
        return MilvusBackend(tmp_path / "milvus", dim, {"uri": shared_lite_file(), "exact_threshold": 500})

    def storage_files(self, backend):
        return raw_rows(backend)

    @pytest.mark.slow
    def test_approximate_regime_recall(self, tmp_path):
        super().test_approximate_regime_recall(tmp_path)


@pytest.fixture
def backend(tmp_path: Path):
    b = get_backend("milvus")(tmp_path, DIM, {})
    b.load(b.empty_state())
    yield b
    b.close()


def test_registered_and_expressions():
    assert get_backend("milvus") is MilvusBackend
    assert quote('a"b\\c') == '"a\\"b\\\\c"'
    expr = filter_expr(SearchFilter(cameras=("x",), exclude_cameras=("y",), time_from=1.5, time_to=2.0))
    assert expr == 'camera in ["x"] and (camera is null or camera not in ["y"]) and timestamp >= 1.5 and timestamp <= 2.0'
    assert choose_index(100)["type"] == "FLAT"
    ivf = choose_index(1_000_000)
    assert ivf["type"] == "IVF_FLAT" and ivf["params"]["nlist"] == 4000


def test_search_and_filters_match_numpy(backend: MilvusBackend):
    ids, vecs, fields = make_data(120)
    st = backend.prepare(1, Changes(ids, vecs, fields))
    assert backend.count == 0  # nothing visible before load
    backend.load(st)
    assert backend.count == 120
    q = unit(np.random.default_rng(5).standard_normal((4, DIM)))
    filters = [
        None,
        SearchFilter(cameras=("01", 'q"uote')),
        SearchFilter(exclude_cameras=("01", "it's", "back\\slash")),
        SearchFilter(sources=("video1.avi",), time_from=1010.0, time_to=1080.0),
        SearchFilter(tracks=("t3",)),
        SearchFilter(ids=ids[::7]),
        SearchFilter(ids=ids[::2], cameras=("02",)),
    ]
    for where in filters:
        s, i = backend.search(q, 9, where)
        rs, ri = reference(vecs, ids, fields, q, 9, where)
        np.testing.assert_array_equal(i, ri, err_msg=str(where))
        np.testing.assert_allclose(s[ri >= 0], rs[ri >= 0], atol=1e-5)
    s, i = backend.search(q, 200)  # k above the count: padded
    assert (i[:, 120:] == -1).all() and np.isneginf(s[:, 120:]).all() and (i[:, :120] >= 0).all()
    np.testing.assert_allclose(backend.reconstruct(ids[[5, 2]]), vecs[[5, 2]], atol=1e-6)
    np.testing.assert_array_equal(backend.contains([ids[0], 11, ids[-1]]), [True, False, True])
    np.testing.assert_array_equal(backend.live_ids(), ids)
    with pytest.raises(InvalidInputError):
        backend.reconstruct([11])
    with pytest.raises(InvalidInputError):
        backend.search(q, 0)
    with pytest.raises(InvalidInputError):
        backend.search(q[:, :5], 3)


def test_the_embedded_server_logs_no_tracebacks_for_calls_the_client_expects_it_to_refuse(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    """Milvus Lite's in-process gRPC server logged an error with a traceback each time the client waited for an
    index (``AllocTimestamp``, which the client asks for and expects refused); the CLI printed it."""
    caplog.set_level(logging.WARNING)
    b = get_backend("milvus")(tmp_path, DIM, {})
    try:
        b.load(b.empty_state())
        ids, vecs, fields = make_data(30)
        b.load(b.prepare(1, Changes(ids, vecs, fields)))
        assert b.count == 30
    finally:
        b.close()
    noisy = [r for r in caplog.records if r.name.startswith("grpc") and r.levelno >= logging.ERROR]
    assert not noisy, [r.getMessage() for r in noisy]


def test_remove_replace_and_id_reuse(backend: MilvusBackend):
    ids, vecs, fields = make_data(30)
    backend.load(backend.prepare(1, Changes(ids, vecs, fields)))
    gone = ids[[0, 4]]
    st = backend.prepare(2, Changes(remove_ids=np.r_[gone, 99999]))
    assert st["tombstones"] == sorted(gone.tolist())
    assert backend.contains(gone).all()  # the removal is not visible before load
    backend.load(st)
    assert backend.count == 28 and not backend.contains(gone).any()
    assert not np.isin(backend.search(vecs[[0]], 30)[1], gone).any()
    # the same id comes back later with another vector, and one is replaced within a change
    new = unit(np.ones((2, DIM)))
    backend.load(backend.prepare(3, Changes(np.r_[gone[0], ids[1]], new, {}, remove_ids=ids[[1]])))
    assert backend.count == 29
    np.testing.assert_allclose(backend.reconstruct([gone[0], ids[1]]), new, atol=1e-6)
    with pytest.raises(InvalidInputError, match="already in the index"):
        backend.prepare(4, Changes(ids[[2]], vecs[[2]], {}))
    with pytest.raises(InvalidInputError, match="twice"):
        backend.prepare(4, Changes(np.array([7, 7]), vecs[:2], {}))
    st = backend.compact(5)
    assert st is None or st["tombstones"] == []


def test_uncommitted_rows_stay_invisible_after_a_crash(tmp_path: Path):
    B = get_backend("milvus")
    ids, vecs, fields = make_data(20)
    b = B(tmp_path, DIM, {})
    b.load(b.empty_state())
    committed = b.prepare(1, Changes(ids[:10], vecs[:10], {k: v[:10] for k, v in fields.items()}))
    b.load(committed)
    b.prepare(2, Changes(ids[10:], vecs[10:], {k: v[10:] for k, v in fields.items()}, remove_ids=ids[:3]))
    b.close()  # the writer dies here: the SQL commit of generation 2 never happened

    r = B(tmp_path, DIM, {})  # a reader opens the committed state
    r.load(committed)
    assert r.count == 10
    np.testing.assert_array_equal(r.live_ids(), ids[:10])
    assert not np.isin(r.search(vecs[10:], 5)[1], ids[10:]).any()
    assert r.contains(ids[:3]).all()
    # the next writer reuses generation 2 (and the same ids) after cleanup
    r.cleanup(committed)
    st = r.prepare(2, Changes(ids[10:12], vecs[10:12], {}))
    r.load(st)
    np.testing.assert_array_equal(r.live_ids(), np.r_[ids[:10], ids[10:12]])
    # discard undoes a prepare whose commit failed
    bad = r.prepare(3, Changes(ids[15:17], vecs[15:17], {}))
    r.discard(bad)
    r.load(st)
    assert not r.contains(ids[15:17]).any()
    assert r._raw_count(st["collection"]) == 12
    r.close()


@pytest.mark.slow
def test_index_type_follows_size_and_params(tmp_path: Path):
    ids, vecs, fields = make_data(400, seed=3)
    b = get_backend("milvus")(tmp_path, DIM, {"exact_threshold": 100})
    b.load(b.empty_state())
    b.load(b.prepare(1, Changes(ids[:50], vecs[:50], {})))
    assert b.describe()["index_type"] == "FLAT"
    b.load(b.prepare(2, Changes(ids[50:], vecs[50:], {})))
    d = b.describe()
    assert d["index_type"] == "IVF_FLAT" and d["index_params"]["nlist"] == choose_index(400, "IVF_FLAT")["params"]["nlist"] == 80
    assert d["vectors"] == 400 and d["backend"] == "milvus"
    q = unit(np.random.default_rng(9).standard_normal((5, DIM)))
    s, i = b.search(q, 10, params=SearchParams(exact=True))
    rs, ri = reference(vecs, ids, fields, q, 10)
    np.testing.assert_array_equal(i, ri)
    _, i1 = b.search(q, 10, params=SearchParams(nprobe=1))
    assert (i1 >= 0).sum() > 0
    h = get_backend("milvus")(tmp_path / "h", DIM, {"index": "HNSW"})
    h.load(h.empty_state())
    with pytest.raises(UnsupportedOperationError):
        h.load(h.prepare(1, Changes(ids[:5], vecs[:5], {})))
        h.search(q, 3, params=SearchParams(exact=True))
    b.close()
    h.close()
