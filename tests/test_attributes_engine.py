"""Fusion and attribute search through the Engine: composition with re-ranking and filters, brute-force references, errors.

A stand-in attribute annotator (registered under the real name) keeps these
tests fast and independent of the model; ``test_attributes_model.py`` runs the real one.
"""
from __future__ import annotations

import numpy as np
import pytest

from reid_engine import Engine
from reid_engine.annotators import _ANNOTATORS
from reid_engine.attributes import ANNOTATOR_NAME, AttributesNotIndexedError, FusionConfig, fusion as F
from reid_engine.attributes.groups import BELONGINGS, COLUMN, WIDTH, notes_to_matrix, vector_to_note
from reid_engine.errors import InvalidInputError, UnknownNameError
from reid_engine.images import load_image
from reid_engine.ingest import CropItem

from .conftest import write_crops

CAMS = np.array(["c1", "c2", "c3"])


class FakeAttributeModel:
    """Deterministic attributes from a crop's mean colour."""

    name = "fake-attributes"
    weights_sha256 = "0" * 64

    def predict(self, images, batch_size: int = 32) -> np.ndarray:
        out = np.full((len(images), WIDTH), np.nan, np.float32)
        for i, im in enumerate(images):
            m = load_image(im).reshape(-1, 3).mean(0) / 255.0
            out[i, :8] = [m[0], m[1], m[2], 1 - m[0], 1 - m[1], 1 - m[2], m[0] * m[1], 0.5]
        return out


class FakeAnnotator:
    name = ANNOTATOR_NAME

    def __init__(self, device=None):
        self.model = FakeAttributeModel()

    def annotate(self, images):
        return [vector_to_note(v) for v in self.model.predict(images)]


@pytest.fixture
def fake_attributes(monkeypatch):
    monkeypatch.setitem(_ANNOTATORS, ANNOTATOR_NAME, FakeAnnotator)


def _unit(rng, n, d=16):
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _random_attrs(rng, n):
    a = rng.random((n, WIDTH)).astype(np.float32)
    a[:, :8] = np.where(rng.random((n, 8)) < 0.5, rng.random((n, 8)) * 0.15, 0.85 + rng.random((n, 8)) * 0.15)
    return a


@pytest.fixture
def gallery(tmp_path, tiny_weights, fake_attributes):
    """300 crops over 3 cameras and 300 s; random confident attributes; the last 10 without any."""
    rng = np.random.default_rng(5)
    feats = _unit(rng, 300)
    attrs = _random_attrs(rng, 300)
    attrs[290:] = np.nan
    attrs = notes_to_matrix([vector_to_note(a) for a in attrs])  # what the index stores (rounded)
    cams = CAMS[rng.integers(0, 3, 300)]
    times = 1_700_000_000.0 + np.arange(300, dtype=np.float64)
    items = [
        CropItem(tmp_path / f"g{i}.png", {"camera": cams[i], "timestamp": times[i], "pid": str(i % 30),
                                           **({"extra": {ANNOTATOR_NAME: vector_to_note(attrs[i])}} if i < 290 else {})})
        for i in range(300)
    ]
    eng = Engine.create(tmp_path / "ix", encoder="tiny-test", weights=tiny_weights, annotators=[ANNOTATOR_NAME])
    eng.add_features(feats, items, hashes=[f"{i:064x}" for i in range(300)])
    yield eng, feats, attrs, cams, times
    eng.close()


NO_SMOOTH = FusionConfig(
    appearance=0.5, contradiction={"is_male": 1.5, "has_longhair": 1.5, **{n: 0.5 for n in BELONGINGS}}, gate=0.3
)


