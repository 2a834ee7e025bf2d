"""The CLI through click's CliRunner: commands, JSON shapes, one-line errors and exit codes."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from reid_engine.cli import main

from .conftest import write_crops


@pytest.fixture
def run(monkeypatch, tmp_path):
    monkeypatch.setenv("REID_ENGINE_INDEXES", str(tmp_path / "indexes"))
    runner = CliRunner()

    def _run(*args, code=0):
        res = runner.invoke(main, [str(a) for a in args], catch_exceptions=False)
        assert res.exit_code == code, res.output
        return res

    return _run


def test_index_query_info_remove_round_trip(run, tmp_path, tiny_weights):
    crops = write_crops(tmp_path / "cam1", 5, seed=1)
    write_crops(tmp_path / "cam2", 4, seed=2)
    r = run("index", tmp_path / "cam1", "--index", "demo", "--encoder", "tiny-test", "--weights", tiny_weights, "--camera", "1", "--json")
    assert json.loads(r.output)["added"] == 5
    assert (tmp_path / "indexes" / "demo" / "manifest.json").exists()  # bare name -> indexes/
    r = run("index", tmp_path / "cam2", "--index", "demo", "--camera", "2", "--json")
    doc = json.loads(r.output)
    assert (doc["added"], doc["total"]) == (4, 9)
    r = run("index", tmp_path / "cam1", "--index", "demo", "--json")  # re-run: nothing duplicated
    assert json.loads(r.output)["duplicates"] == 5

    r = run("query", crops[2], crops[3], "--index", "demo", "-k", "3", "--rerank", "none", "--json")
    doc = json.loads(r.output)
    assert [len(q["hits"]) for q in doc["queries"]] == [3, 3]
    top = doc["queries"][0]["hits"][0]
    assert top["path"] == str(crops[2].resolve()) and top["distance"] == pytest.approx(0, abs=1e-5)
    assert {"camera", "pid", "timestamp", "frame", "box", "track", "source", "id", "rank"} <= set(top)

    r = run("query", crops[2], "--index", "demo", "-k", "9", "--exclude-same-camera", "--json")
    assert {h["camera"] for h in json.loads(r.output)["queries"][0]["hits"]} == {"2"}

    r = run("query", crops[2], "--index", "demo", "-k", "2")
    assert "rank" in r.output and str(crops[2].resolve()) in r.output
    r = run("query", crops[2], "--index", "demo", "-k", "9", "--rerank", "kr", "--pool", "3", "--ef-search", "16",
            "--json")
    hits = json.loads(r.output)["queries"][0]["hits"]
    cosine = json.loads(run("query", crops[2], "--index", "demo", "-k", "9", "--rerank", "none", "--json").output)
    assert [h["id"] for h in hits][3:] == [h["id"] for h in cosine["queries"][0]["hits"]][3:]  # past the pool
    for opt, bad in (("--pool", "0"), ("--ef-search", "5000"), ("--ef-search", "x")):
        r = run("query", crops[2], "--index", "demo", opt, bad, code=2)
        assert opt in r.output and "Traceback" not in r.output

    info = json.loads(run("info", "--index", "demo", "--json").output)
    assert info["crops"] == 9 and info["cameras"] == {"1": 5, "2": 4} and info["encoder"] == "tiny-test"
    text = run("info", "--index", "demo").output
    assert "cameras" in text
    backend_line = next(line for line in text.splitlines() if line.strip().startswith("backend:"))
    assert "faiss flat" in backend_line
    assert f"{len(info['backend']['segments'])} segments" in backend_line

    assert json.loads(run("remove", "--index", "demo", "--camera", "2", "--json").output) == {"removed": 4, "total": 5}


def test_info_line_names_projected_graph_dimensions():
    from reid_engine.cli.commands import _describe_backend

    segs = [{"kind": "graph", "rows": 9, "graph_dim": 176}, {"kind": "graph", "rows": 5, "graph_dim": 512},
            {"kind": "flat", "rows": 2}]
    text = _describe_backend({"backend": "faiss", "index_type": "hnsw", "dim": 512, "graph_m": 32, "segments": segs})
    assert text.endswith("3 segments (1 flat, 2 graph); graphs over 176/512 of 512 dimensions (re-scored with all)")
    unprojected = [{"kind": "graph", "rows": 9, "graph_dim": 512}]
    assert "dimensions" not in _describe_backend({"backend": "faiss", "dim": 512, "segments": unprojected})
    coded = [{"kind": "graph", "rows": 9, "graph_dim": 176, "graph_codes": "sq8"},
             {"kind": "graph", "rows": 5, "graph_dim": 512, "graph_codes": "float"}]
    text = _describe_backend({"backend": "faiss", "index_type": "hnsw", "dim": 512, "segments": coded})
    assert text.endswith("graphs over 176/512 of 512 dimensions as float/sq8 codes (re-scored with all)")


def test_encoders_lists_the_registry(run):
    rows = json.loads(run("encoders", "--json").output)
    names = {r["name"] for r in rows}
    assert {"onnx", "openvino", "osnet_x0_25_msmt17.onnx", "intel.person-reidentification-retail-0277"} <= names
    assert sum(r["default"] for r in rows) == 1


def test_errors_are_one_line_with_nonzero_exit(run, tmp_path, tiny_weights):
    r = run("index", tmp_path / "missing", "--index", "x", code=1)
    assert r.output.strip() == f"Error: {tmp_path / 'missing'}: no such folder or file"

    write_crops(tmp_path / "g", 2)
    r = run("index", tmp_path / "g", "--index", "x", "--encoder", "no-such-model", code=1)
    assert "unknown encoder 'no-such-model': expected one of" in r.output and r.output.count("\n") == 1

    run("index", tmp_path / "g", "--index", "x", "--encoder", "tiny-test", "--weights", tiny_weights)
    other = tmp_path / "other.weights"
    other.write_bytes(b"other")
    r = run("query", tmp_path / "g" / "crop_0000.png", "--index", "x", "--weights", other, code=1)
    assert "encoder does not match the index" in r.output and r.output.count("\n") == 1

    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG broken")
    r = run("query", bad, "--index", "x", code=1)
    assert "broken.png: not a readable image" in r.output and r.output.count("\n") == 1

    r = run("info", "--index", "never-built", code=1)
    assert "no such index folder" in r.output

    r = run("remove", "--index", "x", code=2)
    assert "say what to remove" in r.output


def test_strict_stops_on_an_unreadable_image(run, tmp_path, tiny_weights):
    write_crops(tmp_path / "g", 2)
    (tmp_path / "g" / "zz_bad.png").write_bytes(b"nope")
    r = run("index", tmp_path / "g", "--index", "s", "--encoder", "tiny-test", "--weights", tiny_weights, "--strict", code=1)
    assert "zz_bad.png" in r.output
    r = run("index", tmp_path / "g", "--index", "s2", "--encoder", "tiny-test", "--weights", tiny_weights, "--json")
    doc = json.loads(r.output)
    assert doc["added"] == 2 and len(doc["failed"]) == 1


def test_weights_type_picks_the_runtime(run, tmp_path, osnet_onnx):
    write_crops(tmp_path / "g", 3)
    run("index", tmp_path / "g", "--index", "o", "--weights", osnet_onnx)
    info = json.loads(run("info", "--index", "o", "--json").output)
    # the registered file name picks the model's spec; an ONNX-capable runtime runs it
    assert info["encoder"] == "osnet_x0_25_msmt17.onnx" and info["runtime"] in ("onnxruntime", "openvino")
    assert info["dim"] == 512
    txt = tmp_path / "model.txt"
    txt.write_text("x")
    r = run("index", tmp_path / "g", "--index", "o2", "--weights", txt, code=1)
    assert "cannot tell the runtime" in r.output


def test_index_stores_search_defaults_that_queries_use_and_override(run, tmp_path, tiny_weights):
    """`index --ef-search --pool` store defaults in a new index (shown by `info`); a query re-ranks that many
    candidates unless it asks for another pool."""
    crops = write_crops(tmp_path / "cam1", 9, seed=3)
    run("index", tmp_path / "cam1", "--index", "d", "--encoder", "tiny-test", "--weights", tiny_weights,
        "--ef-search", "20", "--pool", "2")
    assert json.loads(run("info", "--index", "d", "--json").output)["search"] == {"ef_search": 20, "pool": 2}

    def ids(*opts):
        doc = json.loads(run("query", crops[4], "--index", "d", "-k", "9", "--json", *opts).output)
        return [h["id"] for h in doc["queries"][0]["hits"]]
    cosine = ids("--rerank", "none")
    assert ids("--rerank", "kr")[2:] == cosine[2:]  # the stored pool of 2
    wide = ids("--rerank", "kr", "--pool", "9")
    assert sorted(wide) == sorted(cosine) and wide[2:] != cosine[2:]  # the query's own pool re-ranks all 9
    run("index", tmp_path / "cam1", "--index", "e", "--encoder", "tiny-test", "--weights", tiny_weights,
        "--pool", "0", code=2)
