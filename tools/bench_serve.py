"""Load test of ``reid-engine serve`` on loopback beside the library's own query speed; prints ONE JSON line.

In one run, on the pku_reid_dev camera-02 gallery (built once under /tmp, reused after):

  library   ``Engine.query([path], k)`` in this process, one camera-01 image per call, sequentially;
  one       one HTTP client alone: ``POST /query`` (multipart upload of a camera-01 crop, k);
  many      N concurrent clients (asyncio + httpx, default 32) for a fixed time.

The server is ``reid-engine serve`` in a child process on 127.0.0.1 and a free port, with its default
settings and the default re-ranking; it is stopped at the end, also on error. Targets (issue #12): no
errors; ``many`` reaches >= 80% of the library's queries/s; ``one``'s p50 <= the library's p50 + 10 ms.

    python tools/bench_serve.py                                  # 10 s + 10 s + 30 s
    python tools/bench_serve.py --seconds-library 3 --seconds-one 3 --seconds-many 5 --clients 8   # smoke run

Every loop is bounded by time and by ``--max-requests``; only 127.0.0.1 is contacted.
"""
from __future__ import annotations

import argparse
import asyncio
import csv
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any, Optional

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from reid_engine.assets import shared_path  # noqa: E402

log = logging.getLogger("bench_serve")
HOST = "127.0.0.1"
BOUNDARY = "reidbenchboundary7f3a"


# -- set-up ----------------------------------------------------------------------------------------
def reid_cmd() -> list[str]:
    """The ``reid-engine`` command of this environment."""
    exe = shutil.which("reid-engine")
    return [exe] if exe else [sys.executable, "-m", "reid_engine.cli"]


def build_index(folder: Path, protocol: Path, weights: Path) -> float:
    """Index the gallery role of the protocol CSV into ``folder`` unless it is there; seconds spent."""
    if (folder / "manifest.json").exists():
        return 0.0
    t0 = time.perf_counter()
    cmd = reid_cmd() + ["index", str(protocol), "--role", "gallery", "--index", str(folder), "--weights", str(weights)]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def query_images(protocol: Path, limit: int) -> list[Path]:
    """The query-role (camera 01) images of the protocol CSV, in file order."""
    with open(protocol, newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r.get("role") == "query"]
    return [protocol.parent / r["file"] for r in rows][:limit]


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def start_server(index: Path, weights: Path, port: int, timeout: float = 120.0) -> subprocess.Popen:
    """``reid-engine serve`` on 127.0.0.1:port in a child process, returned once /healthz answers."""
    cmd = reid_cmd() + ["serve", "--index", str(index), "--host", HOST, "--port", str(port), "--weights", str(weights)]
    env = {k: v for k, v in os.environ.items() if k != "REID_ENGINE_TOKEN"}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"http://{HOST}:{port}/healthz", timeout=2) as r:
                if r.status == 200:
                    return proc
        except OSError:
            if proc.poll() is not None:
                err = proc.stderr.read().decode(errors="replace")[-2000:] if proc.stderr else ""
                raise RuntimeError(f"server exited with {proc.returncode}: {err}") from None
            time.sleep(0.2)
    stop_server(proc)
    raise RuntimeError(f"server did not answer /healthz within {timeout:.0f} s")


def stop_server(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def multipart(path: Path, k: int) -> bytes:
    """A ``POST /query`` body: one image file and ``k``, as a browser form would send them."""
    parts = [
        f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"k\"\r\n\r\n{k}\r\n".encode(),
        f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"images\"; filename=\"{path.name}\"\r\n"
        "Content-Type: image/png\r\n\r\n".encode() + path.read_bytes() + b"\r\n",
        f"--{BOUNDARY}--\r\n".encode(),
    ]
    return b"".join(parts)


# -- measuring -------------------------------------------------------------------------------------
def summary(lat: list[float], errors: int, seconds: float) -> dict[str, Any]:
    """Requests/s, latency percentiles (ms) and errors of one phase."""
    arr = np.asarray(lat, np.float64) * 1000.0
    ok = len(lat)
    return {
        "requests": ok + errors, "ok": ok, "errors": errors, "seconds": round(seconds, 2),
        "rps": round(ok / seconds, 2) if seconds > 0 else 0.0,
        "p50_ms": round(float(np.percentile(arr, 50)), 2) if ok else None,
        "p99_ms": round(float(np.percentile(arr, 99)), 2) if ok else None,
        "mean_ms": round(float(arr.mean()), 2) if ok else None,
    }


def run_library(index: Path, weights: Path, images: list[Path], k: int, seconds: float, max_calls: int,
                warmup: int) -> dict[str, Any]:
    """Sequential ``Engine.query([path], k)`` calls in this process for ``seconds``."""
    from reid_engine import Engine

    with Engine.open(index, weights=weights) as engine:
        crops = int(engine.stats()["crops"])
        for i in range(warmup):
            engine.query([images[i % len(images)]], k=k)
        lat: list[float] = []
        c0 = time.process_time()
        t_start = time.perf_counter()
        end = t_start + seconds
        while time.perf_counter() < end and len(lat) < max_calls:
            path = images[len(lat) % len(images)]
            t0 = time.perf_counter()
            res = engine.query([path], k=k)
            lat.append(time.perf_counter() - t0)
            if len(res[0].hits) != k:
                raise RuntimeError(f"library query of {path.name} returned {len(res[0].hits)} hits, not {k}")
        wall = time.perf_counter() - t_start
        cpu = time.process_time() - c0
    out = summary(lat, 0, wall)
    return {"gallery_crops": crops, "queries": out["ok"], "seconds": out["seconds"], "qps": out["rps"],
            "p50_ms": out["p50_ms"], "p99_ms": out["p99_ms"],
            "cpu_ms_per_query": round(1000 * cpu / max(1, len(lat)), 2)}


async def _client_loop(client: Any, url: str, bodies: list[bytes], start: int, end: float, budget: list[int],
                       lat: list[float], errs: list[str], k: int, check: bool) -> None:
    headers = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}
    i = start
    while time.perf_counter() < end and budget[0] > 0:
        budget[0] -= 1
        body = bodies[i % len(bodies)]
        i += 1
        t0 = time.perf_counter()
        try:
            r = await client.post(url, content=body, headers=headers)
            dt = time.perf_counter() - t0
            if r.status_code != 200:
                errs.append(f"status {r.status_code}: {r.text[:200]}")
                continue
            if check:
                hits = r.json()["results"][0]["hits"]
                if len(hits) != k:
                    errs.append(f"{len(hits)} hits, not {k}")
                    continue
            lat.append(dt)
        except Exception as exc:  # any transport failure is an error of the run, counted, not raised
            errs.append(f"{type(exc).__name__}: {exc}"[:200])