@pytest.mark.parametrize("rerank", ["none", "default", "kr"])
def test_fusion_rescores_the_reranked_pool(gallery, rerank):
    eng, feats, attrs, cams, _ = gallery
    rng = np.random.default_rng(9)
    q = _unit(rng, 12)
    qa = _random_attrs(rng, 12)
    filt = {"cameras": ["c1", "c2"]}
    pool = eng.query_features(q, F.FUSION_POOL, rerank=rerank, **filt)
    ids = np.array([[h.id for h in r.hits] for r in pool])
    dist = np.array([[h.distance for h in r.hits] for r in pool], np.float32)
    cand = np.where(ids[..., None] < 290, attrs[np.clip(ids, 0, 299)], np.nan)
    ref_d, ref_ids = F.fuse_rank(dist, ids, qa, cand, 10, NO_SMOOTH)
    res = eng.query_features(q, 10, rerank=rerank, fusion=NO_SMOOTH, query_attributes=qa, **filt)
    assert [[h.id for h in r.hits] for r in res] == ref_ids.tolist()
    np.testing.assert_allclose([[h.distance for h in r.hits] for r in res], ref_d, atol=1e-5)
    assert all(cams[h.id] in ("c1", "c2") for r in res for h in r.hits)
    # the shipped modes (with smoothing) pick from the same pool and respect the filters
    for mode in ("attributes", "clothes-change"):
        res = eng.query_features(q, 10, rerank=rerank, fusion=mode, query_attributes=qa, **filt)
        for r, pool_ids in zip(res, ids):
            got = [h.id for h in r.hits]
            assert len(got) == 10 and set(got) <= set(pool_ids.tolist())
            assert all(np.diff([h.distance for h in r.hits]) >= -1e-6)


def test_appearance_mode_equals_no_fusion(gallery):
    eng, *_ = gallery
    q = _unit(np.random.default_rng(2), 6)
    for rerank in ("none", "default"):
        a = eng.query_features(q, 7, rerank=rerank, cameras=["c3"])
        b = eng.query_features(q, 7, rerank=rerank, fusion="appearance", cameras=["c3"])
        assert [[(h.id, h.distance) for h in r.hits] for r in a] == [[(h.id, h.distance) for h in r.hits] for r in b]


def test_order_changes_only_for_confident_contradictions(gallery):
    eng, feats, attrs, *_ = gallery
    target = int(np.flatnonzero(attrs[:290, COLUMN["is_male"]] < 0.15)[0])  # confidently not male
    q = feats[target : target + 1]
    qa = attrs[target : target + 1].copy()
    qa[0, COLUMN["is_male"]] = 0.98  # the query is confidently male: a contradiction
    top = eng.query_features(q, 5, rerank="none", fusion=NO_SMOOTH, query_attributes=qa)[0]
    assert target not in [h.id for h in top.hits]
    qa[0, COLUMN["is_male"]] = 0.55  # unsure: no penalty, the identical crop stays first
    top = eng.query_features(q, 5, rerank="none", fusion=NO_SMOOTH, query_attributes=qa)[0]
    assert top.hits[0].id == target and top.hits[0].distance == pytest.approx(0, abs=1e-6)


def _brute_matches(attrs, terms, thr):
    ok = np.ones(len(attrs), bool)
    with np.errstate(invalid="ignore"):
        for name, want in terms:
            p = attrs[:, COLUMN[name]]
            ok &= (p >= thr) if want else (1 - p >= thr)
    return ok


def test_attribute_filter_with_an_image_matches_brute_force(gallery):
    eng, feats, attrs, cams, times = gallery
    q = _unit(np.random.default_rng(4), 5)
    res = eng.query_features(q, 8, rerank="none", attributes=["female", "not-hat"], attribute_threshold=0.7,
                             cameras=["c1", "c3"], time_from=1_700_000_050.0)
    mask = _brute_matches(attrs, [("is_male", False), ("has_hat", False)], 0.7)
    mask &= np.isin(cams, ["c1", "c3"]) & (times >= 1_700_000_050.0)
    sims = q @ feats.T
    sims[:, ~mask] = -np.inf
    expected = np.argsort(-sims, axis=1, kind="stable")[:, :8]
    assert [[h.id for h in r.hits] for r in res] == expected.tolist()


def test_find_matches_brute_force(gallery):
    eng, feats, attrs, cams, times = gallery
    res = eng.find(["male", "backpack"], k=7, threshold=0.6, exclude_cameras=["c2"], time_to=1_700_000_200.0)
    mask = _brute_matches(attrs, [("is_male", True), ("has_backpack", True)], 0.6)
    mask &= (cams != "c2") & (times <= 1_700_000_200.0)
    joint = attrs[:, COLUMN["is_male"]] * attrs[:, COLUMN["has_backpack"]]
    order = sorted(np.flatnonzero(mask), key=lambda i: (-joint[i], i))[:7]
    assert [h.id for h in res.hits] == order
    np.testing.assert_allclose([h.distance for h in res.hits], 1 - joint[order], atol=1e-4)
    assert res.query == "attributes: male, backpack"
    assert all(h.extra and "attributes" in h.extra for h in res.hits)


