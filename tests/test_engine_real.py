"""End to end on real crops and real weights: the reference Rank-1 is reproduced."""
from __future__ import annotations

import numpy as np
import pytest

from reid_engine import Engine, create_encoder, scan_source


@pytest.fixture(scope="module")
def pku_engine(tmp_path_factory, pku, osnet_onnx):
    eng = Engine.create(tmp_path_factory.mktemp("pku") / "ix", weights=osnet_onnx)
    report = eng.add(scan_source(pku / "protocol_cross_camera.csv", role="gallery"))
    assert report.added == 296 and not report.failed
    return eng


def test_rank1_matches_the_reference_figure(pku_engine, pku):
    queries = scan_source(pku / "protocol_cross_camera.csv", role="query")
    results = pku_engine.query([q.path for q in queries], k=10, rerank="none")
    rank1 = 100 * np.mean([r.hits[0].pid == q.meta["pid"] for r, q in zip(results, queries)])
    assert abs(rank1 - 74.7) <= 1.0, rank1  # ASSETS.md: OSNet x0.25 MSMT17 (ONNX) Rank-1 74.7


def test_default_rerank_through_the_index_beats_plain_cosine(pku_engine, pku, osnet_onnx):
    queries = scan_source(pku / "protocol_cross_camera.csv", role="query")
    paths = [q.path for q in queries]
    pids = [q.meta["pid"] for q in queries]

    def rank1(results):
        return 100 * np.mean([r.hits[0].pid == p for r, p in zip(results, pids)])

    cosine = rank1(pku_engine.query(paths, k=10, rerank="none"))
    # the query camera unknown to the index: no camera normalization, never much worse than cosine
    unknown = rank1(pku_engine.query(paths, k=10))
    assert unknown >= cosine - 0.5, (unknown, cosine)
    # camera 01 shown to the index as context (as an index of both cameras' footage knows it)
    feats = create_encoder(weights=osnet_onnx).encode(paths)
    pku_engine.add_context_features(feats, ["01"] * len(paths))
    default = rank1(pku_engine.query(paths, k=10, query_cameras=["01"] * len(paths)))
    # docs/rerank.md: held out, the default gives about 84 against cosine 74.7 on this split
    assert default >= cosine + 5.0, (default, cosine)


def test_batched_encoder_equals_one_at_a_time(pku, osnet_onnx):
    enc = create_encoder(weights=osnet_onnx)
    files = sorted(pku.glob("00[14]/*.png"))
    batched = enc.encode(files, batch_size=7)
    single = np.concatenate([enc.encode([f], batch_size=1) for f in files])
    assert batched.shape == (len(files), 512) and batched.dtype == np.float32
    np.testing.assert_allclose(batched, single, atol=1e-4)


def test_camera_pattern_from_folder_layout(pku):
    items = scan_source(pku, glob="001/*.png", pattern="pid-folder")
    assert {(it.meta["pid"], it.meta["camera"]) for it in items} == {("001", "01"), ("001", "02")}


def _gpus() -> int:
    import faiss

    return int(getattr(faiss, "get_num_gpus", lambda: 0)())


@pytest.mark.gpu
@pytest.mark.skipif(_gpus() == 0, reason="no GPU visible to FAISS")
def test_gpu_search_equals_brute_force(pku_engine):  # pragma: no cover - needs a GPU
    ids = pku_engine.store.backend.live_ids()
    gallery = pku_engine.store.vectors(ids)
    q = gallery[[0, 5, 9]]
    want = ids[np.argsort(-(q @ gallery.T), axis=1)[:, :5]]
    got = pku_engine.store.search(q, 5, params=SearchParams(exact=True))[1]
    np.testing.assert_array_equal(got, want)
