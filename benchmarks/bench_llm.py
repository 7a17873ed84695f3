"""Throughput of the LLM backend against the fake OpenAI-compatible server on 127.0.0.1.

Input: ``--reports`` synthetic lung reports (distinct texts), answered by
``tests/fake_llm_server.py`` after ``--latency`` seconds each, asked with ``--concurrency``
requests in flight through the real ``openai`` client. The server runs in its own process so
that its threads do not compete with the client's event loop for the GIL. The ideal wall time
is ``reports / concurrency * latency`` (12.5 s for 1000 / 16 * 0.2 s); the target is ≤ 20 s.
A second run over the same sqlite cache must send zero requests.

Usage:
    python benchmarks/bench_llm.py
    python benchmarks/bench_llm.py --reports 200 --latency 0.05 --json benchmarks/out/llm.json
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing as mp
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from fake_llm_server import FakeLLMServer
from fivewsi.reports import load_question_set
from fivewsi.reports.llm import LLMConfig, LLMStats, extract_llm

log = logging.getLogger("bench_llm")

_SITES = ("right upper lobe", "left lower lobe", "right middle lobe", "lingula")
_TYPES = ("adenocarcinoma", "squamous cell carcinoma", "large cell carcinoma")


def synthetic_reports(n: int) -> list[tuple[str, str]]:
    """``n`` distinct short lung resection reports.

    Example:
        >>> synthetic_reports(2)[1][0]
        'bench-0001'
    """
    return [
        (
            f"bench-{i:04d}",
            f"Specimen {i}: {_SITES[i % len(_SITES)]}, lobectomy. Invasive "
            f"{_TYPES[i % len(_TYPES)]}, {1 + i % 50 / 10:.1f} cm. Margins reviewed.",
        )
        for i in range(n)
    ]


def _serve(latency: float, urls: Any, stop: Any) -> None:
    """Child process: run the fake server until ``stop`` is set."""
    with FakeLLMServer(latency=latency) as server:
        urls.put(server.url)
        stop.wait()
        urls.put({"requests": server.count, "max_in_flight": server.max_in_flight})


def run(reports: int, latency: float, concurrency: int, cache: Path) -> list[dict[str, Any]]:
    """Two passes (fresh, then cached) against a server process; one row per pass."""
    ctx = mp.get_context("spawn")
    urls, stop = ctx.Queue(), ctx.Event()
    child = ctx.Process(target=_serve, args=(latency, urls, stop), daemon=True)
    child.start()
    try:
        url = urls.get(timeout=30)
        config = LLMConfig(base_url=url, model="fake", concurrency=concurrency, cache=cache)
        items = synthetic_reports(reports)
        questions = load_question_set("lung")
        rows = [_pass("fresh", items, questions, config), _pass("cached", items, questions, config)]
        stop.set()
        server = urls.get(timeout=30)
        rows[0]["server_max_in_flight"] = server["max_in_flight"]
        rows[0]["server_requests"] = server["requests"]
        return rows
    finally:
        stop.set()
        child.join(timeout=10)


def _pass(name: str, items: list[tuple[str, str]], questions: Any, config: LLMConfig) -> dict:
    started = time.perf_counter()
    results, stats = extract_llm(items, questions, config, progress=False)
    seconds = time.perf_counter() - started
    ok = sum(r.status == "ok" for r in results)
    return _row(name, len(items), ok, seconds, stats)


def _row(name: str, n: int, ok: int, seconds: float, stats: LLMStats) -> dict[str, Any]:
    return {
        "pass": name,
        "reports": n,
        "ok": ok,
        "requests": stats.requests,
        "retries": stats.retries,
        "cache_hits": stats.cache_hits,
        "seconds": round(seconds, 2),
        "reports_per_s": round(n / seconds, 1),
    }


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reports", type=int, default=1000)
    parser.add_argument("--latency", type=float, default=0.2, help="server seconds per answer")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("httpx2").setLevel(logging.WARNING)  # one line per request otherwise
    logging.getLogger("httpx").setLevel(logging.WARNING)

    ideal = args.reports / args.concurrency * args.latency
    with tempfile.TemporaryDirectory() as tmp:
        rows = run(args.reports, args.latency, args.concurrency, Path(tmp) / "llm.sqlite")
    print(f"{args.reports} reports, {args.latency} s/answer, concurrency {args.concurrency}")
    print(f"ideal wall time {ideal:.1f} s")
    print(f"{'pass':>7} {'requests':>9} {'ok':>6} {'seconds':>8} {'reports/s':>10}")
    for row in rows:
        print(
            f"{row['pass']:>7} {row['requests']:>9} {row['ok']:>6} "
            f"{row['seconds']:>8.2f} {row['reports_per_s']:>10.1f}"
        )
    print(f"server: max in flight {rows[0]['server_max_in_flight']}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=2))
    return rows


if __name__ == "__main__":
    main()