async def run_clients(base: str, bodies: list[bytes], clients: int, seconds: float, max_requests: int, k: int,
                      warmup: int, check: bool) -> tuple[dict[str, Any], list[str]]:
    """``clients`` concurrent loops of ``POST /query`` for ``seconds``; (summary, first error messages)."""
    import httpx

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=base, timeout=120.0, limits=limits) as client:
        headers = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}
        for i in range(warmup):
            (await client.post("/query", content=bodies[i % len(bodies)], headers=headers)).raise_for_status()
        lat: list[float] = []
        errs: list[str] = []
        budget = [max_requests]
        t_start = time.perf_counter()
        end = t_start + seconds
        await asyncio.gather(*[
            _client_loop(client, "/query", bodies, c * 7, end, budget, lat, errs, k, check) for c in range(clients)
        ])
        wall = time.perf_counter() - t_start
    return summary(lat, len(errs), wall), errs[:5]


def serve_phase(index: Path, weights: Path, bodies: list[bytes], args: argparse.Namespace,
                clients: int, seconds: float) -> dict[str, Any]:
    """One fresh server, one client phase, the server's CPU time per request."""
    port = free_port()
    proc = start_server(index, weights, port)
    try:
        base = f"http://{HOST}:{port}"
        c0 = cpu_seconds(proc.pid)
        out, errs = asyncio.run(run_clients(base, bodies, clients, seconds, args.max_requests, args.k,
                                            args.warmup if clients == 1 else 0, check=not args.no_check))
        # warm-up requests ran on the server too: they are a few, the per-request figure is an upper bound
        out["server_cpu_ms_per_request"] = round(1000 * (cpu_seconds(proc.pid) - c0) / max(1, out["requests"]), 2)
        out["clients"] = clients
        if errs:
            out["first_errors"] = errs
    finally:
        stop_server(proc)
    return out


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", type=Path, default=Path("/tmp/reid_bench_serve"), help="where the index is kept")
    p.add_argument("--weights", type=Path, default=shared_path("weights", "osnet", "osnet_x0_25_msmt17.onnx"))
    p.add_argument("--protocol", type=Path,
                   default=shared_path("data", "pku_reid_dev", "protocol_cross_camera.csv"))
    p.add_argument("-k", "--k", type=int, default=10)
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--seconds-library", type=float, default=10.0)
    p.add_argument("--seconds-one", type=float, default=10.0)
    p.add_argument("--seconds-many", type=float, default=30.0)
    p.add_argument("--max-requests", type=int, default=100_000, help="upper bound on calls in any phase")
    p.add_argument("--images", type=int, default=64, help="how many camera-01 images to cycle through")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--no-check", action="store_true", help="do not parse the answers (less client CPU)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    for name, val in (("seconds-library", args.seconds_library), ("seconds-one", args.seconds_one),
                      ("seconds-many", args.seconds_many)):
        if not 0 < val <= 600:
            p.error(f"--{name} must be in (0, 600]")
    if not 1 <= args.clients <= 256:
        p.error("--clients must be in [1, 256]")

    load_start = os.getloadavg()[0]
    index = args.work / "pku_cam02"
    args.work.mkdir(parents=True, exist_ok=True)
    build_s = build_index(index, args.protocol, args.weights)
    images = query_images(args.protocol, args.images)
    if not images:
        raise SystemExit(f"{args.protocol}: no query images")
    bodies = [multipart(path, args.k) for path in images]

    library = run_library(index, args.weights, images, args.k, args.seconds_library, args.max_requests, args.warmup)
    one = serve_phase(index, args.weights, bodies, args, 1, args.seconds_one)
    many = serve_phase(index, args.weights, bodies, args, args.clients, args.seconds_many)

    ratio = many["rps"] / library["qps"] if library["qps"] else 0.0
    p50_gap = (one["p50_ms"] - library["p50_ms"]) if one["p50_ms"] is not None else None
    doc = {
        "bench": "serve", "index": str(index), "gallery_crops": library.pop("gallery_crops"),
        "query_images": len(images),
        "k": args.k, "rerank": "default", "build_seconds": round(build_s, 1), "cpus": os.cpu_count(),
        "loadavg_start": load_start,
        "library": library, "one_client": one, "many_clients": many,
        "targets": {
            "many_rps_over_library_qps": round(ratio, 3), "many_ok": ratio >= 0.8,
            "one_p50_minus_library_p50_ms": None if p50_gap is None else round(p50_gap, 2),
            "one_ok": p50_gap is not None and p50_gap <= 10.0,
            "errors": one["errors"] + many["errors"], "errors_ok": one["errors"] + many["errors"] == 0,
        },
    }
    print(json.dumps(doc))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
