"""Ray against the local path: crops per second to encode and index the same crops.

    python tools/bench_ray.py                 # local 2-CPU cluster, one JSON line
    python tools/bench_ray.py --address auto  # a running cluster

Crops: the PKU-Reid dev set and the PETS crops (distinct files, so nothing is
skipped as a duplicate). Both runs build a fresh index with the ONNX OSNet x0.25;
the Ray figure excludes the cluster start-up (reported apart) but includes the
workers loading the model.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

from reid_engine import Engine, scan_source
from reid_engine.assets import shared_dir


def bench_ray(
    n: Optional[int] = None,
    address: Optional[str] = None,
    weights: Optional[str] = None,
    chunk_size: int = 64,
    workers: Optional[int] = None,
) -> dict[str, Any]:
    """Encode+index ``n`` crops locally and through ``index_with_ray``; crops/s of each."""
    from reid_engine.distributed.ray_runner import _cluster_cpus, connect, index_with_ray

    shared = shared_dir()
    w = weights or str(shared / "weights" / "osnet" / "osnet_x0_25_msmt17.onnx")
    items = scan_source(shared / "data" / "pku_reid_dev" / "manifest.csv")
    items += scan_source(shared / "data" / "pets09_s2l1" / "crops" / "index.csv")
    items = items[:n] if n else items
    with tempfile.TemporaryDirectory(prefix="bench-ray-") as tmp:
        with Engine.create(Path(tmp) / "local", weights=w) as eng:
            t = time.perf_counter()
            local = eng.add(items, show_progress=False)
            local_s = time.perf_counter() - t
        t = time.perf_counter()
        ray = connect(address)
        startup_s = time.perf_counter() - t
        with Engine.create(Path(tmp) / "ray", weights=w) as eng:
            _ = eng.encoder
            t = time.perf_counter()
            dist = index_with_ray(eng, items, address, chunk_size=chunk_size, workers=workers, show_progress=False)
            ray_s = time.perf_counter() - t
        cpus = _cluster_cpus(ray)
        ray.shutdown()
    return {
        "bench": "ray", "crops": local.added, "ray_crops": dist.added, "cluster_cpus": cpus,
        "machine_cpus": os.cpu_count(), "local_crops_per_s": round(local.added / local_s, 1),
        "ray_crops_per_s": round(dist.added / ray_s, 1), "ray_startup_s": round(startup_s, 1),
        "speedup": round(local_s / ray_s, 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=None, help="crops (default: all 2,141)")
    ap.add_argument("--address", default=None)
    ap.add_argument("--chunk-size", type=int, default=64)
    a = ap.parse_args()
    print(json.dumps(bench_ray(a.n, a.address, chunk_size=a.chunk_size)))


if __name__ == "__main__":
    main()
