"""An adversarial benchmark: the inputs that once took the app to 4–7 GB, and the bad-input corpus, sent
to every endpoint of a running app, one at a time and four at once; then the attacks of a client that
knows Gradio's routes; printed as JSON and written to bench/results/abuse.json.

    python -m bench.abuse              # everything
    python -m bench.abuse --attacks    # only the attacks on Gradio's routes: bench/results/abuse-attacks.json

For each request: its peak RSS above idle (the kernel's high-water mark, reset before each request), its
time, and whether a normal /predict from another visitor (another loopback address) was answered meanwhile
(and how fast). Then a flood: one client sends heavy pipelines as fast as the queue takes them while
another calls /predict. Targets (issue 21): every request ≤ idle + 400 MB and ≤ 5 s; after the run, RSS
within 100 MB of its level after warm-up; the other client's /predict p95 ≤ 2 s during the flood; no
traceback in any answer or, for user errors, in the log.

The attacks (issue 28), each with its outcome: 80 clients on one address, each call with a made-up
X-Forwarded-For, while a second visitor calls /predict 10 times (target: the flood held like one visitor,
about 4 at a time; all 10 answered, p95 ≤ 2 s); /gradio_api/run/ and /api/ (they run nothing past the
queue); /call/, /call/v2/ and /queue/join bursts from one visitor (at most 4 admitted); a declared 25 MB
body to every path but the upload route (413 before it is sent) and a chunked one; refused uploads (too
many files, and each way of reading the boundary apart from Gradio's parser: 413, no file left; a body
that never closes: 400, no file left); and behind one trusted proxy (PETS_TRUSTED_PROXIES=1), distinct
last entries as distinct visitors. These run with the upload budget lifted (they send more than a visitor may).

Issue 36's, the uploads that could fill the disk: each form of an upload that is not all `files` parts (empty
or missing boundary, other field names, a plain field, a name Gradio refuses after storing the parts before
it, an unclosed body, 33 files after a leading CRLF) and a part to /process_recording (targets: 4xx and no
file left in Gradio's folder or TMPDIR, or 200 with the parts stored and counted); routes the app never uses
(404 before the body); 3000 uploads with new upload ids (target: RSS +1 MB at most); and, on an app with
default settings, one visitor uploading 1 MB files from 4 threads for 60 s while a second uploads and calls
/predict once a second (targets: Gradio's folder grows by no more than the visitor's budget, 200 MB; the
second visitor always answered).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import itertools
import json
import secrets
import socket
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image

from bench.common import REPO, cpu, percentiles, resident_mb, running_app
from tests.corpus import write_corpus

RESULTS = REPO / "bench" / "results" / "abuse.json"
ATTACKS = REPO / "bench" / "results" / "abuse-attacks.json"
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
    return answer(http, f"{url}gradio_api/call/{api}/{started.json()['event_id']}", headers)


def answer(http: httpx.Client, stream_url: str, headers: dict | None = None) -> tuple[str, str]:
    """Read a call's event stream to its end: ("complete" | "error", the answer's text)."""
    kind, text = "none", ""
    with http.stream("GET", stream_url, headers=headers or {}) as stream:
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
    """Another visitor (another address) calling /predict in a loop while the abuse goes on; records each
    answer's time."""

    def __init__(self, url: str) -> None:
        self.url, self.samples, self.failures = url, [], 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        with client_from(SECOND_VISITOR) as http:
            photo = upload(http, self.url, PHOTO.name, PHOTO.read_bytes())
            while not self.stop.is_set():
                started = time.perf_counter()
                kind, _ = call(http, self.url, "predict", [photo])
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


# --------------------------------------------------------------------------- attacks that know Gradio's routes

