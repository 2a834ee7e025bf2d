"""Context crops: crops shown to the index for its per-camera statistics that never become rows or results
(``Engine.add_context_features``, ``IndexStore.observe``), and ``reid-engine eval``'s query context."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from reid_engine import Engine
from reid_engine.errors import InvalidInputError
from reid_engine.eval.runner import default_engine_factory, prepare
from reid_engine.index import store as store_mod
from reid_engine.ingest.crops import CropItem
from reid_engine.rerank import CameraNormalize, MemoryGallery, Pipeline

from .test_eval_runner import person_crops


#: full camera-mean removal (the step's own default strength), so the reference below is the obvious one
CAMERA = Pipeline("camera-full", (CameraNormalize(strength=1.0),))


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _engine(tmp_path: Path, weights: Path, n: int = 120, seed: int = 3) -> tuple[Engine, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    bias = {"c1": rng.standard_normal(16), "c2": rng.standard_normal(16)}
    cams = np.array(["c1", "c2"])[np.arange(n) % 2]
    feats = _unit(rng.standard_normal((n, 16)) + np.stack([bias[c] for c in cams])).astype(np.float32)
    items = [CropItem(tmp_path / f"g{i}.png", {"camera": cams[i]}) for i in range(n)]
    eng = Engine.create(tmp_path / "ix", encoder="tiny-test", weights=weights)
    eng.add_features(feats, items, hashes=[f"{i:064x}" for i in range(n)])
    return eng, feats, cams


def test_context_sets_the_query_camera_mean_and_never_becomes_a_result(tmp_path, tiny_weights):
    eng, g, cams = _engine(tmp_path, tiny_weights, n=80)  # under the re-ranked pool: every row re-scored
    rng = np.random.default_rng(5)
    ctx = _unit(rng.standard_normal((40, 16)) + 2.0 * rng.standard_normal(16)).astype(np.float32)
    gen, count = eng.store.generation, eng.store.count
    eng.add_context_features(ctx, ["q"] * len(ctx))
    assert eng.store.generation == gen + 1 and eng.store.count == count
    stats = eng.store.state("camera_stats")
    assert stats.count("q") == 40 and np.allclose(stats.mean("q"), ctx.mean(0), atol=1e-5)
    assert np.allclose(stats.mean("c1"), g[cams == "c1"].mean(0), atol=1e-5)  # gallery cameras unchanged

    query = _unit(ctx[:3] + 0.1).astype(np.float32)
    got = eng.query_features(query, k=len(g), query_cameras=["q"] * 3, rerank=CAMERA)
    # the obvious reference: cosine after removing each side's camera mean, over the gallery rows only
    gn = _unit(g - np.stack([g[cams == c].mean(0) for c in cams]))
    ids = sorted(eng.store.ids_where(None).tolist())
    for r, res in enumerate(got):
        sims = gn @ _unit(query[r] - ctx.mean(0))
        assert [h.id for h in res.hits] == [ids[j] for j in np.argsort(-sims, kind="stable")]
    eng.close()

    reopened = Engine.open(tmp_path / "ix")  # the context is committed state
    assert reopened.store.state("camera_stats").count("q") == 40
    again = reopened.query_features(query, k=len(g), query_cameras=["q"] * 3, rerank=CAMERA)
    assert [[h.id for h in r.hits] for r in again] == [[h.id for h in r.hits] for r in got]
    reopened.close()


def test_without_context_an_unknown_query_camera_is_plain_cosine(tmp_path, tiny_weights):
    eng, g, _ = _engine(tmp_path, tiny_weights)
    query = _unit(np.random.default_rng(9).standard_normal((2, 16))).astype(np.float32)
    cam = eng.query_features(query, k=len(g), query_cameras=["q", "q"], rerank=CAMERA)
    cos = eng.query_features(query, k=len(g), rerank="none")
    assert [[h.id for h in r.hits] for r in cam] == [[h.id for h in r.hits] for r in cos]
    eng.close()


@pytest.mark.parametrize("feats, cams, words", [
    (np.ones((3, 8), np.float32), ["q"] * 3, "(N, 16)"),
    (np.ones((3, 16), np.float32), ["q"] * 2, "3 context vectors but 2 cameras"),
    (np.full((2, 16), np.nan, np.float32), ["q"] * 2, "NaN"),
])
def test_bad_context_is_refused_and_changes_nothing(tmp_path, tiny_weights, feats, cams, words):
    eng, _, _ = _engine(tmp_path, tiny_weights, n=20)
    gen = eng.store.generation
    with pytest.raises(InvalidInputError, match=words.replace("(", r"\(").replace(")", r"\)")):
        eng.add_context_features(feats, cams)
    assert eng.store.generation == gen and eng.store.state("camera_stats").count("q") == 0
    eng.close()


def test_crash_before_the_sql_commit_leaves_the_previous_statistics(tmp_path, tiny_weights, monkeypatch):
    eng, _, _ = _engine(tmp_path, tiny_weights, n=20)
    gen = eng.store.generation

    def crash() -> None:
        raise RuntimeError("simulated crash")

    monkeypatch.setattr(store_mod, "_after_vectors_written", crash)
    with pytest.raises(RuntimeError):
        eng.add_context_features(np.ones((4, 16), np.float32), ["q"] * 4)
    eng.close()
    monkeypatch.undo()
    reopened = Engine.open(tmp_path / "ix")
    assert reopened.store.generation == gen and reopened.store.state("camera_stats").count("q") == 0
    reopened.add_context_features(np.ones((4, 16), np.float32), ["q"] * 4)  # the next writer goes on
    assert reopened.store.state("camera_stats").count("q") == 4
    reopened.close()


def test_memory_gallery_context_matches_the_store(tmp_path, tiny_weights):
    eng, g, cams = _engine(tmp_path, tiny_weights, n=30)
    ctx = _unit(np.random.default_rng(1).standard_normal((7, 16))).astype(np.float32)
    eng.add_context_features(ctx, ["q"] * 7)
    mem = MemoryGallery(16)
    mem.add(np.arange(len(g)), g, {"camera": cams})
    mem.observe(ctx, ["q"] * 7)
    a, b = eng.store.state("camera_stats"), mem.state("camera_stats")
    assert a.cameras == b.cameras and np.array_equal(a.counts, b.counts)
    assert np.allclose(a.sums, b.sums, atol=1e-5)
    eng.close()


@pytest.mark.parametrize("query_context", [True, False])
def test_eval_shows_the_query_crops_as_context(tmp_path, tiny_weights, query_context):
    split = person_crops(tmp_path / "crops")
    prep = prepare(split, default_engine_factory("tiny-test", tiny_weights), tmp_path / "work", cache_dir=False,
                   query_context=query_context)
    stats = prep.engine.store.state("camera_stats")
    assert stats.count("1") == (1 if not query_context else 1 + len(split.query))  # the junk crop is camera 1
    assert prep.engine.store.count == len(split.gallery) - 1  # one duplicated file; no query row
    assert prep.settings["query_context"] is query_context
    prep.engine.close()
