"""Latency of the shipped model and of the app, printed as JSON.

    python -m bench.latency [--repeats 200]

Model only (ONNX Runtime on a prepared tensor) at 1 and 2 threads and the app's own count; throughput at
batch 8 and 32; the app's /predict end to end through plain REST and through gradio_client, each beside a
no-op endpoint measured the same way in the same run (the floor), the REST calls in turn with the same photo
in this process; what the app chose to serve; cold start as served and with fp32 forced; the app's resident
memory and its CPU while idle.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections.abc import Callable

import httpx
import numpy as np

from bench.common import REPO, call_api, cpu, cpu_seconds, percentiles, resident_mb, rest_call, running_app, timed
from inference import DEFAULT_MODEL_DIR, ModelCard, PetClassifier
from preprocess import load_image, model_input

PHOTO = REPO / "examples" / "Abyssinian_201.jpg"


def model_at(threads: int, repeats: int, variant: str) -> dict:
    classifier = PetClassifier.load(threads=threads, variant=variant)
    x = model_input(load_image(PHOTO), classifier.spec)
    classifier.logits(x)
    results = {
        f"single_image_{threads}_thread": percentiles(timed(lambda: classifier.logits(x), repeats)),
        f"preprocess_plus_model_{threads}_thread": percentiles(timed(lambda: classifier.predict(PHOTO), repeats // 2)),
    }
    for batch in (8, 32):
        xs = np.repeat(x, batch, axis=0)
        median = np.median(timed(lambda xs=xs: classifier.logits(xs), max(5, repeats // batch)))
        results[f"throughput_batch{batch}_{threads}_thread_images_per_s"] = round(batch / median * 1000, 1)
    return results


def model_only(repeats: int, variants: list[str], served_threads: int) -> dict:
    """The shipped variants side by side (fp32, and int8 where its gate accepted it), at 1 and 2 threads
    and at the app's own count."""
    counts = sorted({1, 2, served_threads})
    return {variant: {k: v for n in counts for k, v in model_at(n, repeats, variant).items()} for variant in variants}


def end_to_end(repeats: int) -> dict:
    """/predict and the no-op floor through plain REST (file upload, and inline data URL) and gradio_client.
    The REST calls alternate with the same photo through `PetClassifier.predict` in this process (the
    app's variant and threads), so the three are measured in the same moments of a noisy machine."""
    from gradio_client import Client, handle_file

    results = {}
    with running_app({"PETS_BENCH_NOOP": "1"}) as (url, process):
        results["app_rss_mb_idle"] = round(resident_mb(process.pid), 1)
        results["app_idle_cpu_pct"] = idle_cpu_pct(process.pid)
        with httpx.Client(timeout=30) as http:
            results["served"] = served = call_api(http, url, "serving", [])[0]
            classifier = PetClassifier.load(threads=served["threads"], variant=served["variant"])
            for way, inline in (("rest", False), ("rest_inline", True)):
                calls = {
                    "noop": lambda i=inline: rest_call(http, url, "noop", PHOTO, i),
                    "predict": lambda i=inline: rest_call(http, url, "predict", PHOTO, i),
                    "in_process": lambda: classifier.predict(PHOTO),
                }
                for name, samples in alternating(calls, repeats).items():
                    results[f"{way}_{name}"] = percentiles(samples)
        client = Client(url, verbose=False)
        for name in ("noop", "predict"):
            client.predict(handle_file(PHOTO), api_name=f"/{name}")
            samples = timed(lambda n=name: client.predict(handle_file(PHOTO), api_name=f"/{n}"), repeats // 2)
            results[f"client_{name}"] = percentiles(samples)
        results["app_rss_mb_after"] = round(resident_mb(process.pid), 1)
    for way in ("rest", "rest_inline", "client"):
        results[f"{way}_predict_minus_noop_p50_ms"] = round(
            results[f"{way}_predict"]["p50_ms"] - results[f"{way}_noop"]["p50_ms"], 2
        )
    return results


def idle_cpu_pct(pid: int, seconds: float = 5) -> float:
    """The share of one core the app uses while nobody calls it: on a shared 2-vCPU Space, what it costs
    its neighbours and its own first request."""
    before = cpu_seconds(pid)
    time.sleep(seconds)
    return round(100 * (cpu_seconds(pid) - before) / seconds, 1)


def alternating(calls: dict[str, Callable[[], object]], repeats: int) -> dict[str, list[float]]:
    """Each call timed `repeats` times, in turn (one of each, then again), after one untimed round."""
    samples: dict[str, list[float]] = {name: [] for name in calls}
    for round_ in range(repeats + 1):
        for name, call in calls.items():
            started = time.perf_counter()
            call()
            if round_:
                samples[name].append((time.perf_counter() - started) * 1000)
    return samples


def app_overhead(end_to_end: dict) -> dict:
    """The target: REST /predict minus the no-op floor costs at most the in-process decode and model time
    (the variant the app serves, at the app's thread count, timed alongside) plus 3 ms."""
    report = {}
    for way in ("rest", "rest_inline"):
        in_process = end_to_end[f"{way}_in_process"]["p50_ms"]
        extra = end_to_end[f"{way}_predict_minus_noop_p50_ms"] - in_process
        report[f"{way}_minus_noop_minus_in_process_ms"] = round(extra, 2)
    report["in_process_decode_plus_model_p50_ms"] = end_to_end["rest_in_process"]["p50_ms"]
    return report


def cold_start(runs: int) -> dict:
    """Process start to the first /predict answer over REST, median of several starts: as it serves (timing
    the variants when both ship) and with fp32 forced (nothing to time), started in turn."""
    samples: dict[str, list[float]] = {"served": [], "fp32": []}
    for _ in range(runs):
        for name, env in (("served", {}), ("fp32", {"PETS_MODEL_VARIANT": "fp32"})):
            started = time.perf_counter()
            with running_app(env, timeout=120) as (url, _), httpx.Client(timeout=30) as http:
                rest_call(http, url, "predict", PHOTO)
                samples[name].append(round(time.perf_counter() - started, 2))
    medians = {name: float(np.median(values)) for name, values in samples.items()}
    return {
        "cold_start_s_median": round(medians["served"], 2),
        "cold_start_s": samples["served"],
        "forced_fp32_s": samples["fp32"],
        "variant_timing_adds_s": round(medians["served"] - medians["fp32"], 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--cold-starts", type=int, default=3)
    args = parser.parse_args()
    card, app = ModelCard.load(DEFAULT_MODEL_DIR / "card.json"), end_to_end(args.repeats)
    report = {
        "machine": {"cpu": cpu(), "python": platform.python_version()},
        "model": card.model.backbone,
        "served": app["served"],
        "model_only": model_only(args.repeats, card.variants(), app["served"]["threads"]),
        "end_to_end": app,
        "cold_start": cold_start(args.cold_starts),
    }
    report["app_overhead"] = app_overhead(report["end_to_end"])
    json.dump(report, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