# For many uploads from one address: the upload budget lifted.
NO_BUDGET = {"PETS_UPLOAD_MB_PER_VISITOR": "0", "PETS_UPLOAD_FILES_PER_VISITOR": "0"}
SECOND_VISITOR = "127.0.0.2"  # another visitor on this machine: loopback answers on all of 127/8
HEAVY_STEPS = json.dumps([{"op": "rotate", "angle": 30, "expand": False}, {"op": "blur", "radius": 40}])
RETRY_AFTER_REFUSAL_S = 0.2  # a flooder's pause after a refusal, so the bench's own client leaves the CPU to the app
# The ways the multipart boundary was read differently by the limit and by Gradio's parser (the body's
# boundary is always "real"); each once let 200 files past a 32-file limit.
BOUNDARY_DODGES = {
    "two boundary options (the parser reads the last)": [
        ("content-type", "multipart/form-data; boundary=decoy; boundary=real")
    ],
    "spaces around '='": [("content-type", "multipart/form-data; boundary = real")],
    "quoted": [("content-type", 'multipart/form-data; boundary="real"')],
    "upper-case names": [("content-type", "Multipart/Form-Data; BOUNDARY=real")],
    "two Content-Type headers (Starlette reads the first)": [
        ("content-type", "multipart/form-data; boundary=real"),
        ("content-type", "multipart/form-data; boundary=decoy"),
    ],
}
NOT_THE_UPLOAD_ROUTE = ["/gradio_api/call/upload", "/gradio_api/call/v2/predict", "/gradio_api/queue/join"]


def client_from(address: str | None = None) -> httpx.Client:
    """An HTTP client whose connections come from `address` (default: the system's choice, 127.0.0.1)."""
    return httpx.Client(timeout=120, transport=httpx.HTTPTransport(local_address=address) if address else None)


def made_up(number: int) -> str:
    """A made-up address for a forged X-Forwarded-For entry (the benchmarking range, RFC 2544)."""
    return f"198.18.{number // 250 % 250}.{number % 250 + 1}"


def most_at_once(spans: list[tuple[float, float]]) -> int:
    """The most of these (start, end) spans that overlap at one moment."""
    edges = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans])
    held = most = 0
    for _, step in edges:
        held += step
        most = max(most, held)
    return most


def second_visitor(url: str, calls: int) -> dict:
    """Another visitor (another address) calls /predict `calls` times in turn: how many were answered, how fast."""
    times, answered = [], 0
    with client_from(SECOND_VISITOR) as http:
        photo = upload(http, url, PHOTO.name, PHOTO.read_bytes())
        for _ in range(calls):
            started = time.perf_counter()
            answered += call(http, url, "predict", [photo])[0] == "complete"
            times.append((time.perf_counter() - started) * 1000)
    return {"calls": calls, "answered": answered} | percentiles(times)


def uploading_visitor(url: str, until: float) -> dict:
    """Another visitor (another address) uploads a photo and calls /predict with it, once a second until
    `until` (time.monotonic): how many of each were answered, and how fast the pair."""
    times, uploaded, answered = [], 0, 0
    with client_from(SECOND_VISITOR) as http:
        while time.monotonic() < until:
            started = time.perf_counter()
            photo = upload(http, url, PHOTO.name, PHOTO.read_bytes())
            uploaded += not isinstance(photo, str)
            answered += not isinstance(photo, str) and call(http, url, "predict", [photo])[0] == "complete"
            times.append((time.perf_counter() - started) * 1000)
            time.sleep(1.0)
    return {"calls": len(times), "uploaded": uploaded, "answered": answered} | percentiles(times)


