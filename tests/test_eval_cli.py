"""``reid-engine eval`` through click's CliRunner."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from reid_engine.eval import runner as runner_module
from reid_engine.eval.cli import eval_command


def write_dataset(root: Path, with_roles: bool = True) -> Path:
    """Five people, two cameras, as a CSV protocol (roles) or manifest (no roles)."""
    rng = np.random.default_rng(7)
    colours = rng.integers(30, 225, (6, 3))
    rows = []
    root.mkdir(parents=True, exist_ok=True)
    for pid in range(1, 6):
        for cam in (1, 2):
            for j in range(3):
                name = f"{pid:03d}_c{cam}_{j}.png"
                img = np.clip(colours[pid] + rng.normal(0, 45, (32, 16, 3)), 0, 255).astype(np.uint8)
                cv2.imwrite(str(root / name), img)
                row = {"file": name, "person_id": pid, "camera": f"{cam:02d}"}
                if with_roles:
                    row["role"] = "query" if cam == 1 else "gallery"
                rows.append(row)
    path = root / ("protocol.csv" if with_roles else "manifest.csv")
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def invoke(*args: str):
    return CliRunner().invoke(eval_command, list(args), catch_exceptions=False)


def test_json_output(tmp_path: Path, tiny_weights: Path):
    proto = write_dataset(tmp_path / "data")
    res = invoke(str(proto), "--encoder", "tiny-test", "--weights", str(tiny_weights), "--json",
                 "--cache-dir", str(tmp_path / "cache"))
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert {"rank1", "mAP", "mINP"} <= set(doc) and doc["unit"] == "percent"
    assert 0 < doc["mAP"] <= 100 and doc["rank1"] == doc["metrics"]["rank1"]
    assert doc["settings"]["encoder"] == "tiny-test" and doc["settings"]["dataset"] == str(proto)
    assert doc["dataset"]["num_query"] == 15 and doc["dataset"]["num_gallery"] == 15


def test_table_output_with_camera_rule_and_report(tmp_path: Path, tiny_weights: Path):
    write_dataset(tmp_path / "data", with_roles=False)
    common = ["--encoder", "tiny-test", "--weights", str(tiny_weights), "--no-cache"]
    fwd = invoke(str(tmp_path / "data"), *common, "--query-camera", "01", "--gallery-camera", "02",
                 "--report", str(tmp_path / "rep"), "--visualize", "2")
    assert fwd.exit_code == 0, fwd.output
    assert "Rank-1" in fwd.stdout and "mAP" in fwd.stdout and "mINP" in fwd.stdout
    assert "query cam 01, gallery cam 02" in fwd.stdout
    saved = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert f"{saved['mAP']:.2f}" in fwd.stdout
    assert (tmp_path / "rep" / "ranked_lists.html").is_file()
    rev = invoke(str(tmp_path / "data" / "manifest.csv"), *common, "--query-camera", "2", "--json")
    assert json.loads(rev.stdout)["dataset"]["query_cameras"] == [2]


def test_errors_are_one_line(tmp_path: Path, tiny_weights: Path):
    write_dataset(tmp_path / "data", with_roles=False)
    args = [str(tmp_path / "data"), "--encoder", "tiny-test", "--weights", str(tiny_weights)]
    res = CliRunner().invoke(eval_command, args)
    assert res.exit_code == 1
    assert "Error:" in res.output and "cameras: 01, 02" in res.output
    assert len(res.output.strip().splitlines()) == 1
    res = CliRunner().invoke(eval_command, [str(tmp_path / "data"), "--format", "viper"])
    assert res.exit_code == 1 and "unknown dataset format 'viper'" in res.output
    res = CliRunner().invoke(eval_command, [str(tmp_path / "data"), "--query-camera", "1", "--rerank", "a,b"])
    assert res.exit_code == 2 and "--sweep" in res.output


def test_visualize_defaults_to_a_report_folder(tmp_path: Path, tiny_weights: Path, monkeypatch):
    proto = write_dataset(tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    res = invoke(str(proto), "--encoder", "tiny-test", "--weights", str(tiny_weights), "--no-cache", "--visualize", "1")
    assert res.exit_code == 0
    assert (tmp_path / "reid-eval" / "protocol" / "ranked_lists.html").is_file()
    assert "ranked lists:" in res.stderr


class _Hit:
    def __init__(self, id: int, distance: float) -> None:
        self.id, self.distance = id, distance


class _Engine:
    """Stand-in engine whose query takes ``rerank``: "reverse" turns the ranking around."""

    class encoder:  # noqa: N801  a class used as a namespace-like encoder
        name = "fake"
        weights_sha256 = "e" * 64

        @staticmethod
        def encode(paths, batch_size=32):
            return np.stack([cv2.imread(str(p)).mean(axis=(0, 1)) for p in paths]).astype(np.float32)

    def add_features(self, feats, items, hashes=None):
        self.g = feats
        return list(range(len(items)))

    def query_features(self, feats, k, *, query_labels=None, query_cameras=None, rerank=None, fusion=None):
        d = np.linalg.norm(feats[:, None] - self.g[None], axis=2)
        order = np.argsort(d, axis=1)[:, ::-1] if rerank == "reverse" else np.argsort(d, axis=1)
        return [type("R", (), {"hits": [_Hit(int(g), float(d[i, g])) for g in row[:k]]}) for i, row in enumerate(order)]


def test_sweep_prints_a_table_and_json(tmp_path: Path, monkeypatch):
    proto = write_dataset(tmp_path / "data")
    monkeypatch.setattr(runner_module, "default_engine_factory", lambda *a, **kw: (lambda folder: _Engine()))
    res = invoke(str(proto), "--sweep", "--rerank", "none,reverse", "--no-cache")
    assert res.exit_code == 0, res.output
    lines = res.stdout.strip().splitlines()
    assert lines[0] == "protocol" and lines[1].split()[:4] == ["rerank", "fusion", "Rank-1", "Rank-5"]
    assert [line.split()[0] for line in lines[3:]] == ["none", "reverse"]
    res = invoke(str(proto), "--sweep", "--rerank", "none", "--rerank", "reverse", "--fusion", "a,b", "--json",
                 "--no-cache")
    rows = json.loads(res.stdout)["rows"]
    settings = [(r["rerank"], r["fusion"]) for r in rows]
    assert settings == [("none", "a"), ("none", "b"), ("reverse", "a"), ("reverse", "b")]
    assert rows[0]["rank1"] > rows[2]["rank1"]


@pytest.mark.slow
@pytest.mark.parametrize(
    "target,args,expected",
    [
        ("data/pku_reid_dev", ["--query-camera", "01", "--gallery-camera", "02"], (74.7, 60.6)),
        ("data/pku_reid_dev", ["--query-camera", "02", "--gallery-camera", "01"], None),
        ("data/pets09_s2l1/protocol_setA_frames697-742.csv", [], None),
        ("data/pets09_s2l1/protocol_setB_frames232-280.csv", [], None),
    ],
)
def test_dev_sets_with_onnx_osnet(shared: Path, osnet_onnx: Path, tmp_path: Path, target, args, expected):
    res = invoke(str(shared / target), "--weights", str(osnet_onnx), *args, "--rerank", "none", "--json",
                 "--cache-dir", str(tmp_path / "c"))
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    print(target, args, f"Rank-1 {doc['rank1']:.2f}  mAP {doc['mAP']:.2f}  mINP {doc['mINP']:.2f}")
    assert doc["settings"]["exact"] and doc["metrics"]["num_skipped"] == 0
    if expected:
        assert doc["rank1"] == pytest.approx(expected[0], abs=0.5) and doc["mAP"] == pytest.approx(expected[1], abs=0.5)
    else:
        assert doc["rank1"] > 50 and doc["mAP"] > 40
