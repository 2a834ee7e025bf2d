"""Gallery NFC kept at index time equals computing it from scratch, and the engine uses it."""
from __future__ import annotations

import numpy as np
import pytest

from reid_engine import Engine
from reid_engine.ingest import CropItem
from reid_engine.rerank import centralize, get_preset, rerank_search


def _feats(n, seed):
    x = np.random.default_rng(seed).standard_normal((n, 16)).astype(np.float32)
    # a few clusters so mutual neighbours exist
    x[: n // 2] += 3 * np.random.default_rng(seed + 1).standard_normal((1, 16)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _items(tmp_path, start, n):
    return [CropItem(tmp_path / f"v{i}.png", {"camera": "A" if i % 2 else "B"}) for i in range(start, start + n)]


@pytest.fixture
def grown(tmp_path, tiny_weights):
    """An index grown in three blocks."""
    eng = Engine.create(tmp_path / "ix", encoder="tiny-test", weights=tiny_weights)
    feats = _feats(150, 5)
    for a, b in [(0, 60), (60, 61), (61, 150)]:
        eng.add_features(feats[a:b], _items(tmp_path, a, b - a), hashes=[f"{i:064x}" for i in range(a, b)])
    return eng, feats


def test_incremental_gallery_nfc_equals_full_recompute(grown):
    eng, feats = grown
    cfg = get_preset("default")
    nb = eng.store.neighbours
    want, _ = centralize(feats, cfg.nfc_k1, cfg.nfc_k2, weight=cfg.nfc_weight)
    assert nb.ids.tolist() == list(range(150))
    np.testing.assert_allclose(nb.centralized, want, atol=1e-5)
    reopened = Engine.open(eng.path)
    np.testing.assert_allclose(reopened.store.neighbours.centralized, want, atol=1e-5)


def test_removal_rebuilds_neighbour_data(grown):
    eng, feats = grown
    eng.remove(ids=list(range(0, 150, 3)))
    keep = np.array([i for i in range(150) if i % 3])
    cfg = get_preset("default")
    want, _ = centralize(feats[keep], cfg.nfc_k1, cfg.nfc_k2, weight=cfg.nfc_weight)
    np.testing.assert_allclose(eng.store.neighbours.centralized, want, atol=1e-5)
    assert eng.store.neighbours.ids.tolist() == keep.tolist()


def test_engine_rerank_equals_the_pure_function(grown):
    eng, feats = grown
    q = _feats(12, 99)
    cfg = get_preset("default")
    dist, pos = rerank_search(q, feats, 10, cfg)  # gallery NFC computed from scratch
    res = eng.query_features(q, k=10)  # stored gallery NFC
    assert [[h.id for h in r.hits] for r in res] == pos.tolist()
    np.testing.assert_allclose([[h.distance for h in r.hits] for r in res], dist, atol=1e-5)


def test_filtered_rerank_only_returns_allowed_crops(grown):
    eng, feats = grown
    res = eng.query_features(_feats(5, 3), k=20, cameras=["A"])
    assert all(len(r.hits) == 20 and {h.camera for h in r.hits} == {"A"} for r in res)
    res_kr = eng.query_features(_feats(5, 3), k=20, cameras=["B"], rerank="kr")
    assert all({h.camera for h in r.hits} == {"B"} for r in res_kr)