def forged_flood(url: str, api: str, forwarded_for: Callable[[int], str], workers: int, calls: int = 10) -> dict:
    """`workers` clients on this address call `api` with a photo over and over, call i with X-Forwarded-For
    `forwarded_for(i)`, while a second visitor calls /predict `calls` times. The admitted calls' spans (from
    admission to answer, as the client sees them) give the most the queue held of them at once."""
    stop, numbers, spans, refused = threading.Event(), itertools.count(), [], []

    def flooder(http: httpx.Client, image: dict) -> None:
        while not stop.is_set():
            headers = {"x-forwarded-for": forwarded_for(next(numbers))}
            started = http.post(f"{url}gradio_api/call/{api}", json={"data": [image]}, headers=headers)
            if started.status_code != 200:
                refused.append(started.status_code)
                time.sleep(RETRY_AFTER_REFUSAL_S)
                continue
            admitted = time.perf_counter()
            answer(http, f"{url}gradio_api/call/{api}/{started.json()['event_id']}", headers)
            spans.append((admitted, time.perf_counter()))

    with client_from() as http, ThreadPoolExecutor(workers) as pool:
        image = upload(http, url, PHOTO.name, PHOTO.read_bytes())
        running = [pool.submit(flooder, http, image) for _ in range(workers)]
        time.sleep(0.5)  # the flood is under way before the second visitor comes
        other = second_visitor(url, calls)
        stop.set()
        for future in running:
            future.result()
    return {
        "api": api,
        "workers": workers,
        "admitted": len(spans),
        "refused": len(refused),
        "most_admitted_at_once": most_at_once(spans),
        "second_visitor": other,
    }


def direct_runs(url: str, route: str, api: str, count: int = 12) -> dict:
    """`count` calls of `api` at once by a route that would run them at once, past the queue."""
    with client_from() as http, ThreadPoolExecutor(count) as pool:
        image = upload(http, url, PHOTO.name, PHOTO.read_bytes())
        statuses = list(
            pool.map(lambda _: http.post(f"{url}gradio_api/{route}/{api}", json={"data": [image]}), range(count))
        )
    return {
        "route": f"/gradio_api/{route}/{api}",
        "sent": count,
        "answered": sum(answer.status_code == 200 for answer in statuses),
        "statuses": sorted({answer.status_code for answer in statuses}),
    }


def pipeline_index(url: str) -> int:
    """The /pipeline endpoint's function index, which /queue/join takes instead of its name."""
    dependencies = httpx.get(url + "config", timeout=30).json()["dependencies"]
    return next(dependency["id"] for dependency in dependencies if dependency.get("api_name") == "pipeline")


def through_the_queue(url: str, route: str, image: dict, count: int = 8) -> dict:
    """`count` heavy pipelines at once from one address by `route` ("call", "call/v2" or "queue/join"),
    each with its own made-up X-Forwarded-For and session: how many the queue admits (each runs ~0.5 s, one
    at a time, so none ends while the others arrive). Admitted calls are read to their end."""
    index = pipeline_index(url) if route == "queue/join" else None

    def one(number: int) -> str:
        headers, session = {"x-forwarded-for": made_up(number)}, f"abuse-{route}-{number}-{time.monotonic_ns()}"
        if route == "call/v2":
            started = http.post(
                f"{url}gradio_api/call/v2/pipeline", json={"image": image, "steps": HEAVY_STEPS}, headers=headers
            )
        elif route == "queue/join":
            body = {"data": [image, HEAVY_STEPS], "fn_index": index, "session_hash": session}
            started = http.post(f"{url}gradio_api/queue/join", json=body, headers=headers)
        else:
            started = http.post(f"{url}gradio_api/call/pipeline", json={"data": [image, HEAVY_STEPS]}, headers=headers)
        if started.status_code != 200:
            return f"refused {started.status_code}"
        if route == "queue/join":
            return queue_answer(http, url, session)
        return answer(http, f"{url}gradio_api/{route}/pipeline/{started.json()['event_id']}", headers)[0]

    with client_from() as http, ThreadPoolExecutor(count) as pool:
        kinds = list(pool.map(one, range(count)))
    return {
        "route": route,
        "sent": count,
        "admitted": sum(not kind.startswith("refused") for kind in kinds),
        "outcomes": kinds,
    }


