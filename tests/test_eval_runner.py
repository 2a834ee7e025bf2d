"""The runner: gallery into a real engine index, queries through the engine, metrics as with a distance matrix."""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from reid_engine.encoders import create_encoder
from reid_engine.errors import InvalidInputError
from reid_engine.eval.datasets import Sample, Split
from reid_engine.eval.metrics import evaluate_distmat
from reid_engine.eval.runner import evaluate_dataset, split_labels, sweep


def person_crops(root: Path, seed: int = 0) -> Split:
    """Six people seen by two cameras (colour + noise), distractors, a junk crop and a duplicated file."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    colours = rng.integers(40, 215, (7, 3))

    def crop(name: str, pid: int, noise: float) -> Path:
        img = np.clip(colours[pid] + rng.normal(0, noise, (32, 16, 3)), 0, 255).astype(np.uint8)
        p = root / name
        cv2.imwrite(str(p), img)
        return p

    query, gallery = [], []
    for pid in range(1, 7):
        for j in range(2):
            query.append(Sample(crop(f"q{pid}_{j}.png", pid, 40), pid, 1))
        for j in range(3):
            gallery.append(Sample(crop(f"g{pid}_{j}.png", pid, 40), pid, 2))
    gallery.append(Sample(crop("junk.png", 1, 40), 1, 1))  # person 1 seen by the query camera: ignored
    for j in range(4):
        gallery.append(Sample(crop(f"distractor{j}.png", 0, 90), 0, 2))
    dup = root / "g3_0_copy.png"
    shutil.copy(root / "g3_0.png", dup)  # byte-identical: the index keeps one row
    gallery.append(Sample(dup, 3, 2))
    return Split("toy", query, gallery, format="csv")


@pytest.fixture
def toy(tmp_path: Path) -> Split:
    return person_crops(tmp_path / "crops")


def reference(split: Split, weights: Path) -> Any:
    enc = create_encoder("tiny-test", weights)
    q = enc.encode([s.path for s in split.query])
    g = enc.encode([s.path for s in split.gallery])
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    g /= np.linalg.norm(g, axis=1, keepdims=True)
    return evaluate_distmat(1.0 - q @ g.T, **split_labels(split))


def test_engine_run_equals_distance_matrix_metrics(tmp_path: Path, toy: Split, tiny_weights: Path):
    run = evaluate_dataset(toy, encoder="tiny-test", weights=tiny_weights, rerank="none", cache_dir=tmp_path / "cache")
    ref = reference(toy, tiny_weights)
    assert 0.2 < ref.mAP < 1.0  # a task that is neither trivial nor hopeless
    assert np.array_equal(run.result.cmc, ref.cmc)
    assert run.result.mAP == pytest.approx(ref.mAP, abs=1e-9)
    assert run.result.mINP == pytest.approx(ref.mINP, abs=1e-9)
    assert run.ranked.shape == (12, len(toy.gallery))  # the duplicate is expanded back
    assert set(run.ranked[0]) == set(range(len(toy.gallery)))
    assert np.all(np.diff(run.distances, axis=1) >= -1e-6)
    s = run.report["settings"]
    assert s["exact"] and s["k"] == len(toy.gallery) - 1 and s["encoder"] == "tiny-test"
    assert s["encoded_images"] == len(toy.query) + len(toy.gallery) - 1
    assert run.report["dataset"]["num_gallery"] == len(toy.gallery)
    assert {"encode", "index", "query", "total"} <= set(run.report["timings"])


def test_second_run_uses_the_cache_and_writes_the_report(tmp_path: Path, toy: Split, tiny_weights: Path):
    first = evaluate_dataset(toy, encoder="tiny-test", weights=tiny_weights, cache_dir=tmp_path / "cache")
    second = evaluate_dataset(
        toy, encoder="tiny-test", weights=tiny_weights, cache_dir=tmp_path / "cache",
        report_dir=tmp_path / "report", visualize=2,
    )
    assert second.report["settings"]["encoded_images"] == 0
    assert second.result.mAP == first.result.mAP
    saved = json.loads((tmp_path / "report" / "report.json").read_text())
    assert saved["mAP"] == pytest.approx(100 * first.result.mAP)
    assert saved["visualization"] == "ranked_lists.html"
    assert second.html_path is not None and second.html_path.is_file()


def test_top_k_lists_are_lower_bounds(tmp_path: Path, toy: Split, tiny_weights: Path):
    full = evaluate_dataset(toy, encoder="tiny-test", weights=tiny_weights, cache_dir=tmp_path / "c")
    top = evaluate_dataset(toy, encoder="tiny-test", weights=tiny_weights, cache_dir=tmp_path / "c", k=3)
    assert not top.report["settings"]["exact"] and top.report["settings"]["k"] == 3
    assert top.result.rank1 == full.result.rank1
    assert top.result.mAP < full.result.mAP
    assert top.report["settings"]["encoded_images"] == 0


def test_visualize_needs_a_report_folder(toy: Split, tiny_weights: Path):
    with pytest.raises(InvalidInputError, match="report folder"):
        evaluate_dataset(toy, encoder="tiny-test", weights=tiny_weights, visualize=3, cache_dir=False)


# -- the engine seam, with a stand-in engine ------------------------------------------------------------
@dataclass
class FakeHit:
    id: int
    distance: float


@dataclass
class FakeResult:
    hits: list


class FakeEncoder:
    name = "fake"
    weights_sha256 = "f" * 64
    weights = "fake.bin"

    def __init__(self) -> None:
        self.encoded = 0

    def encode(self, paths, batch_size=32):
        self.encoded += len(paths)
        return np.array([[float(Path(p).stat().st_size), 1.0 + len(Path(p).name)] for p in paths], np.float32)


class FakeEngine:
    """Ranks by Euclidean distance; ``rerank="reverse"`` reverses the order; records the options."""

    def __init__(self) -> None:
        self.encoder = FakeEncoder()
        self.calls: list[dict] = []
        self.feats = np.zeros((0, 2), np.float32)

    def add_features(self, features, items, hashes=None):
        start = len(self.feats)
        self.feats = np.concatenate([self.feats, features])
        return list(range(100 + start, 100 + start + len(items)))

    def query_features(self, features, k, *, query_labels=None, query_cameras=None, rerank=None, fusion=None):
        self.calls.append({"n": len(features), "k": k, "rerank": rerank, "fusion": fusion})
        d = np.linalg.norm(features[:, None, :] - self.feats[None], axis=2)
        order = np.argsort(d, axis=1, kind="stable")
        if rerank == "reverse":
            order = order[:, ::-1]
        return [FakeResult([FakeHit(100 + int(g), float(d[i, g])) for g in row[:k]]) for i, row in enumerate(order)]


def test_options_reach_the_engine_and_sweep_reuses_one_index(tmp_path: Path, toy: Split):
    engines: list[FakeEngine] = []

    def factory(folder: Path) -> FakeEngine:
        engines.append(FakeEngine())
        return engines[-1]

    plain = evaluate_dataset(toy, factory, cache_dir=False)
    reverse = evaluate_dataset(toy, factory, rerank="reverse", fusion="mean", cache_dir=False)
    assert engines[1].calls == [{"n": 12, "k": len(toy.gallery) - 1, "rerank": "reverse", "fusion": "mean"}]
    assert reverse.result.rank1 < plain.result.rank1
    assert reverse.report["settings"]["rerank"] == "reverse"

    rows = sweep(toy, factory, reranks=[None, "reverse"], fusions=[None, "mean"], cache_dir=tmp_path / "cache")
    assert len(engines) == 3 and len(engines[2].calls) == 4
    assert engines[2].encoder.encoded == len(toy.query) + len(toy.gallery) - 1  # encoded once for 4 settings
    settings = [(r["rerank"], r["fusion"]) for r in rows]
    assert settings == [(None, None), (None, "mean"), ("reverse", None), ("reverse", "mean")]
    assert rows[0]["rank1"] == pytest.approx(100 * plain.result.rank1)
    assert rows[2]["mAP"] == pytest.approx(100 * reverse.result.mAP)


def test_engine_returning_unknown_ids_is_caught(toy: Split):
    class Wrong(FakeEngine):
        def query_features(self, features, k, **kw):
            return [FakeResult([FakeHit(7, 0.1)]) for _ in features]

    with pytest.raises(InvalidInputError, match="crop id 7"):
        evaluate_dataset(toy, lambda folder: Wrong(), cache_dir=False)


def test_chunked_queries_get_their_own_rows_of_per_query_options(toy: Split, monkeypatch):
    """A query set split into several calls passes each call the query attributes of its own queries."""
    from reid_engine.eval import runner

    attrs = np.arange(len(toy.query) * 3, dtype=np.float32).reshape(len(toy.query), 3)
    seen: list[np.ndarray] = []

    class Recording(FakeEngine):
        def query_features(self, features, k, **kw):
            assert len(kw["query_attributes"]) == len(features) == len(kw["query_cameras"])
            seen.append(kw["query_attributes"])
            kw.pop("query_attributes")
            return super().query_features(features, k, **kw)

    monkeypatch.setattr(runner, "MAX_HITS_PER_CALL", 5 * (len(toy.gallery) - 1))  # 5 queries per call
    monkeypatch.setattr(runner, "_fusion_needs_attributes", lambda fusions: True)
    options = runner._query_options(None, "mean", False, attrs)
    eng = Recording()
    eng.feats = np.zeros((len(toy.gallery), 2), np.float32)
    feats = np.zeros((len(toy.query), 2), np.float32)
    out = runner._search(eng, toy, feats, len(toy.gallery) - 1, options)
    assert len(out) == len(toy.query) and len(seen) == -(-len(toy.query) // 5)
    np.testing.assert_array_equal(np.concatenate(seen), attrs)


# -- the shared development set with the real model ---------------------------------------------------
@pytest.mark.slow
def test_pku_reference_figures_with_onnx_osnet(pku: Path, osnet_onnx: Path, tmp_path: Path):
    """74.66 / 60.57 (ASSETS.md: 74.7 / 60.6) through the engine, and the same from an independent pipeline."""
    import onnxruntime as ort
    from torchreid.reid.metrics import evaluate_rank

    from reid_engine.eval.datasets import read_dataset

    split = read_dataset(pku, query_cameras=["01"], gallery_cameras=["02"])
    run = evaluate_dataset(split, weights=osnet_onnx, rerank="none", cache_dir=tmp_path / "cache")
    assert run.report["rank1"] == pytest.approx(74.7, abs=0.5) and run.report["mAP"] == pytest.approx(60.6, abs=0.5)

    sess = ort.InferenceSession(str(osnet_onnx), providers=["CPUExecutionProvider"])
    mean, std = np.array([0.485, 0.456, 0.406], np.float32), np.array([0.229, 0.224, 0.225], np.float32)

    def feats(samples):
        batch = []
        for s in samples:
            rgb = cv2.cvtColor(cv2.imread(str(s.path)), cv2.COLOR_BGR2RGB)
            x = (cv2.resize(rgb, (128, 256), interpolation=cv2.INTER_LINEAR).astype(np.float32) / 255 - mean) / std
            batch.append(x.transpose(2, 0, 1))
        f = sess.run(None, {sess.get_inputs()[0].name: np.stack(batch)})[0]
        return f / np.linalg.norm(f, axis=1, keepdims=True)

    q, g = feats(split.query), feats(split.gallery)
    labels = split_labels(split)
    cmc, mAP = evaluate_rank(1 - q @ g.T, labels["q_pids"], labels["g_pids"], labels["q_camids"], labels["g_camids"],
                             use_cython=False)
    assert run.result.rank1 == pytest.approx(cmc[0], abs=1e-6) and run.result.mAP == pytest.approx(mAP, abs=1e-5)
