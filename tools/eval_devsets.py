"""The re-ranking presets on the six development protocols, through the engine's own served path.

Each protocol's gallery goes into an index and every query is answered by ``Engine.query_features``
exactly as ``reid-engine eval`` does (first stage through the vector backend, re-ranking of the
candidate pool, cosine order after it), with OSNet x0.25 (ONNX) and retail-0277 (OpenVINO).
Prints a markdown table (Rank-1 / Rank-5 / mAP %) and one JSON line.

    python tools/eval_devsets.py                      # presets none, default, nfc, qe
    python tools/eval_devsets.py --presets none,default --encoders osnet

The default's parameters were chosen by ``tools/rerank_devsets.py`` on all six sets (its held-out figures,
each set scored with the point chosen without it, are that tool's); the query crops are shown to each index
as camera context, as ``reid-engine eval`` does.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from reid_engine.assets import shared_path  # noqa: E402
from reid_engine.eval.datasets import read_dataset  # noqa: E402
from reid_engine.eval.runner import sweep  # noqa: E402

ENCODERS = {
    "osnet": "weights/osnet/osnet_x0_25_msmt17.onnx",
    "retail-0277": "weights/intel/person-reidentification-retail-0277/FP16/person-reidentification-retail-0277.xml",
}
#: name -> (path under shared/, read_dataset keyword arguments)
SETS: dict[str, tuple[str, dict[str, Any]]] = {
    "pku 01->02": ("data/pku_reid_dev/protocol_cross_camera.csv", {}),
    "pku 02->01": ("data/pku_reid_dev", {"query_cameras": ["02"], "gallery_cameras": ["01"]}),
    "PETS A": ("data/pets09_s2l1/protocol_setA_frames697-742.csv", {}),
    "PETS B": ("data/pets09_s2l1/protocol_setB_frames232-280.csv", {}),
    "viper": ("data/viper/protocol_cross_camera.csv", {}),
    "caviar4reid": ("data/caviar4reid/protocol_cross_camera.csv", {}),
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", default="none,default,nfc,qe")
    ap.add_argument("--encoders", default=",".join(ENCODERS))
    ap.add_argument("--sets", default=",".join(SETS))
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    presets = args.presets.split(",")
    sets = args.sets.split(",")
    out: dict[str, Any] = {"bench": "eval_devsets", "presets": presets, "results": {}}
    for enc in args.encoders.split(","):
        weights = shared_path(ENCODERS[enc])
        table: dict[str, dict[str, list[float]]] = {p: {} for p in presets}
        for name in sets:
            rel, kw = SETS[name]
            split = read_dataset(shared_path(rel), **kw)
            for row in sweep(split, weights=weights, reranks=presets):
                table[row["rerank"]][name] = [round(row["rank1"], 1), round(row["rank5"], 1), round(row["mAP"], 1)]
        out["results"][enc] = table
        print(f"\n**{enc}** (Rank-1 / Rank-5 / mAP %, through the engine)\n")
        print("| preset | " + " | ".join(sets) + " |")
        print("|---" * (len(sets) + 1) + "|")
        for p in presets:
            print(f"| `{p}` | " + " | ".join(" / ".join(f"{v:.1f}" for v in table[p][s]) for s in sets) + " |")
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
