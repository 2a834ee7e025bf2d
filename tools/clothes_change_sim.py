"""Build a simulated clothes-change protocol from pku_reid_dev: the gallery's outfits recoloured.

Every gallery crop (camera 02 by default) gets a new outfit: inside a
foreground mask, the torso and leg regions are recoloured (hue rotation, a
minimum saturation and a base hue so grey and black clothes change too, and a
new lightness level), with parameters drawn once per identity from a hash of its id, so all
crops of one person wear the same new clothes. The head region (top 20% of the
crop) and skin-coloured pixels are left alone. Query crops (camera 01) are
copied unchanged. Deterministic: the same input gives byte-identical output.

    python tools/clothes_change_sim.py OUT_DIR [--data PKU_DIR] [--preview grid.png]
    reid-engine eval OUT_DIR/protocol.csv --fusion clothes-change

Writes OUT_DIR/query/PID/*.png, OUT_DIR/gallery/PID/*.png and OUT_DIR/protocol.csv
(file, pid, camid, clothes_id, role). This is a SIMULATION: real clothes change
shape, layers and texture too; recolouring only changes colour and brightness.
Tools are never imported by the package.
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import json
import logging
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from reid_engine.assets import shared_path  # noqa: E402

log = logging.getLogger("clothes_change_sim")

HEAD = 0.20  # rows above this fraction of the height are the head: never touched
WAIST = 0.55  # torso above, legs below
BLEND_ROWS = 0.03  # soft boundaries, as a fraction of the height


@dataclass(frozen=True)
class Outfit:
    """New colour of one garment: hue rotation (degrees), minimum saturation (0-1), target brightness (0-1)."""

    hue_shift: float
    min_saturation: float
    value: float


def outfits_for(pid: str) -> tuple[Outfit, Outfit]:
    """Deterministic (top, bottom) outfits of an identity, from the sha256 of its id."""
    h = hashlib.sha256(f"clothes-change/{pid}".encode()).digest()
    u = [b / 255.0 for b in h[:6]]

    def outfit(a: float, b: float, c: float) -> Outfit:
        # rotations of 60-300 degrees: never close to the original hue
        return Outfit(hue_shift=60.0 + 240.0 * a, min_saturation=0.35 + 0.4 * b, value=0.25 + 0.6 * c)

    return outfit(u[0], u[1], u[2]), outfit(u[3], u[4], u[5])


def foreground_mask(img: np.ndarray) -> np.ndarray:
    """Float (H, W) person mask in [0, 1]: GrabCut seeded from the crop's centre, with a fixed RNG seed."""
    h, w = img.shape[:2]
    mask = np.zeros((h, w), np.uint8)
    rect = (max(1, int(0.08 * w)), 1, max(2, int(0.84 * w)), h - 2)
    bgd = np.zeros((1, 65), np.float64)
    fgd = np.zeros((1, 65), np.float64)
    cv2.setRNGSeed(12345)
    try:
        cv2.grabCut(img, mask, rect, bgd, fgd, 4, cv2.GC_INIT_WITH_RECT)
        fg = np.isin(mask, (cv2.GC_FGD, cv2.GC_PR_FGD)).astype(np.float32)
    except cv2.error:
        fg = np.zeros((h, w), np.float32)
    if fg.mean() < 0.2:  # GrabCut lost the person (e.g. light clothes on light ground): a central ellipse
        fg = np.zeros((h, w), np.float32)
        cv2.ellipse(fg, (w // 2, h // 2), (int(w * 0.35), int(h * 0.48)), 0, 0, 360, 1.0, -1)
    return cv2.GaussianBlur(fg, (3, 3), 0)


def skin_mask(img: np.ndarray) -> np.ndarray:
    """Float mask of skin-coloured pixels (YCrCb box), kept out of the recolouring."""
    ycc = cv2.cvtColor(img, cv2.COLOR_BGR2YCrCb)
    skin = cv2.inRange(ycc, (40, 138, 80), (255, 175, 128)).astype(np.float32) / 255.0
    return cv2.GaussianBlur(skin, (3, 3), 0)


def _row_weights(h: int, start: float, end: float) -> np.ndarray:
    """(H,) weights: 1 between the two fractions, ramping over BLEND_ROWS at each end."""
    y = (np.arange(h, dtype=np.float32) + 0.5) / h
    ramp = BLEND_ROWS
    up = np.clip((y - start) / ramp + 0.5, 0, 1) if start > 0 else np.ones(h, np.float32)
    down = np.clip((end - y) / ramp + 0.5, 0, 1) if end < 1 else np.ones(h, np.float32)
    return (up * down).astype(np.float32)


def _recolour(hsv: np.ndarray, weight: np.ndarray, outfit: Outfit) -> np.ndarray:
    """HSV (float32: H 0-360, S 0-1, V 0-1) with the weighted region recoloured to ``outfit``."""
    out = hsv.copy()
    sel = weight > 0.01
    if not sel.any():
        return out
    v = hsv[..., 2]
    mean_v = float(np.average(v[sel], weights=weight[sel]))
    sat = np.maximum(hsv[..., 1], outfit.min_saturation)
    val = np.clip(outfit.value + 0.8 * (v - mean_v), 0.02, 1.0)  # keep the folds and shading
    # grey pixels have no meaningful hue: they take the outfit's base hue (= the shift) instead
    grey = hsv[..., 1] < 0.2
    base = np.where(grey, outfit.hue_shift, hsv[..., 0] + outfit.hue_shift)
    delta = (base - hsv[..., 0] + 180.0) % 360.0 - 180.0  # shortest way round the hue circle
    out[..., 0] = (hsv[..., 0] + weight * delta) % 360.0  # a partial weight rotates partly
    out[..., 1] = hsv[..., 1] * (1 - weight) + sat * weight
    out[..., 2] = v * (1 - weight) + val * weight
    return out


def change_clothes(img: np.ndarray, pid: str) -> np.ndarray:
    """The crop with its torso and legs recoloured to the identity's new outfit; head untouched."""
    h = img.shape[0]
    top, bottom = outfits_for(pid)
    body = foreground_mask(img) * (1.0 - skin_mask(img))
    hsv = cv2.cvtColor(img.astype(np.float32) / 255.0, cv2.COLOR_BGR2HSV)
    w_top = body * _row_weights(h, HEAD, WAIST)[:, None]
    w_bottom = body * _row_weights(h, WAIST, 1.0)[:, None]
    hsv = _recolour(hsv, w_top, top)
    hsv = _recolour(hsv, w_bottom, bottom)
    out = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)
    return np.clip(np.round(out * 255.0), 0, 255).astype(np.uint8)


def build(data: Path, out: Path, query_camera: str = "01", gallery_camera: str = "02") -> dict[str, int]:
    """Write the simulated set and its protocol CSV into ``out``; returns counts."""
    with open(data / "manifest.csv", newline="") as fh:
        rows = sorted(csv.DictReader(fh), key=lambda r: r["file"])
    out.mkdir(parents=True, exist_ok=True)
    records = []
    counts = {"query": 0, "gallery": 0}
    for r in rows:
        cam, pid, src = r["camera"], r["person_id"], data / r["file"]
        if cam not in (query_camera, gallery_camera):
            continue
        role = "query" if cam == query_camera else "gallery"
        rel = Path(role) / r["file"]
        dst = out / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if role == "query":
            shutil.copyfile(src, dst)
        else:
            img = cv2.imread(str(src), cv2.IMREAD_COLOR)
            if img is None:
                raise SystemExit(f"{src}: not a readable image")
            cv2.imwrite(str(dst), change_clothes(img, pid))
        records.append({"file": rel.as_posix(), "pid": int(pid), "camid": int(cam),
                        "clothes_id": f"{pid}-{'a' if role == 'query' else 'b'}", "role": role})
        counts[role] += 1
    with open(out / "protocol.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["file", "pid", "camid", "clothes_id", "role"])
        writer.writeheader()
        writer.writerows(records)
    return counts


def preview(out: Path, data: Path, path: Path, n: int = 12) -> None:
    """Side-by-side grid: original gallery crop | recoloured, for the first n identities."""
    with open(out / "protocol.csv", newline="") as fh:
        gallery = [r for r in csv.DictReader(fh) if r["role"] == "gallery"]
    tiles = []
    for pid in sorted({r["pid"] for r in gallery}, key=int)[:n]:
        files = [r["file"] for r in gallery if r["pid"] == pid][:4]
        pairs = [np.hstack([cv2.imread(str(data / Path(*Path(f).parts[1:]))), cv2.imread(str(out / f))]) for f in files]
        tiles.append(np.hstack(pairs))
    cv2.imwrite(str(path), np.vstack(tiles))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path, help="folder to write (created)")
    ap.add_argument("--data", type=Path, default=None, help="pku_reid_dev folder (default: the shared copy)")
    ap.add_argument("--query-camera", default="01")
    ap.add_argument("--gallery-camera", default="02")
    ap.add_argument("--preview", type=Path, default=None, help="also write a before/after grid PNG")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    data = args.data or shared_path("data", "pku_reid_dev")
    if not (data / "manifest.csv").is_file():
        raise SystemExit(f"{data}: no manifest.csv (expected the pku_reid_dev folder)")
    counts = build(data, args.out, args.query_camera, args.gallery_camera)
    if args.preview is not None:
        preview(args.out, data, args.preview)
    print(json.dumps({"out": str(args.out), "protocol": str(args.out / "protocol.csv"), **counts}))


if __name__ == "__main__":
    main()
