"""`fivewsi view` on the large slide: tile latency cold and warm, and 8 clients for 30 s.

The issue's targets, per 256 px tile on 2 CPU cores: warm p95 ≤ 50 ms, cold p95 ≤ 200 ms; with
8 concurrent clients on loopback for 30 s, no errors and bounded memory.

The server is the real one (:class:`fivewsi.view.serve.Server`: uvicorn on 127.0.0.1) in a child
process, so that its memory is measured alone and the clients do not share its interpreter; the
clients are ``httpx`` over HTTP.

- **cold**: a fresh server; after the slide's JSON (which opens the slide and reads its patch
  scores once, timed apart as ``first_api``), ``--tiles`` distinct slide tiles and as many
  distinct question-layer tiles never requested before, one at a time, at random levels (the
  9 finest) and positions on tissue;
- **warm**: the same tiles again (the server's tile caches);
- **load**: ``--clients`` threads for ``--seconds``, each its own ``httpx.Client``, requesting a
  mix of slide tiles (45 %), layer tiles of every layer and overlay (45 %) at random levels and
  positions, and the API (10 %); every answer must be 200 with the expected content type.
  The server's RSS (``/proc``) is sampled throughout: at the start, the end and its peak.

The predict output needs the slide and its GeoJSON; when ``--predictions`` is missing it is
made with ``fivewsi predict`` (the run of :mod:`bench_predict`).

Usage:
    python benchmarks/make_large_slide.py --out benchmarks/data/large.tif   # once
    python benchmarks/bench_view.py [--slide benchmarks/data/large.tif] [--predictions DIR]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from fivewsi.utils.atomic import write_json_atomic
from fivewsi.utils.logs import configure_logging

log = logging.getLogger("fivewsi.bench")
HERE = Path(__file__).resolve().parent
SLIDE_TILE = 254  # DeepZoomGenerator tile (256 px with its 1 px overlap on each side)
LAYER_TILE = 256
KINDS = {"slide": "image/jpeg", "layer": "image/png", "api": "application/json",
         "dzi": "application/xml"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slide", type=Path, default=HERE / "data" / "large.tif")
    parser.add_argument("--predictions", type=Path, default=HERE / "out" / "predict" / "full",
                        help="a predict output of the slide (made when missing)")
    parser.add_argument("--tiles", type=int, default=100, help="cold tiles of each kind")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=HERE / "out" / "view.json")
    parser.add_argument("--serve", type=Path, help=argparse.SUPPRESS)  # the child process
    args = parser.parse_args()
    if args.serve is not None:
        _serve(args.serve)
        return
    configure_logging(0)
    folder = _predictions(args.slide, args.predictions)
    rng = random.Random(args.seed)

    results: dict[str, Any] = {"predictions": str(folder), "cores": os.cpu_count()}
    with Child(folder) as server, httpx.Client(base_url=server.url, timeout=60) as client:
        results["rss_mb_started"] = server.rss_mb()
        tic = time.perf_counter()
        info = _get(client, f"/api/slides/{server.key}", "api").json()
        results["first_api_s"] = round(time.perf_counter() - tic, 3)
        plan = Plan(info, rng)
        plan.load_coords(client)
        log.info("slide %d x %d px, max level %d, %d patches, %d layers", plan.width,
                 plan.height, plan.max_level, len(plan.coords), len(plan.layers))
        slide_tiles = plan.distinct(args.tiles, plan.slide_tile)
        layer_tiles = plan.distinct(args.tiles, lambda: plan.layer_tile(plan.questions))
        tic = time.perf_counter()  # the tissue outline is detected on the first outline tile
        _get(client, plan.layer_tile(["outline"]), "layer")
        results["first_outline_tile_s"] = round(time.perf_counter() - tic, 3)
        results["rss_mb_after_outline"] = server.rss_mb()
        for phase in ("cold", "warm"):
            results[phase] = {}
            for kind, paths in (("slide", slide_tiles), ("layer", layer_tiles)):
                times = [_timed(client, p, kind) for p in paths]
                results[phase][kind] = _stats(times)
                log.info("%s %s tiles: %s", phase, kind, results[phase][kind])
        results["rss_mb_before_load"] = server.rss_mb()
        results["load"] = _load(server, plan, args.clients, args.seconds, args.seed)
        results["rss_mb_end"] = server.rss_mb()
        results["rss_mb_peak"] = server.peak_mb()
    results["targets_ms"] = {"warm_p95": 50, "cold_p95": 200}
    results["met"] = {
        "warm": all(results["warm"][k]["p95_ms"] <= 50 for k in ("slide", "layer")),
        "cold": all(results["cold"][k]["p95_ms"] <= 200 for k in ("slide", "layer")),
        "load_errors": results["load"]["errors"] == 0,
    }
    print(json.dumps(results, indent=2))
    write_json_atomic(args.out, results)


@dataclass
class Plan:
    """Random tiles of the slide and its layers, at the 9 finest levels, on the patches."""

    info: dict[str, Any]
    rng: random.Random
    width: int = 0
    height: int = 0
    max_level: int = 0
    coords: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))
    layers: list[str] = field(default_factory=list)
    questions: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.width, self.height = self.info["width"], self.info["height"]
        self.max_level = int(np.ceil(np.log2(max(self.width, self.height))))
        self.key = self.info["key"]
        self.layers = [layer["id"] for layer in self.info["layers"]] + ["outline", "grid"]
        self.questions = [layer["id"] for layer in self.info["layers"]
                          if layer["kind"] == "question"]
        self.patch_size = int(self.info["patch_size"])
        self.coords = np.zeros((0, 2))  # filled by load_coords

    def load_coords(self, client: httpx.Client) -> None:
        data = _get(client, f"/api/slides/{self.key}/patches", "api").json()
        self.coords = np.asarray(data["coords"], dtype=np.int64)

    def _where(self, tile: int) -> tuple[int, int, int]:
        level = self.max_level - self.rng.randrange(9)
        scale = 2.0 ** (self.max_level - level)
        x, y = self.coords[self.rng.randrange(len(self.coords))] + self.patch_size // 2
        return level, int(x / scale) // tile, int(y / scale) // tile

    def slide_tile(self) -> str:
        level, col, row = self._where(SLIDE_TILE)
        return f"/dzi/{self.key}_files/{level}/{col}_{row}.jpeg"

    def layer_tile(self, layers: list[str]) -> str:
        level, col, row = self._where(LAYER_TILE)
        return f"/layers/{self.key}/{self.rng.choice(layers)}_files/{level}/{col}_{row}.png"

    def distinct(self, n: int, make: Any) -> list[str]:
        seen: dict[str, None] = {}
        while len(seen) < n:
            seen[make()] = None
        return list(seen)


class Child:
    """``fivewsi.view.serve.Server`` on 127.0.0.1 in a child process (this script, --serve)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def __enter__(self) -> Child:
        self.process = subprocess.Popen(
            [sys.executable, __file__, "--serve", str(self.folder)], stdout=subprocess.PIPE,
            text=True)
        line = self.process.stdout.readline()  # type: ignore[union-attr]
        if not line:
            raise SystemExit("the viewer did not start")
        ready = json.loads(line)
        self.url, self.key = ready["url"], ready["key"]
        return self

    def __exit__(self, *exc: object) -> None:
        self.process.terminate()
        self.process.wait(10)

    def _status(self, field_name: str) -> float:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return round(int(line.split()[1]) / 1024, 1)
        raise KeyError(field_name)

    def rss_mb(self) -> float:
        return self._status("VmRSS")

    def peak_mb(self) -> float:
        return self._status("VmHWM")


