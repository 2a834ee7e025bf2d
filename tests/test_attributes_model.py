"""The real attribute model on real crops, the annotator inside an index, and (slow) the evaluation claims."""
from __future__ import annotations

import csv
import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from reid_engine import Engine
from reid_engine.attributes import ANNOTATOR_NAME
from reid_engine.attributes.groups import BINARY, COLOURS, POINTS, SLICES, WIDTH, note_to_vector
from reid_engine.attributes.model import MODEL_ENV, AttributeModel, default_model_path, shared_model
from reid_engine.errors import WeightsError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def model(shared: Path) -> AttributeModel:
    if not default_model_path().is_file():
        pytest.skip("the attribute model is not in the shared assets")
    return shared_model()


@pytest.fixture(scope="session")
def pku_crops(pku: Path) -> list[Path]:
    return sorted(pku.glob("00[148]/*.png"))  # 3 people x 2 cameras x 8 orientations


def test_predictions_on_real_crops(model, pku_crops):
    out = model.predict(pku_crops)
    assert out.shape == (len(pku_crops), WIDTH) and out.dtype == np.float32 and np.isfinite(out).all()
    probs = out[:, : len(BINARY)]
    assert probs.min() >= 0 and probs.max() <= 1
    top, bottom = out[:, SLICES["top_point"]], out[:, SLICES["bottom_point"]]
    assert ((0 <= top) & (top <= 1)).all() and top[:, 1].mean() < bottom[:, 1].mean()  # top colour is higher up
    lightness = out[:, [SLICES[c].start for c in COLOURS]]
    assert ((0 <= lightness) & (lightness <= 100)).all()
    assert np.array_equal(out, model.predict(pku_crops))  # deterministic
    np.testing.assert_allclose(model.predict(pku_crops, batch_size=5), out, atol=1e-4)
    # people 004 and 008 are women with long hair, 001 too: is_male low, has_longhair high on most crops
    assert (probs[:, BINARY.index("is_male")] < 0.5).mean() > 0.8
    assert (probs[:, BINARY.index("has_longhair")] > 0.5).mean() > 0.7


def test_missing_model_is_a_weights_error(tmp_path, monkeypatch):
    monkeypatch.setenv(MODEL_ENV, str(tmp_path / "nope.xml"))
    with pytest.raises(WeightsError, match=MODEL_ENV):
        AttributeModel()


def test_annotator_stores_attributes_in_the_index(model, pku_crops, tmp_path, tiny_weights):
    with Engine.create(tmp_path / "ix", encoder="tiny-test", weights=tiny_weights, annotators=[ANNOTATOR_NAME]) as eng:
        report = eng.add(pku_crops[:6])
        rows = eng.store.rows(report.ids)
        notes = [rows[i]["extra"][ANNOTATOR_NAME] for i in report.ids]
        assert all(set(n) == set(BINARY) | set(COLOURS) | set(POINTS) for n in notes)
        stored = np.stack([note_to_vector(n) for n in notes])
        np.testing.assert_allclose(stored, model.predict(pku_crops[:6]), atol=6e-5)  # stored rounded to 4 digits
        assert eng.store.manifest.annotators == [ANNOTATOR_NAME]
    with Engine.open(tmp_path / "ix") as eng:  # reopened: the query path uses the same model
        res = eng.query([str(pku_crops[0])], k=3, fusion="clothes-change", rerank="none")
        assert res[0].hits[0].path == str(pku_crops[0].resolve())
        assert len(eng.find("female", k=6).hits) >= 4


# -- the evaluation claims (slow: the real encoder on every crop) ---------------------------------------------
def _sim_tool():
    spec = importlib.util.spec_from_file_location("clothes_change_sim", ROOT / "tools" / "clothes_change_sim.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up while the file runs
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


@pytest.mark.slow
def test_fusion_does_not_hurt_pku_and_clothes_change_helps_the_simulation(model, pku, osnet_onnx, tmp_path):
    from reid_engine.eval import read_dataset, sweep

    def table(path):
        rows = sweep(read_dataset(path), reranks=["none", "default"], fusions=["appearance", "attributes", "clothes-change"],
                     cache_dir=tmp_path / "cache")
        return {(r["rerank"], r["fusion"]): (r["rank1"], r["mAP"]) for r in rows}

    real = table(pku / "protocol_cross_camera.csv")
    for rr in ("none", "default"):
        for mode in ("attributes", "clothes-change"):
            assert real[(rr, mode)][0] >= real[(rr, "appearance")][0] and real[(rr, mode)][1] >= real[(rr, "appearance")][1]
    _sim_tool().build(pku, tmp_path / "sim")
    with open(tmp_path / "sim" / "protocol.csv", newline="") as fh:
        assert len(list(csv.DictReader(fh))) == 592
    sim = table(tmp_path / "sim" / "protocol.csv")
    for rr in ("none", "default"):
        assert sim[(rr, "clothes-change")][0] > sim[(rr, "appearance")][0]
        assert sim[(rr, "clothes-change")][1] > sim[(rr, "appearance")][1]
