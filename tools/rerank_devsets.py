"""Re-ranking presets on the real development sets: prints a Rank-1 / mAP table.

Computes (and caches) L2-normalised features of the three query/gallery
protocols in ``shared/data`` with OSNet x0.25 (ONNX) and, when asked, the
OpenVINO model person-reidentification-retail-0277, then scores every preset
of ``reid_engine.rerank.PRESETS`` (plus the peer methods) on each set.

    python tools/rerank_devsets.py                       # OSNet ONNX, all presets
    python tools/rerank_devsets.py --model retail-0277   # OpenVINO features
    python tools/rerank_devsets.py --presets none,nfc,default --markdown

Tools are never imported by the package; this one needs onnxruntime / openvino,
opencv-python-headless and torchreid (for ``evaluate_rank``).
"""
from __future__ import annotations

import argparse
import csv
import logging
import sys
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from reid_engine.assets import shared_path  # noqa: E402
from reid_engine.rerank import PRESETS, get_preset, rerank_search  # noqa: E402

log = logging.getLogger("rerank_devsets")

SETS = {
    "pku_reid_dev": ("data/pku_reid_dev", "protocol_cross_camera.csv"),
    "pets09_setA": ("data/pets09_s2l1", "protocol_setA_frames697-742.csv"),
    "pets09_setB": ("data/pets09_s2l1", "protocol_setB_frames232-280.csv"),
}
MODELS = ("osnet-onnx", "retail-0277")
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


def _read_rows(set_name: str) -> tuple[Path, list[dict[str, str]]]:
    folder, protocol = SETS[set_name]
    root = shared_path(folder)
    with open(root / protocol, newline="") as fh:
        return root, list(csv.DictReader(fh))


def _encode_osnet_onnx(paths: list[Path], batch_size: int = 32) -> np.ndarray:
    import cv2
    import onnxruntime as ort

    sess = ort.InferenceSession(str(shared_path("weights/osnet/osnet_x0_25_msmt17.onnx")),
                                providers=["CPUExecutionProvider"])

    def prep(p: Path) -> np.ndarray:
        im = cv2.imread(str(p))[:, :, ::-1]
        im = cv2.resize(im, (128, 256), interpolation=cv2.INTER_LINEAR).astype(np.float32) / 255
        return ((im - IMAGENET_MEAN) / IMAGENET_STD).transpose(2, 0, 1)

    out = []
    for i in range(0, len(paths), batch_size):
        batch = np.stack([prep(p) for p in paths[i:i + batch_size]])
        out.append(sess.run(None, {"images": batch})[0])
    return np.concatenate(out).astype(np.float32)


def _encode_retail_0277(paths: list[Path]) -> np.ndarray:
    import cv2
    import openvino as ov

    xml = shared_path("weights/intel/person-reidentification-retail-0277/FP16/"
                      "person-reidentification-retail-0277.xml")
    compiled = ov.Core().compile_model(str(xml), "CPU")
    out = []
    for p in paths:
        im = cv2.resize(cv2.imread(str(p)), (128, 256), interpolation=cv2.INTER_LINEAR)
        x = im.astype(np.float32).transpose(2, 0, 1)[None]
        out.append(np.asarray(compiled([x])[compiled.output(0)]).reshape(-1))
    return np.stack(out).astype(np.float32)


def load_features(set_name: str, model: str, cache_dir: Path) -> dict[str, np.ndarray]:
    """Query/gallery features and labels of one set, from the cache or computed."""
    cache = cache_dir / f"{set_name}__{model}.npz"
    if cache.exists():
        return dict(np.load(cache))
    root, rows = _read_rows(set_name)
    paths = [root / r["file"] for r in rows]
    log.info("encoding %d crops of %s with %s", len(paths), set_name, model)
    feats = _encode_osnet_onnx(paths) if model == "osnet-onnx" else _encode_retail_0277(paths)
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    role = np.array([r["role"] for r in rows])
    pid = np.array([int(r["pid"]) for r in rows])
    cam = np.array([int(r["camid"]) for r in rows])
    q, g = role == "query", role == "gallery"
    data = {"qf": feats[q], "gf": feats[g], "q_pid": pid[q], "g_pid": pid[g],
            "q_cam": cam[q], "g_cam": cam[g]}
    cache_dir.mkdir(parents=True, exist_ok=True)
    np.savez(cache, **data)
    return data


def evaluate(dist_sorted: np.ndarray, pos: np.ndarray, data: dict[str, np.ndarray]) -> tuple[float, float]:
    """Rank-1 and mAP (%) of full rankings, with torchreid's evaluate_rank protocol."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from torchreid.reid.metrics import evaluate_rank
    q, g = pos.shape
    # evaluate_rank sorts a distance matrix: give each gallery row its rank position.
    distmat = np.empty((q, g), np.float32)
    np.put_along_axis(distmat, pos, np.broadcast_to(np.arange(g, dtype=np.float32), (q, g)), axis=1)
    cmc, m_ap = evaluate_rank(distmat, data["q_pid"], data["g_pid"], data["q_cam"], data["g_cam"],
                              max_rank=10, use_metric_cuhk03=False)
    return 100.0 * float(cmc[0]), 100.0 * float(m_ap)


def score(data: dict[str, np.ndarray], preset: str) -> tuple[float, float]:
    cfg = get_preset(preset)
    g = len(data["gf"])
    dist, pos = rerank_search(data["qf"], data["gf"], g, cfg)
    return evaluate(dist, pos, data)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=MODELS, default="osnet-onnx")
    ap.add_argument("--sets", default=",".join(SETS))
    ap.add_argument("--presets", default=",".join(PRESETS))
    ap.add_argument("--cache", type=Path, default=Path("/tmp/reid_rerank_feats"))
    ap.add_argument("--markdown", action="store_true", help="print a markdown table")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    sets = args.sets.split(",")
    presets = args.presets.split(",")
    datas = {s: load_features(s, args.model, args.cache) for s in sets}
    results = {p: [score(datas[s], p) for s in sets] for p in presets}
    if args.markdown:
        print(f"| preset ({args.model}) | " + " | ".join(f"{s} R1 / mAP" for s in sets) + " |")
        print("|---" * (len(sets) + 1) + "|")
        for p in presets:
            print(f"| `{p}` | " + " | ".join(f"{r:.1f} / {m:.1f}" for r, m in results[p]) + " |")
    else:
        print(f"{'preset':<14}" + "".join(f"{s:>22}" for s in sets))
        for p in presets:
            print(f"{p:<14}" + "".join(f"{r:>11.1f}{m:>11.1f}" for r, m in results[p]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