def _serve(folder: Path) -> None:
    from fivewsi.view.serve import Server
    from fivewsi.view.server import create_app

    app = create_app(folder)
    server = Server(app, port=0).start()
    key = next(iter(app.viewer.catalog.slides))
    print(json.dumps({"url": server.url, "key": key}), flush=True)
    server.wait()


def _predictions(slide: Path, folder: Path) -> Path:
    """``folder`` when it is a predict output, else made there with ``fivewsi predict``."""
    if (folder / "predictions.csv").is_file():
        return folder
    if not slide.exists():
        raise SystemExit(f"{slide} is missing: run benchmarks/make_large_slide.py first")
    sys.path.insert(0, str(HERE))
    from bench_predict import _demo_run
    from fivewsi.predict.predict import PredictConfig, predict

    result = predict(PredictConfig(run=_demo_run(), inputs=[slide], out=folder, workers=2,
                                   progress=False, heatmaps=False, geojson=True, html=False))
    if result.outcomes[0].status != "ok":
        raise SystemExit(f"predict failed: {result.outcomes[0].error}")
    return folder


def _get(client: httpx.Client, path: str, kind: str) -> httpx.Response:
    response = client.get(path)
    if response.status_code != 200 or not response.headers.get(
            "content-type", "").startswith(KINDS[kind]):
        raise RuntimeError(f"{path}: {response.status_code} "
                           f"{response.headers.get('content-type')}")
    return response


