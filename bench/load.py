"""Load and memory: concurrent gradio_client clients calling /predict on a running app, printed as JSON.

    python -m bench.load [--clients 8] [--calls 50] [--total 1000] [--concurrency 1 2 4]

For each queue concurrency limit: a warm-up, then every answer checked against the expected top-1
(0 lost), latency p50/p95/max, throughput; then calls continue to `--total` and the app's resident memory
after the warm-up is compared with the memory after the `--total` calls.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from gradio_client import Client, handle_file

from bench.common import REPO, percentiles, resident_mb, running_app
from inference import PetClassifier

PHOTO = REPO / "examples" / "chelsea.jpg"


def client_session(url: str, calls: int, expected: str) -> tuple[list[float], int]:
    client = Client(url, verbose=False)
    latencies, wrong = [], 0
    for _ in range(calls):
        started = time.perf_counter()
        try:
            answer = client.predict(handle_file(PHOTO), api_name="/predict")
            wrong += answer["label"] != expected
        except Exception:
            wrong += 1
        latencies.append((time.perf_counter() - started) * 1000)
    return latencies, wrong


def hammer(url: str, clients: int, calls: int, expected: str) -> dict:
    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(lambda _: client_session(url, calls, expected), range(clients)))
    elapsed = time.perf_counter() - started
    latencies = [ms for session, _ in results for ms in session]
    return {
        "calls": len(latencies),
        "wrong_or_lost": sum(w for _, w in results),
        "throughput_per_s": round(len(latencies) / elapsed, 1),
        **percentiles(latencies),
    }


def measure(concurrency: int, clients: int, calls: int, total: int, warmup: int, expected: str) -> dict:
    """Memory is read after `warmup` calls: ONNX Runtime's arenas and Gradio's caches grow to a plateau
    first (about 300 calls here); growth after that is what would reveal a leak."""
    with running_app({"PETS_CONCURRENCY": str(concurrency)}) as (url, process):
        hammer(url, clients, max(1, warmup // clients), expected)
        before = resident_mb(process.pid)
        report = hammer(url, clients, calls, expected)
        remaining = max(0, total - report["calls"])
        soak = hammer(url, clients, remaining // clients, expected) if remaining else {"calls": 0, "wrong_or_lost": 0}
        after = resident_mb(process.pid)
    return report | {
        "soak_calls": soak["calls"],
        "soak_wrong_or_lost": soak["wrong_or_lost"],
        "rss_mb_before": round(before, 1),
        "rss_mb_after": round(after, 1),
        "rss_growth_pct": round(100 * (after - before) / before, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--calls", type=int, default=50)
    parser.add_argument("--total", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--warmup", type=int, default=400)
    args = parser.parse_args()
    expected = PetClassifier().predict(PHOTO).top[0][0]
    report = {
        f"concurrency_{c}": measure(c, args.clients, args.calls, args.total, args.warmup, expected)
        for c in args.concurrency
    }
    json.dump({"clients": args.clients, "calls_per_client": args.calls} | report, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