def queue_answer(http: httpx.Client, url: str, session: str) -> str:
    """Read a /queue/join session's messages to its event's end: "complete" or "error"."""
    with http.stream("GET", f"{url}gradio_api/queue/data", params={"session_hash": session}) as stream:
        for line in stream.iter_lines():
            if line.startswith("data:") and '"process_completed"' in line:
                return "complete" if json.loads(line[5:])["success"] else "error"
    return "none"


def heavy_image(http: httpx.Client, url: str) -> dict:
    """A 2000×2000 noise photo uploaded: the /pipeline input that keeps the transform group busy ~0.5 s."""
    return upload(
        http, url, "heavy.jpg", encoded(Image.effect_noise((2000, 2000), 60).convert("RGB"), "JPEG", quality=80)
    )


def part(boundary: str, filename: str | None, data: bytes, name: str = "files") -> bytes:
    """One multipart part: a file part where `filename` is given, else a plain field."""
    disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename is not None else "")
    return f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + data + b"\r\n"


def multipart(boundary: str, files: int, size: int, name: str = "files", lead: bytes = b"") -> bytes:
    """A multipart/form-data upload body of `files` parts named `name` of `size` bytes each, after `lead`,
    unlike each other and any sent before (Gradio stores a content once: a repeat would leave no new file to
    count)."""
    unique = secrets.token_hex(8)
    parts = (part(boundary, f"{n}.png", f"{unique}{n:08d}".encode().ljust(size, b"x"), name) for n in range(files))
    return lead + b"".join(parts) + f"--{boundary}--\r\n".encode()


def files_under(*folders: Path) -> set[Path]:
    return {path for folder in folders for path in folder.rglob("*") if path.is_file()}


def upload_outcome(
    url: str, folder: Path, headers: list[tuple[str, str]], body: bytes, path: str = "gradio_api/upload", *more: Path
) -> dict:
    """Post `body` to `path` (the upload route): its status, and how many files it left in Gradio's upload
    folder (and in `more` folders: TMPDIR)."""
    before = files_under(folder, *more)
    posted = httpx.post(url + path, content=body, headers=headers, timeout=60)
    return {"status": posted.status_code, "files_left": len(files_under(folder, *more) - before)}


FORM, UPLOAD = "multipart/form-data; boundary=", "gradio_api/upload"


def upload_forms() -> dict[str, tuple[str, str, bytes]]:
    """The uploads of issue 36's review and the other forms of an upload that is not all `files` parts, each
    made afresh: (route, Content-Type, body). Each left files on disk for good or more files than the limit."""
    good_then_dots = part("real", "good.png", secrets.token_bytes(100_000)) + part("real", "..", b"x" * 10)
    return {
        "40 files, empty boundary": (UPLOAD, FORM, multipart("", 40, 10)),
        "a 100 KB part, empty boundary, unclosed": (UPLOAD, FORM, multipart("", 1, 100_000)[: -len("----\r\n")]),
        "no boundary": (UPLOAD, "multipart/form-data", multipart("real", 3, 10)),
        "two 2 MB parts not named files": (UPLOAD, FORM + "real", multipart("real", 2, 2_000_000, "other")),
        "a field, not a file": (UPLOAD, FORM + "real", part("real", None, b"x" * 100_000) + b"--real--\r\n"),
        "a part named '..' after a good one": (UPLOAD, FORM + "real", good_then_dots + b"--real--\r\n"),
        "33 files after a leading CRLF": (UPLOAD, FORM + "real", multipart("real", 33, 10, lead=b"\r\n")),
        "3 files after a leading CRLF": (UPLOAD, FORM + "real", multipart("real", 3, 10, lead=b"\r\n")),
        "a multipart body to /call/predict": ("gradio_api/call/predict", FORM + "real", multipart("real", 1, 100_000)),
        "a 2 MB part to /process_recording": ("gradio_api/process_recording", FORM + "x", multipart("x", 1, 2**21)),
    }


# Routes no page, client or REST call uses: each answers 404 before its body is read.
UNKNOWN_ROUTES = [
    "/gradio_api/process_recording",
    "/gradio_api/component_server",
    "/gradio_api/upload/",
    "/gradio_api/stream/x",
    "/login",
    "/x/upload",
]


