"""Load and memory on a running app, printed as JSON.

    python -m bench.load [--memory-calls 2500] [--clients 8] [--calls 50] [--concurrency 1 2 4] [--variant-calls 250]

Memory: resident memory from the start over `--memory-calls` calls of /predict, through plain REST (each
call a new Gradio session, the image uploaded first) and through gradio_client (one session per client),
each beside the same app's no-op endpoint measured the same way in the same run; the curves go to
`--memory-out` (default bench/results/memory.json). Load: for each queue concurrency limit, concurrent
gradio_client clients, every answer checked against the expected top-1 (0 lost), latency p50/p95/max and
throughput. Variants: the model the host chose at start beside forced fp32, each under 8 plain-REST clients,
in the same run.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from gradio_client import Client, handle_file

from bench.common import (
    REPO,
    call_api,
    cpu,
    cpu_seconds,
    own_cpu_seconds,
    percentiles,
    resident_mb,
    rest_call,
    running_app,
)
from inference import PetClassifier

PHOTO = REPO / "examples" / "Abyssinian_201.jpg"
PHOTOS = sorted((REPO / "examples").glob("*.jpg"))
CURVES = REPO / "bench" / "results" / "memory.json"
WARMUP = 500


# The app as a Space runs it, behind one proxy that appends the visitor's address to X-Forwarded-For:
# with it, each load client is its own visitor to the per-visitor queue limit (limits.visitor).
BEHIND_A_PROXY = {"PETS_TRUSTED_PROXIES": "1"}


def visitor(number: int) -> dict[str, str]:
    """The address a load client stands for, as the Space's proxy passes it (BEHIND_A_PROXY): each client
    is its own visitor (documentation addresses, RFC 5737; no traffic goes there)."""
    return {"x-forwarded-for": f"198.51.100.{number % 250 + 1}"}


def session(way: str, url: str, endpoint: str, calls: int, expected: str, number: int) -> tuple[list[float], int]:
    """One client's `calls` calls of `endpoint` with PHOTO: their latencies, and how many were wrong or lost."""
    call, latencies, wrong = caller(way, url, endpoint, number, [PHOTO]), [], 0
    for i in range(calls):
        started = time.perf_counter()
        try:
            wrong += answer_of(call(i), way) != expected
        except Exception:
            wrong += 1
        latencies.append((time.perf_counter() - started) * 1000)
    return latencies, wrong


def answer_of(answer: object, way: str) -> object:
    """The headline of an answer: a label's top class (REST wraps outputs in a list), or the raw value."""
    first = answer[0] if way == "rest" else answer
    return first["label"] if isinstance(first, dict) else first


def hammer(
    url: str,
    clients: int,
    calls: int,
    expected: str,
    way: str = "client",
    endpoint: str = "predict",
    server: int | None = None,
) -> dict:
    """`clients` threads at once, each its own visitor: through gradio_client, or plain REST (`way`). With
    `server` (the app's process) the CPU each call cost the server and the clients (this process) too."""
    server_cpu, client_cpu = (cpu_seconds(server), own_cpu_seconds()) if server else (0.0, 0.0)
    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(lambda number: session(way, url, endpoint, calls, expected, number), range(clients)))
    elapsed = time.perf_counter() - started
    latencies = [ms for session_latencies, _ in results for ms in session_latencies]
    report = {
        "calls": len(latencies),
        "wrong_or_lost": sum(w for _, w in results),
        "throughput_per_s": round(len(latencies) / elapsed, 1),
        **percentiles(latencies),
    }
    if server:
        report["server_cpu_ms_per_call"] = round((cpu_seconds(server) - server_cpu) * 1000 / len(latencies), 1)
        report["client_cpu_ms_per_call"] = round((own_cpu_seconds() - client_cpu) * 1000 / len(latencies), 1)
    return report


def concurrency(limit: int, clients: int, calls: int, expected: str) -> dict:
    with running_app(BEHIND_A_PROXY | {"PETS_CONCURRENCY": str(limit)}) as (url, _):
        hammer(url, clients, 5, expected)  # warm-up
        return hammer(url, clients, calls, expected)


