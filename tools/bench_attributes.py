"""Attribute model checks and the fusion evaluation tables.

    python tools/bench_attributes.py agreement [--sim SIM_DIR]   # one JSON line
    python tools/bench_attributes.py table [--sim SIM_DIR] [--encoder NAME]  # markdown tables

``agreement``: what can be checked on pku_reid_dev without attribute labels.
The same person is seen by two cameras (8 crops each) in the same clothes, so
each attribute should get the same answer across the two cameras. Per
attribute: ``person_cross_camera`` (share of people whose mean probability
falls on the same side of 0.5 in both cameras), ``pairs_cross_camera`` (share
of cross-camera crop pairs of one person that agree), ``pairs_within_camera``,
``confident_pairs_cross_camera`` (agreement among pairs where both predictions
clear the fusion gate, and how many such pairs there are) and ``mean``. With
``--sim``, ``recolour_invariance``: share of gallery crops whose prediction
keeps its side of 0.5 after the simulated clothes change.

``table``: Rank-1 / mAP through ``reid_engine.eval`` (the engine's own
indexing and query path) for rerank none/default x fusion appearance /
attributes / clothes-change, on pku_reid_dev and (with ``--sim``) the
simulation written by ``tools/clothes_change_sim.py``.
Tools are never imported by the package.
"""
from __future__ import annotations

import argparse
import csv
import json
import logging
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from reid_engine.assets import shared_path  # noqa: E402
from reid_engine.attributes.fusion import MODES, confidence  # noqa: E402
from reid_engine.attributes.groups import BINARY, COLUMN  # noqa: E402

PROTOCOL = ("data", "pku_reid_dev", "protocol_cross_camera.csv")


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def agreement(sim: Path | None) -> dict[str, object]:
    from reid_engine.attributes.model import AttributeModel

    data = shared_path("data", "pku_reid_dev")
    rows = _rows(data / "manifest.csv")
    model = AttributeModel()
    probs = model.predict([data / r["file"] for r in rows])
    pid = np.array([r["person_id"] for r in rows])
    cam = np.array([r["camera"] for r in rows])
    cams = sorted(set(cam))
    gate = MODES["clothes-change"].gate  # type: ignore[union-attr]
    out: dict[str, object] = {"data": "pku_reid_dev", "people": len(set(pid)), "crops": len(rows),
                              "model": model.name, "gate": gate, "attributes": {}}
    for name in BINARY:
        p = probs[:, COLUMN[name]]
        side = p > 0.5
        conf = confidence(p, gate) > 0
        person = cross = cross_n = within = within_n = conf_agree = conf_n = 0
        for who in sorted(set(pid)):
            a, b = [np.flatnonzero((pid == who) & (cam == c)) for c in cams[:2]]
            person += int((p[a].mean() > 0.5) == (p[b].mean() > 0.5))
            eq = side[a][:, None] == side[b][None, :]
            cross += int(eq.sum())
            cross_n += eq.size
            both = conf[a][:, None] & conf[b][None, :]
            conf_agree += int((eq & both).sum())
            conf_n += int(both.sum())
            for idx in (a, b):
                w = side[idx][:, None] == side[idx][None, :]
                off = ~np.eye(len(idx), dtype=bool)
                within += int(w[off].sum())
                within_n += int(off.sum())
        entry = {
            "person_cross_camera": round(person / len(set(pid)), 3),
            "pairs_cross_camera": round(cross / cross_n, 3),
            "pairs_within_camera": round(within / within_n, 3),
            "confident_pairs_cross_camera": round(conf_agree / max(1, conf_n), 3),
            "confident_pairs": conf_n,
            "mean": round(float(p.mean()), 3),
        }
        out["attributes"][name] = entry  # type: ignore[index]
    if sim is not None:
        srows = [r for r in _rows(sim / "protocol.csv") if r["role"] == "gallery"]
        originals = [data / Path(*Path(r["file"]).parts[1:]) for r in srows]
        before = model.predict(originals)
        after = model.predict([sim / r["file"] for r in srows])
        out["recolour_invariance"] = {
            n: round(float(((before[:, COLUMN[n]] > 0.5) == (after[:, COLUMN[n]] > 0.5)).mean()), 3) for n in BINARY
        }
    return out


def table(sim: Path | None, encoder: str | None) -> str:
    from reid_engine.eval import read_dataset, sweep

    sets = [("pku_reid_dev", shared_path(*PROTOCOL))]
    if sim is not None:
        sets.append(("clothes-change simulation", sim / "protocol.csv"))
    lines = []
    for label, path in sets:
        rows = sweep(read_dataset(path), reranks=["none", "default"],
                     fusions=["appearance", "attributes", "clothes-change"], encoder=encoder)
        lines += [f"**{label}** (encoder {encoder or 'default'}), Rank-1 / mAP %", "",
                  "| rerank | appearance | attributes | clothes-change |", "|---|---|---|---|"]
        for rr in ("none", "default"):
            cells = [f"{r['rank1']:.1f} / {r['mAP']:.1f}" for r in rows if r["rerank"] == rr]
            lines.append(f"| `{rr}` | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("what", choices=("agreement", "table"))
    ap.add_argument("--sim", type=Path, default=None, help="folder written by tools/clothes_change_sim.py")
    ap.add_argument("--encoder", default=None, help="registered encoder for `table` (default: the engine's)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.what == "agreement":
        print(json.dumps(agreement(args.sim), separators=(",", ":")))
    else:
        print(table(args.sim, args.encoder))


if __name__ == "__main__":
    main()
