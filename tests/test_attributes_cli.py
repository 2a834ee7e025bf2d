"""Attributes from the command line (click's CliRunner): index --attributes, query --fusion/--attr, eval --fusion, the sim tool."""
from __future__ import annotations

import csv
import importlib.util
import json
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from reid_engine import Engine
from reid_engine.attributes.model import default_model_path
from reid_engine.cli import main

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def run(monkeypatch, tmp_path):
    monkeypatch.setenv("REID_ENGINE_INDEXES", str(tmp_path / "indexes"))
    runner = CliRunner()

    def _run(*args, code=0):
        res = runner.invoke(main, [str(a) for a in args], catch_exceptions=False)
        assert res.exit_code == code, res.output
        return res

    return _run


@pytest.fixture
def pku_subset(pku: Path) -> list[Path]:
    if not default_model_path().is_file():
        pytest.skip("the attribute model is not in the shared assets")
    return sorted(pku.glob("0[01]*/02_[1357].png"))  # 4 people, 4 gallery crops each


def test_index_query_and_find(run, tmp_path, tiny_weights, pku, pku_subset):
    folder = tmp_path / "gallery"
    for p in pku_subset:
        (folder / p.parent.name).mkdir(parents=True, exist_ok=True)
        (folder / p.parent.name / p.name).write_bytes(p.read_bytes())
    r = run("index", folder, "--index", "g", "--encoder", "tiny-test", "--weights", tiny_weights, "--camera", "02",
            "--attributes", "--json")
    assert json.loads(r.output)["added"] == len(pku_subset)

    doc = json.loads(run("query", "--index", "g", "--attr", "female", "--attr", "long-hair", "-k", "50", "--json").output)
    hits = doc["queries"][0]["hits"]
    with Engine.open(tmp_path / "indexes" / "g") as eng:
        ref = eng.find(["female", "long_hair"], k=50)
    assert [h["id"] for h in hits] == [h.id for h in ref.hits] and hits
    assert all(h["extra"]["attributes"]["is_male"] <= 0.5 for h in hits)
    assert "attributes: female, long_hair" in run("query", "--index", "g", "--attr", "female,long hair").output

    query = pku / "001" / "01_1.png"
    for mode in ("appearance", "attributes", "clothes-change"):
        doc = json.loads(run("query", query, "--index", "g", "--fusion", mode, "-k", "5", "--json").output)
        assert len(doc["queries"][0]["hits"]) == 5
    doc = json.loads(run("query", query, "--index", "g", "--fusion", "clothes-change", "--attr", "not-male",
                         "--attr-threshold", "0.6", "--camera", "02", "--json").output)
    assert all(h["extra"]["attributes"]["is_male"] <= 0.4 for h in doc["queries"][0]["hits"])

    r = run("query", "--index", "g", "--attr", "tall", code=1)
    assert r.output.count("\n") == 1 and "unknown attribute 'tall'" in r.output and "long_hair" in r.output
    r = run("query", query, "--index", "g", "--fusion", "colour", code=1)
    assert "valid modes: appearance, attributes, clothes-change" in r.output
    run("query", "--index", "g", code=2)  # neither images nor --attr
    run("query", query, "--index", "g", "--tracks", "--fusion", "attributes", code=2)
    run("index", folder, "--index", "g", "--attributes")  # an index with attributes takes more with --attributes


def test_index_without_attributes_says_to_rebuild(run, tmp_path, tiny_weights, pku):
    folder = tmp_path / "gallery"
    folder.mkdir()
    for p in sorted((pku / "001").glob("02_*.png"))[:3]:
        (folder / p.name).write_bytes(p.read_bytes())
    run("index", folder, "--index", "plain", "--encoder", "tiny-test", "--weights", tiny_weights)
    query = pku / "001" / "01_1.png"
    for args in (("query", query, "--fusion", "clothes-change"), ("query", "--attr", "male"), ("index", folder, "--attributes")):
        r = run(*args, "--index", "plain", code=1)
        assert "--attributes" in r.output and r.output.count("\n") == 1
    assert "hits" in run("query", query, "--index", "plain", "--fusion", "appearance", "-k", "2").output


def test_eval_with_fusion(run, tmp_path, tiny_weights, pku, pku_subset):
    rows = []
    for p in pku_subset:
        for cam, role in (("01", "query"), ("02", "gallery")):
            rows.append({"file": str(p.parent / f"{cam}_{p.name[3:]}"), "pid": p.parent.name, "camid": cam, "role": role})
    proto = tmp_path / "proto.csv"
    with open(proto, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    common = ("--encoder", "tiny-test", "--weights", tiny_weights, "--cache-dir", tmp_path / "cache")
    doc = json.loads(run("eval", proto, *common, "--fusion", "clothes-change", "--rerank", "none", "--json").output)
    assert doc["settings"]["fusion"] == "clothes-change" and 0 <= doc["metrics"]["mAP"] <= 100
    doc = json.loads(run("eval", proto, *common, "--sweep", "--rerank", "none,default",
                         "--fusion", "appearance,attributes,clothes-change", "--json").output)
    assert [(r["rerank"], r["fusion"]) for r in doc["rows"]] == [
        (rr, fu) for rr in ("none", "default") for fu in ("appearance", "attributes", "clothes-change")]
    attr_caches = list((tmp_path / "cache").glob("attributes-*.sqlite"))
    assert len(attr_caches) == 1  # attributes are cached beside the embeddings
    r = run("eval", proto, *common, "--fusion", "colour", code=1)
    assert "valid modes" in r.output


# -- the simulation tool ------------------------------------------------------------------------------
def _sim_tool():
    spec = importlib.util.spec_from_file_location("clothes_change_sim", ROOT / "tools" / "clothes_change_sim.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up while the file runs
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


def test_clothes_change_sim_recolours_body_not_head(pku, tmp_path):
    sim = _sim_tool()
    for pid in ("001", "004"):
        img = cv2.imread(str(pku / pid / "02_1.png"))
        a, b = sim.change_clothes(img, pid), sim.change_clothes(img, pid)
        assert np.array_equal(a, b)  # deterministic
        h = img.shape[0]
        head = int(h * (sim.HEAD - sim.BLEND_ROWS))
        assert np.array_equal(a[:head], img[:head])  # the head is untouched
        changed = np.abs(a[int(h * 0.3) :].astype(int) - img[int(h * 0.3) :]).max(axis=2) > 30
        assert changed.mean() > 0.2  # the body is recoloured
    assert sim.outfits_for("001") == sim.outfits_for("001") != sim.outfits_for("004")

    data = tmp_path / "data"
    rows = []
    for pid in ("001", "004"):
        for cam in ("01", "02"):
            (data / pid).mkdir(parents=True, exist_ok=True)
            (data / pid / f"{cam}_1.png").write_bytes((pku / pid / f"{cam}_1.png").read_bytes())
            rows.append({"file": f"{pid}/{cam}_1.png", "person_id": pid, "camera": cam, "orientation": "1"})
    with open(data / "manifest.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    assert sim.build(data, tmp_path / "out") == {"query": 2, "gallery": 2}
    with open(tmp_path / "out" / "protocol.csv", newline="") as fh:
        proto = list(csv.DictReader(fh))
    assert [(r["file"], r["role"]) for r in proto] == [
        ("query/001/01_1.png", "query"), ("gallery/001/02_1.png", "gallery"),
        ("query/004/01_1.png", "query"), ("gallery/004/02_1.png", "gallery")]
    assert (tmp_path / "out" / "query" / "001" / "01_1.png").read_bytes() == (pku / "001" / "01_1.png").read_bytes()