def _timed(client: httpx.Client, path: str, kind: str) -> float:
    tic = time.perf_counter()
    _get(client, path, kind)
    return time.perf_counter() - tic


def _stats(seconds: list[float]) -> dict[str, float]:
    ms = np.asarray(seconds) * 1000
    return {"n": len(ms), "p50_ms": round(float(np.percentile(ms, 50)), 1),
            "p95_ms": round(float(np.percentile(ms, 95)), 1),
            "max_ms": round(float(ms.max()), 1)}


def _load(server: Child, plan: Plan, clients: int, seconds: float, seed: int) -> dict[str, Any]:
    """``clients`` threads requesting a mix of tiles and API calls for ``seconds``."""
    api = ["/api/slides", f"/api/slides/{plan.key}", f"/dzi/{plan.key}.dzi"]
    stop = time.monotonic() + seconds
    times: dict[str, list[float]] = {"slide": [], "layer": [], "api": []}
    errors: list[str] = []
    rss: list[float] = []
    lock = threading.Lock()

    def worker(i: int) -> None:
        own = Plan(plan.info, random.Random(seed * 1000 + i + 1))
        own.coords = plan.coords
        with httpx.Client(base_url=server.url, timeout=60) as client:
            while time.monotonic() < stop:
                draw = own.rng.random()
                if draw < 0.45:
                    kind, path = "slide", own.slide_tile()
                elif draw < 0.9:
                    kind, path = "layer", own.layer_tile(own.layers)
                else:
                    path = own.rng.choice(api)
                    kind = "dzi" if path.endswith(".dzi") else "api"
                try:
                    took = _timed(client, path, kind)
                except Exception as exc:  # counted: the target is none
                    with lock:
                        errors.append(f"{path}: {exc}")
                    continue
                with lock:
                    times["api" if kind == "dzi" else kind].append(took)

    def sample() -> None:
        while time.monotonic() < stop:
            rss.append(server.rss_mb())
            time.sleep(0.5)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    threads.append(threading.Thread(target=sample))
    tic = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - tic
    n = sum(len(v) for v in times.values())
    out = {"clients": clients, "seconds": round(elapsed, 1), "requests": n,
           "requests_per_s": round(n / elapsed, 1), "errors": len(errors),
           "first_errors": errors[:5],
           "latency": {k: _stats(v) for k, v in times.items() if v},
           "rss_mb_samples": {"first": rss[0] if rss else None, "last": rss[-1] if rss else None,
                              "max": max(rss) if rss else None}}
    log.info("load: %s", {k: v for k, v in out.items() if k != "first_errors"})
    return out


if __name__ == "__main__":
    main()