def test_new_crops_are_seen_after_a_commit(gallery):
    eng, *_ = gallery
    before = len(eng.find("hat", k=1000).hits)
    v = np.full(WIDTH, 0.99, np.float32)
    eng.add_features(_unit(np.random.default_rng(1), 1),
                     [CropItem("new.png", {"camera": "c9", "extra": {ANNOTATOR_NAME: vector_to_note(v)}})], hashes=["f" * 64])
    res = eng.find("hat", k=1000)
    assert len(res.hits) == before + 1 and "c9" in {h.camera for h in res.hits}


def test_attribute_matrix_follows_commits_incrementally_and_equals_a_full_read(gallery):
    """After adds and a removal, the matrix kept from the last generation equals reading every live row again,
    and the update reads only the rows added since."""
    from reid_engine.attributes.store import load_gallery_attributes

    eng, *_ = gallery
    first = eng._gallery_attributes()
    assert len(first.ids) == 300
    v = np.full(WIDTH, 0.99, np.float32)
    rng = np.random.default_rng(3)
    eng.add_features(_unit(rng, 2), [CropItem(f"n{i}.png", {"camera": "c9", "extra": {ANNOTATOR_NAME: vector_to_note(v)}})
                                     for i in range(2)], hashes=["e" * 63 + str(i) for i in range(2)])
    eng.remove(ids=[int(first.ids[5]), int(first.ids[17])])
    reads: list = []
    import reid_engine.attributes.store as attr_store

    real = attr_store.load_gallery_attributes

    def spy(*args, **kw):
        reads.append(kw.get("after"))
        return real(*args, **kw)

    attr_store.load_gallery_attributes = spy
    try:
        now = eng._gallery_attributes()
    finally:
        attr_store.load_gallery_attributes = real
    assert reads == [int(first.ids[-1])]  # only rows newer than the previous generation's were read
    full = load_gallery_attributes(eng.store.sql, eng.store.generation)
    np.testing.assert_array_equal(now.ids, full.ids)
    np.testing.assert_array_equal(now.matrix, full.matrix)
    assert len(now.ids) == 300 and int(first.ids[5]) not in now.ids and now.generation == eng.store.generation


def test_errors(gallery, tmp_path, tiny_weights):
    eng, *_ = gallery
    q = _unit(np.random.default_rng(0), 2)
    with pytest.raises(InvalidInputError, match="query_attributes"):
        eng.query_features(q, 3, fusion="attributes")
    with pytest.raises(InvalidInputError, match="shape"):
        eng.query_features(q, 3, fusion="attributes", query_attributes=np.zeros((3, WIDTH)))
    with pytest.raises(UnknownNameError, match="valid modes"):
        eng.query_features(q, 3, fusion="colours", query_attributes=np.zeros((2, WIDTH)))
    with pytest.raises(UnknownNameError, match="valid: male"):
        eng.find(["tall"])
    plain = Engine.create(tmp_path / "plain", encoder="tiny-test", weights=tiny_weights)
    plain.add_features(q, [CropItem("a.png"), CropItem("b.png")], hashes=["a" * 64, "b" * 64])
    for call in (
        lambda: plain.query_features(q, 1, fusion="clothes-change", query_attributes=np.zeros((2, WIDTH))),
        lambda: plain.query_features(q, 1, attributes=["male"]),
        lambda: plain.find("male"),
    ):
        with pytest.raises(AttributesNotIndexedError, match="--attributes"):
            call()
    assert len(plain.query_features(q, 1, fusion="appearance")[0].hits) == 1
    plain.close()


def test_query_images_computes_query_attributes(tmp_path, tiny_weights, fake_attributes):
    paths = write_crops(tmp_path / "crops", 12, seed=3)
    with Engine.create(tmp_path / "ix", encoder="tiny-test", weights=tiny_weights, annotators=[ANNOTATOR_NAME]) as eng:
        eng.add(paths)
        rows = eng.store.rows(list(range(12)))
        assert all(set(r["extra"][ANNOTATOR_NAME]) >= {"is_male", "has_hat"} for r in rows.values())
        res = eng.query([str(p) for p in paths[:3]], k=4, fusion="clothes-change", rerank="none")
        assert [r.hits[0].path for r in res] == [str(p.resolve()) for p in paths[:3]]
        found = eng.query([str(paths[0])], k=12, attributes=["male"], rerank="none")[0]
        allowed = {h.id for h in eng.find("male", k=100).hits}
        assert {h.id for h in found.hits} == allowed