def try_upload_forms(url: str, *folders: Path) -> dict:
    """Each of `upload_forms()`: its status and the files it left in `folders` (Gradio's and TMPDIR)."""
    outcomes = {}
    for name, (path, content_type, body) in upload_forms().items():
        outcomes[name] = upload_outcome(url, folders[0], [("content-type", content_type)], body, path, *folders[1:])
    return outcomes


def new_upload_ids(url: str, pid: int, count: int = 3000, rounds: int = 3, warm_up: int = 300) -> dict:
    """`rounds` times `count` uploads of one small photo, each with a new `upload_id` (Gradio made a progress
    tracker for each and kept it: +5.9 MB a round here, every round): the app's RSS growth over each round,
    after `warm_up` such uploads, and its median (a one-off, such as a worker thread's first allocations,
    shows in one round; what each id keeps shows in every one)."""
    photo = encoded(Image.new("RGB", (8, 8)), "PNG")
    with client_from() as http:

        def send(number: int) -> int:
            params = {"upload_id": f"{secrets.token_hex(6)}{number}"}
            return http.post(url + "gradio_api/upload", params=params, files={"files": ("a.png", photo)}).status_code

        statuses, growth = [send(n) for n in range(warm_up)], []
        for _ in range(rounds):
            time.sleep(1)
            before = resident_mb(pid)
            statuses += [send(n) for n in range(count)]
            time.sleep(1)
            growth.append(round(resident_mb(pid) - before, 2))
    return {
        "uploads_a_round": count,
        "answered_200": statuses.count(200),
        "rss_growth_mb": growth,
        "median_rss_growth_mb": statistics.median(growth),
    }


def disk_bytes(folder: Path) -> int:
    """The bytes of the files under `folder`; a file that goes while it is walked (Gradio's parser deletes its
    temporary files) is not counted."""
    total = 0
    for path in folder.rglob("*"):
        with contextlib.suppress(FileNotFoundError):
            total += path.stat().st_size if path.is_file() else 0
    return total


def upload_flood(
    url: str, folder: Path, seconds: float = 60, workers: int = 4, size: int = 1_000_000, source: str | None = None
) -> dict:
    """One visitor (address `source`) uploads files of `size` bytes, each unlike the others, from `workers`
    threads as fast as it is answered for `seconds`, while a second visitor uploads a photo and calls
    /predict once a second: what the flood got, the most Gradio's folder grew meanwhile, and the second
    visitor's answers."""
    stop, statuses, growth = threading.Event(), [], [0]
    start = disk_bytes(folder)

    def flooder(http: httpx.Client) -> None:
        while not stop.is_set():
            files = {"files": ("f.bin", secrets.token_bytes(16) + bytes(size - 16))}
            statuses.append(http.post(url + "gradio_api/upload", files=files).status_code)

    def watch() -> None:
        while not stop.is_set():
            growth[0] = max(growth[0], disk_bytes(folder) - start)
            time.sleep(0.5)

    with client_from(source) as http, ThreadPoolExecutor(workers + 1) as pool:
        running = [pool.submit(flooder, http) for _ in range(workers)] + [pool.submit(watch)]
        other = uploading_visitor(url, time.monotonic() + seconds)
        stop.set()
        for future in running:
            future.result()
    counts = {str(status): statuses.count(status) for status in sorted(set(statuses))}
    grew = round(growth[0] / 1e6, 1)
    return {"seconds": seconds, "flood": counts, "most_disk_growth_mb": grew, "second_visitor": other}


