"""An adversarial benchmark: the inputs that once took the app to 4–7 GB, and the bad-input corpus, sent
to every endpoint of a running app, one at a time and four at once; printed as JSON and written to
bench/results/abuse.json.

    python -m bench.abuse

For each request: its peak RSS above idle (the kernel's high-water mark, reset before each request), its
time, and whether a normal /predict from another client was answered meanwhile (and how fast). Then a
flood: one client sends heavy pipelines as fast as the queue takes them while another calls /predict.
Targets (issue 21): every request ≤ idle + 400 MB and ≤ 5 s; after the run, RSS within 100 MB of its level
after warm-up; the other client's /predict p95 ≤ 2 s during the flood; no traceback in any answer or,
for user errors, in the log.
"""

from __future__ import annotations

import io
import json
import statistics
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from bench.common import REPO, cpu, percentiles, resident_mb, running_app
from tests.corpus import write_corpus

RESULTS = REPO / "bench" / "results" / "abuse.json"
PHOTO = REPO / "examples" / "Abyssinian_201.jpg"
FILE = {"meta": {"_type": "gradio.FileData"}}
TARGET_MB, TARGET_S = 400, 5.0


def encoded(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def hostile_inputs() -> dict[str, bytes]:
    """What the attacker's probe sent: extreme strips, pixel-cap PNGs, 16-bit and grey giants, a 50 MP JPEG."""
    smooth = Image.linear_gradient("L").resize((7071, 7071))
    return {
        "strip_400000x50.png": encoded(Image.new("RGB", (400_000, 50), (90, 90, 90)), "PNG"),
        "strip_1000000x50.png": encoded(Image.new("RGB", (1_000_000, 50), (90, 90, 90)), "PNG"),
        "strip_4x4000.png": encoded(Image.new("RGB", (4, 4000)), "PNG"),
        "grey_7071x7071.png": encoded(smooth, "PNG"),
        "rgb16_like_7071x7071.png": encoded(Image.fromarray(np.asarray(smooth, np.uint16) * 257), "PNG"),
        "rgba_6123x6123.png": encoded(smooth.resize((6123, 6123)).convert("RGBA"), "PNG"),  # 4 bands: the cap's 3/4
        "photo_8000x6000.jpg": encoded(Image.open(PHOTO).resize((8000, 6000)), "JPEG", quality=80),
        "tiny_8x8.png": encoded(Image.new("RGB", (8, 8), (10, 200, 30)), "PNG"),
    }


def endpoint_calls() -> list[tuple[str, list]]:
    """Every endpoint with the file, at the parameters that cost the most that the limits admit."""
    growing = json.dumps([{"op": "resize", "width": 4096}] + [{"op": "rotate", "angle": 45}] * 3)
    rotations = json.dumps([{"op": "rotate", "angle": 45, "expand": False}] * 20)
    return [
        ("predict", []),
        ("predict_details", []),
        ("identify", []),
        ("explain", []),
        ("resize", [4096, 4096]),
        ("crop", [4096, 4096, None, None]),
        ("grayscale", []),
        ("rotate", [45, True]),
        ("flip", ["vertical"]),
        ("blur", [50]),
        ("normalize", [10]),
        ("pipeline", [growing]),
        ("pipeline", [rotations]),
    ]


class Peak:
    """The app's resident-memory high-water mark, reset before each request (Linux: /proc/PID/clear_refs)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def reset(self) -> None:
        Path(f"/proc/{self.pid}/clear_refs").write_text("5")

    def mb(self) -> float:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return float("nan")


def call(http: httpx.Client, url: str, api: str, data: list, headers: dict | None = None) -> tuple[str, str]:
    """One REST call to its end: ("complete" | "error" | "refused <status>", the answer's text)."""
    started = http.post(f"{url}gradio_api/call/{api}", json={"data": data}, headers=headers or {})
    if started.status_code != 200:
        return f"refused {started.status_code}", started.text
    event = started.json()["event_id"]
    kind, text = "none", ""
    with http.stream("GET", f"{url}gradio_api/call/{api}/{event}", headers=headers or {}) as stream:
        for line in stream.iter_lines():
            if line.startswith("event:"):
                kind = line.split(":", 1)[1].strip()
            elif line.startswith("data:") and kind in ("complete", "error"):
                return kind, line[5:].strip()
    return kind, text


def upload(http: httpx.Client, url: str, name: str, data: bytes, headers: dict | None = None) -> dict | str:
    answer = http.post(url + "gradio_api/upload", files={"files": (name, data)}, headers=headers or {})
    return FILE | {"path": answer.json()[0]} if answer.status_code == 200 else f"refused {answer.status_code}"


class Bystander:
    """Another visitor calling /predict in a loop while the abuse goes on; records each answer's time."""

    def __init__(self, url: str) -> None:
        self.url, self.headers, self.samples, self.failures = url, {"x-forwarded-for": "198.51.100.1"}, [], 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        with httpx.Client(timeout=60) as http:
            photo = upload(http, self.url, PHOTO.name, PHOTO.read_bytes(), self.headers)
            while not self.stop.is_set():
                started = time.perf_counter()
                kind, _ = call(http, self.url, "predict", [photo], self.headers)
                self.samples.append((time.perf_counter() - started) * 1000)
                self.failures += kind != "complete"
                time.sleep(0.2)

    def __enter__(self) -> Bystander:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        deadline = time.monotonic() + 10  # a request shorter than one /predict: wait for the one in flight
        while not self.samples and time.monotonic() < deadline:
            time.sleep(0.01)
        self.stop.set()
        self.thread.join(timeout=60)


def one_at_a_time(url: str, peak: Peak, idle_mb: float, files: dict[str, bytes]) -> list[dict]:
    rows = []
    with httpx.Client(timeout=120) as http:
        for name, data in files.items():
            image = upload(http, url, name, data)
            for api, params in endpoint_calls():
                if isinstance(image, str):
                    rows.append({"file": name, "endpoint": api, "outcome": image})
                    break
                with Bystander(url) as bystander:
                    before = resident_mb(peak.pid)
                    peak.reset()
                    started = time.perf_counter()
                    kind, text = call(http, url, api, [image, *params])
                    seconds = time.perf_counter() - started
                    high = peak.mb()
                rows.append(
                    {
                        "file": name,
                        "endpoint": api,
                        "outcome": kind if kind != "error" else f"error: {json.loads(text).get('error')}",
                        "seconds": round(seconds, 2),
                        "rss_before_mb": round(before, 1),
                        "peak_above_idle_mb": round(high - idle_mb, 1),
                        "traceback_in_answer": "Traceback" in text,
                        "bystander_answered": bool(bystander.samples) and bystander.failures == 0,
                        "bystander_p95_ms": percentiles(bystander.samples)["p95_ms"] if bystander.samples else None,
                    }
                )
    return rows


def four_at_once(url: str, files: dict[str, bytes]) -> dict:
    """The four heaviest requests together: the app must stay up and answer."""
    heavy = [("strip_1000000x50.png", "predict", []), ("grey_7071x7071.png", "explain", [])]
    heavy += [("photo_8000x6000.jpg", "pipeline", ['[{"op": "resize", "width": 4096}, {"op": "blur", "radius": 50}]'])]
    heavy += [("rgba_6123x6123.png", "identify", [])]
    with httpx.Client(timeout=120) as http, ThreadPoolExecutor(4) as pool:
        images = {name: upload(http, url, name, files[name]) for name, _, _ in heavy}
        outcomes = list(pool.map(lambda job: call(http, url, job[1], [images[job[0]], *job[2]])[0], heavy))
        alive = call(http, url, "predict", [upload(http, url, PHOTO.name, PHOTO.read_bytes())])[0] == "complete"
    return {"outcomes": outcomes, "app_answers_after": alive}


def flood(url: str, seconds: float = 20) -> dict:
    """One client sends heavy pipelines as fast as it is allowed; another calls /predict meanwhile."""
    flooder = {"x-forwarded-for": "203.0.113.9"}
    steps = json.dumps([{"op": "rotate", "angle": 30, "expand": False}, {"op": "blur", "radius": 40}] * 3)
    big = encoded(Image.effect_noise((3000, 3000), 60).convert("RGB"), "JPEG", quality=80)
    refused = ran = 0
    deadline = time.monotonic() + seconds
    with httpx.Client(timeout=120) as http, Bystander(url) as bystander, ThreadPoolExecutor(16) as pool:
        image = upload(http, url, "big.jpg", big, flooder)

        def one(_: int) -> str:
            return call(http, url, "pipeline", [image, steps], flooder)[0] if time.monotonic() < deadline else "late"

        while time.monotonic() < deadline:
            for kind in pool.map(one, range(16)):
                refused += kind.startswith("refused") or kind == "error"
                ran += kind == "complete"
    return {
        "seconds": seconds,
        "flood_completed": ran,
        "flood_refused": refused,
        "bystander": percentiles(bystander.samples) if bystander.samples else None,
        "bystander_failures": bystander.failures,
    }


def corpus_files() -> dict[str, bytes]:
    folder = Path(tempfile.mkdtemp(prefix="abuse-corpus-"))
    return {name: path.read_bytes() for name, (path, _) in write_corpus(folder).items()}


def warm_up(url: str) -> None:
    with httpx.Client(timeout=60) as http:
        photo = upload(http, url, PHOTO.name, PHOTO.read_bytes())
        for api in ("predict", "identify", "resize"):
            call(http, url, api, [photo] + ([512, None] if api == "resize" else []))


def main() -> int:
    files = hostile_inputs()
    with running_app() as (url, process):
        warm_up(url)
        time.sleep(1)
        idle = resident_mb(process.pid)
        peak = Peak(process.pid)
        rows = one_at_a_time(url, peak, idle, files | corpus_files())
        together = four_at_once(url, files)
        flooded = flood(url)
        time.sleep(2)
        after = resident_mb(process.pid)
        log = Path(process.log).read_text()
    measured = [row for row in rows if "seconds" in row]
    report = {
        "cpu": cpu(),
        "idle_rss_mb": round(idle, 1),
        "rss_after_mb": round(after, 1),
        "rss_after_minus_idle_mb": round(after - idle, 1),
        "requests": len(rows),
        "max_peak_above_idle_mb": max(row["peak_above_idle_mb"] for row in measured),
        "max_seconds": max(row["seconds"] for row in measured),
        "median_seconds": round(statistics.median(row["seconds"] for row in measured), 2),
        "over_memory_target": [row for row in measured if row["peak_above_idle_mb"] > TARGET_MB],
        "over_time_target": [row for row in measured if row["seconds"] > TARGET_S],
        "tracebacks_in_answers": sum(row["traceback_in_answer"] for row in measured),
        "tracebacks_in_log": log.count("Traceback"),
        "bystander_always_answered": all(row["bystander_answered"] for row in measured),
        "four_at_once": together,
        "flood": flooded,
        "rows": rows,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k != "rows"}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