def variants(clients: int, calls: int, expected: str) -> dict:
    """The variant the host chose beside forced fp32, in the same run: REST load after a warm-up, memory
    from after the warm-up to the end, and the CPU a call costs. The no-op endpoint under the same load
    gives the CPU a call costs outside the model, which bounds what a faster model can gain."""
    report = {}
    for name, env in (("served", {}), ("fp32", {"PETS_MODEL_VARIANT": "fp32"})):
        with running_app(BEHIND_A_PROXY | env | {"PETS_BENCH_NOOP": "1"}) as (url, process):
            with httpx.Client(timeout=30) as http:
                serving = call_api(http, url, "serving", [])[0]
            hammer(url, clients, calls // 4, expected, "rest")  # warm-up
            warm = resident_mb(process.pid)
            report[name] = hammer(url, clients, calls, expected, "rest", server=process.pid)
            end = resident_mb(process.pid)
            report[name] |= {
                "variant": serving["variant"],
                "threads": serving["threads"],
                "rss_mb_after_warmup": round(warm, 1),
                "growth_pct_after_warmup": round(100 * (end - warm) / warm, 1),
            }
            if name == "served":
                report["noop"] = hammer(url, clients, calls, "ok", "rest", endpoint="noop", server=process.pid)
    report["served_over_fp32_throughput"] = round(
        report["served"]["throughput_per_s"] / report["fp32"]["throughput_per_s"], 2
    )
    return report


def caller(way: str, url: str, endpoint: str, number: int, photos: list[Path] = PHOTOS) -> Callable[[int], object]:
    """One thread's way to make call number i: plain REST (a new session each call) or its own client."""
    if way == "rest":
        http = httpx.Client(timeout=60, headers=visitor(number))
        return lambda i: rest_call(http, url, endpoint, photos[i % len(photos)])
    client = Client(url, verbose=False, headers=visitor(number))
    return lambda i: client.predict(handle_file(photos[i % len(photos)]), api_name=f"/{endpoint}")


def memory_curve(way: str, endpoint: str, calls: int, threads: int, step: int) -> list[list[float]]:
    """[calls so far, resident MB] from a fresh app's start, every `step` calls made by `threads` threads."""
    with running_app(BEHIND_A_PROXY | {"PETS_BENCH_NOOP": "1"}) as (url, process):
        curve = [[0, round(resident_mb(process.pid), 1)]]
        callers = [caller(way, url, endpoint, number) for number in range(threads)]
        counter, per_thread = itertools.count(), max(1, step // threads)
        with ThreadPoolExecutor(threads) as pool:
            for done in range(per_thread * threads, calls + 1, per_thread * threads):
                list(pool.map(lambda c: [c(next(counter)) for _ in range(per_thread)], callers))
                curve.append([done, round(resident_mb(process.pid), 1)])
    return curve


def growth(curve: list[list[float]]) -> dict:
    """Growth per call over the whole curve and after the warm-up (where ONNX Runtime's arenas have settled)."""
    (start_calls, start), (end_calls, end) = curve[0], curve[-1]
    warm_calls, warm = min(curve, key=lambda point: abs(point[0] - WARMUP))
    return {
        "rss_mb": [start, warm, end],
        "kb_per_call_from_start": round((end - start) * 1024 / (end_calls - start_calls), 1),
        "mb_per_1000_calls_after_warmup": round((end - warm) * 1000 / (end_calls - warm_calls), 2),
        "growth_pct_after_warmup": round(100 * (end - warm) / warm, 1),
    }


def memory(calls: int, threads: int, step: int, out: Path) -> dict:
    curves, report = {}, {}
    for way in ("rest", "client"):
        for endpoint in ("predict", "noop"):
            curves[f"{way}_{endpoint}"] = memory_curve(way, endpoint, calls, threads, step)
            report[f"{way}_{endpoint}"] = growth(curves[f"{way}_{endpoint}"])
        app, noop = report[f"{way}_predict"], report[f"{way}_noop"]
        extra = (app["mb_per_1000_calls_after_warmup"] - noop["mb_per_1000_calls_after_warmup"]) * 1024 / 1000
        report[f"{way}_app_minus_noop_kb_per_call_after_warmup"] = round(extra, 1)
    out.write_text(json.dumps({"calls": calls, "threads": threads, "warmup": WARMUP, "curves": curves}) + "\n")
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--memory-calls", type=int, default=2500, help="0 skips the memory curves")
    parser.add_argument("--memory-threads", type=int, default=8)
    parser.add_argument("--memory-step", type=int, default=100)
    parser.add_argument("--memory-out", type=Path, default=CURVES, help="where the memory curves go")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--calls", type=int, default=50)
    parser.add_argument("--concurrency", type=int, nargs="*", default=[1, 2, 4])
    parser.add_argument("--variant-calls", type=int, default=250, help="REST calls per client, served vs fp32")
    args = parser.parse_args()
    expected = PetClassifier.load().predict(PHOTO).top[0][0]
    report: dict = {}
    if args.memory_calls:
        report["memory"] = memory(args.memory_calls, args.memory_threads, args.memory_step, args.memory_out)
    for limit in args.concurrency:
        report[f"concurrency_{limit}"] = concurrency(limit, args.clients, args.calls, expected)
    if args.variant_calls:
        report["variants_rest"] = variants(args.clients, args.variant_calls, expected)
    machine = {"cpu": cpu(), "clients": args.clients, "calls_per_client": args.calls}
    json.dump(machine | report, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