def uploads(url: str, folder: Path) -> dict:
    """The refused uploads: too many files, each way of dodging the file count by the boundary, and a body
    whose last file never closes (Gradio's parser kept that file for good)."""
    plain = [("content-type", "multipart/form-data; boundary=real")]
    outcomes = {"33 files of 100 KB": upload_outcome(url, folder, plain, multipart("real", 33, 100_000))}
    unclosed = multipart("real", 3, 100_000).removesuffix(b"--real--\r\n")
    outcomes["3 files, no closing boundary"] = upload_outcome(url, folder, plain, unclosed)
    for name, headers in BOUNDARY_DODGES.items():
        outcomes[f"200 files, boundary {name}"] = upload_outcome(url, folder, headers, multipart("real", 200, 10))
    return outcomes


def declared_body(
    url: str, path: str, content_type: str = "application/json", wait_s: float = 5.0, sent: bytes = b""
) -> dict:
    """Headers that declare a 25 MB body, and only `sent` of it: a route that reads bodies waits for the
    rest, a refusal before reading answers at once. The status (None: no answer in `wait_s`, after which
    the client leaves) and how long it took."""
    host, port = httpx.URL(url).host, httpx.URL(url).port
    head = f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: {content_type}\r\n"
    head += "Content-Length: 25000000\r\n\r\n"
    started = time.perf_counter()
    with socket.create_connection((host, port), timeout=wait_s) as connection:
        connection.sendall(head.encode() + sent)
        try:
            status = int(connection.recv(64).split()[1])
        except TimeoutError:
            status = None
    return {"path": path, "status": status, "seconds": round(time.perf_counter() - started, 2)}


def abandoned_upload(url: str, folder: Path) -> dict:
    """An upload whose client leaves after three files of a declared 25 MB: how many files stay behind."""
    before = files_under(folder)
    multipart_type = "multipart/form-data; boundary=real"
    outcome = declared_body(url, "/gradio_api/upload", multipart_type, wait_s=2.0, sent=multipart("real", 3, 100_000))
    time.sleep(0.5)  # the app sees the client leave
    return outcome | {"files_left": len(files_under(folder) - before)}


def chunked_body(url: str, path: str, peak: Peak, idle_mb: float) -> dict:
    """25 MB streamed in 1 MB chunks with no declared length: the status, and the app's peak RSS above idle."""
    peak.reset()
    posted = httpx.post(
        url.rstrip("/") + path,
        content=(b" " * 1_000_000 for _ in range(25)),
        headers={"content-type": "application/json"},
        timeout=60,
    )
    return {"path": path, "status": posted.status_code, "peak_above_idle_mb": round(peak.mb() - idle_mb, 1)}


def attacks(url: str, peak: Peak, idle_mb: float, upload_folder: Path, temp_folder: Path) -> dict:
    """Each attack that reads Gradio's routes, with default settings but the upload budget (these attacks send
    more than one visitor may; `budgeted_flood` holds one to it)."""
    with client_from() as http:
        image = heavy_image(http, url)
    return {
        "forged_forwarded_for": forged_flood(url, "explain", made_up, workers=80),
        "direct_runs": [direct_runs(url, "run", "explain"), direct_runs(url, "api", "explain")],
        "through_the_queue": [through_the_queue(url, route, image) for route in ("call", "call/v2", "queue/join")],
        "declared_25_mb": [declared_body(url, path) for path in NOT_THE_UPLOAD_ROUTE]
        + [declared_body(url, "/gradio_api/upload", "multipart/form-data; boundary=real", wait_s=2.0)],
        "chunked_25_mb": chunked_body(url, "/gradio_api/call/upload", peak, idle_mb),
        "uploads": uploads(url, upload_folder),
        "upload_forms": try_upload_forms(url, upload_folder, temp_folder),
        "unknown_routes": [declared_body(url, path) for path in UNKNOWN_ROUTES],
        "abandoned_upload": abandoned_upload(url, upload_folder),
    }


def budgeted_flood() -> dict:
    """One visitor uploading as fast as it can for 60 s, on an app with default settings, budget included."""
    folder = Path(tempfile.mkdtemp(prefix="abuse-flood-"))
    with running_app({"GRADIO_TEMP_DIR": str(folder)}) as (url, _):
        return upload_flood(url, folder)


def behind_one_proxy() -> dict:
    """With PETS_TRUSTED_PROXIES=1: distinct last X-Forwarded-For entries are distinct visitors, and
    made-up entries in front of the same last one are one visitor."""
    with running_app({"PETS_TRUSTED_PROXIES": "1"}) as (url, _):
        return {
            "distinct_last_entries": forged_flood(url, "explain", lambda n: f"203.0.113.7, {made_up(n)}", workers=8),
            "one_last_entry": forged_flood(url, "explain", lambda n: f"{made_up(n)}, 198.51.100.9", workers=8),
        }


def corpus_files() -> dict[str, bytes]:
    folder = Path(tempfile.mkdtemp(prefix="abuse-corpus-"))
    return {name: path.read_bytes() for name, (path, _) in write_corpus(folder).items()}


def warm_up(url: str) -> None:
    with httpx.Client(timeout=60) as http:
        photo = upload(http, url, PHOTO.name, PHOTO.read_bytes())
        for api in ("predict", "identify", "resize"):
            call(http, url, api, [photo] + ([512, None] if api == "resize" else []))


def inputs_report(url: str, process: Any, idle: float, peak: Peak) -> dict:
    """The hostile inputs and the corpus one at a time, four heavy ones at once, a flood of pipelines."""
    rows = one_at_a_time(url, peak, idle, hostile_inputs() | corpus_files())
    together = four_at_once(url, hostile_inputs())
    flooded = flood(url)
    time.sleep(2)
    after = resident_mb(process.pid)
    measured = [row for row in rows if "seconds" in row]
    return {
        "rss_after_mb": round(after, 1),
        "rss_after_minus_idle_mb": round(after - idle, 1),
        "requests": len(rows),
        "max_peak_above_idle_mb": max(row["peak_above_idle_mb"] for row in measured),
        "max_seconds": max(row["seconds"] for row in measured),
        "median_seconds": round(statistics.median(row["seconds"] for row in measured), 2),
        "over_memory_target": [row for row in measured if row["peak_above_idle_mb"] > TARGET_MB],
        "over_time_target": [row for row in measured if row["seconds"] > TARGET_S],
        "tracebacks_in_answers": sum(row["traceback_in_answer"] for row in measured),
        "bystander_always_answered": all(row["bystander_answered"] for row in measured),
        "four_at_once": together,
        "flood": flooded,
        "rows": rows,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.abuse", description=__doc__.splitlines()[0])
    parser.add_argument("--attacks", action="store_true", help=f"only the attacks on Gradio's routes ({ATTACKS.name})")
    only_attacks = parser.parse_args(argv).attacks
    upload_folder = Path(tempfile.mkdtemp(prefix="abuse-gradio-"))  # Gradio's files: where refused uploads would stay
    temp_folder = Path(tempfile.mkdtemp(prefix="abuse-tmp-"))  # the app's TMPDIR: where other routes' files stay
    env = {"GRADIO_TEMP_DIR": str(upload_folder), "TMPDIR": str(temp_folder)} | NO_BUDGET
    with running_app(env) as (url, process):
        warm_up(url)
        time.sleep(1)
        idle = resident_mb(process.pid)
        peak = Peak(process.pid)
        report = {"cpu": cpu(), "idle_rss_mb": round(idle, 1)}
        if not only_attacks:
            report |= inputs_report(url, process, idle, peak)
        report["attacks"] = attacks(url, peak, idle, upload_folder, temp_folder)
        report["attacks"]["new_upload_ids"] = new_upload_ids(url, process.pid)
        report["tracebacks_in_log"] = Path(process.log).read_text().count("Traceback")
    report["attacks"]["behind_one_proxy"] = behind_one_proxy()
    report["attacks"]["one_visitor_uploading_60_s"] = budgeted_flood()
    out = ATTACKS if only_attacks else RESULTS
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k != "rows"}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
