"""Each limit on the ways into the app triggers, on the live server, with small fast inputs; user errors
are one log line; a port another server answers is never taken for the app's."""

from __future__ import annotations

import base64
import contextlib
import http.server
import io
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from PIL import Image

from bench.common import free_port, running_app
from tests.conftest import CHELSEA, REPO

FILE = {"meta": {"_type": "gradio.FileData"}}


@pytest.fixture(scope="module")
def live() -> Iterator[tuple[str, Path]]:
    with running_app() as (url, process):
        yield url, process.log


def call(http: httpx.Client, url: str, api: str, data: list, headers: dict | None = None) -> tuple[int, str]:
    """Start a REST call and read its answer: (status, the event stream's text or the refusal)."""
    started = http.post(f"{url}gradio_api/call/{api}", json={"data": data}, headers=headers or {})
    if started.status_code != 200:
        return started.status_code, started.text
    event = started.json()["event_id"]
    with http.stream("GET", f"{url}gradio_api/call/{api}/{event}", headers=headers or {}) as stream:
        return 200, "\n".join(stream.iter_lines())


def uploaded(http: httpx.Client, url: str, photo: Path, headers: dict | None = None) -> dict:
    with open(photo, "rb") as handle:
        path = http.post(url + "gradio_api/upload", files={"files": (photo.name, handle)}, headers=headers).json()[0]
    return FILE | {"path": path}


def png(size: tuple[int, int] = (8, 8)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (200, 120, 40)).save(buffer, "PNG")
    return buffer.getvalue()


def test_a_data_url_body_over_20_mb_is_refused(live) -> None:
    url, _ = live
    data_url = "data:image/png;base64," + "A" * 21_000_000
    with httpx.Client(timeout=60) as http:
        status, text = call(http, url, "predict", [FILE | {"path": None, "url": data_url}])
    assert status == 413 and "at most 20 MB" in text


def test_a_chunked_body_over_the_limit_is_refused_as_it_streams(live) -> None:
    url, _ = live

    def chunks() -> Iterator[bytes]:
        for _ in range(25):
            yield b" " * 1_000_000

    with httpx.Client(timeout=60) as http:
        answer = http.post(
            f"{url}gradio_api/call/predict", content=chunks(), headers={"content-type": "application/json"}
        )
    assert answer.status_code == 413 and "at most 20 MB" in answer.text


def test_an_upload_of_more_than_32_files_is_refused(live) -> None:
    url, _ = live
    files = [("files", (f"{i}.png", png())) for i in range(33)]
    with httpx.Client(timeout=60) as http:
        refused = http.post(url + "gradio_api/upload", files=files)
        accepted = http.post(url + "gradio_api/upload", files=files[:32])
    assert refused.status_code == 413 and "At most 32 files" in refused.text
    assert accepted.status_code == 200 and len(accepted.json()) == 32


def test_a_malformed_data_url_gets_a_clear_error(live) -> None:
    url, _ = live
    with httpx.Client(timeout=60) as http:
        for data_url, message in (
            ("data:image/png;base64,@@@@", "not valid base64"),
            ("data:image/png," + base64.b64encode(png()).decode(), "data URL is malformed"),
        ):
            status, text = call(http, url, "predict", [FILE | {"path": None, "url": data_url}])
            assert status == 200 and "event: error" in text and message in text, text


@pytest.mark.parametrize("value", ["false", "true", 0, 1, None])
def test_booleans_are_strict(live, value) -> None:
    url, _ = live
    with httpx.Client(timeout=60) as http:
        status, text = call(http, url, "rotate", [uploaded(http, url, CHELSEA), 45, value])
    assert status == 200 and "expand must be true or false" in text, text


def test_an_unknown_endpoint_is_a_404_not_a_500(live) -> None:
    url, _ = live
    answer = httpx.post(f"{url}gradio_api/call/no_such_thing", json={"data": []}, timeout=30)
    assert answer.status_code == 404 and "no_such_thing" in answer.json()["error"]


def test_user_errors_are_one_log_line_without_a_traceback(live) -> None:
    url, log = live
    before = log.read_text()
    with httpx.Client(timeout=60) as http:
        call(http, url, "resize", [uploaded(http, url, CHELSEA), 0, None])
        call(http, url, "predict", [FILE | {"path": None, "url": "data:image/png;base64,@@"}])
    time.sleep(0.5)
    written = log.read_text()[len(before) :]
    assert "width must be between 1 and 4096" in written and "not valid base64" in written
    assert "Traceback" not in written, written


def heavy_pipeline(http: httpx.Client, url: str, headers: dict, image: dict) -> tuple[int, str]:
    steps = '[{"op": "rotate", "angle": 30, "expand": false}, {"op": "blur", "radius": 40}]'
    return call(http, url, "pipeline", [image, steps], headers)


def test_one_visitor_cannot_fill_the_queue_or_hold_up_predict(live, tmp_path: Path) -> None:
    """Twelve heavy calls at once from one address: at most four are queued, the rest are told why; meanwhile
    another visitor's /predict is answered promptly (the transforms run in their own group)."""
    url, _ = live
    big = tmp_path / "big.jpg"
    Image.effect_noise((3000, 3000), 60).convert("RGB").save(big, quality=80)
    flooder, other = {"x-forwarded-for": "203.0.113.7"}, {"x-forwarded-for": "198.51.100.9"}
    with httpx.Client(timeout=120) as http:
        image = uploaded(http, url, big, flooder)
        photo = uploaded(http, url, CHELSEA, other)
        with ThreadPoolExecutor(12) as pool:
            flood = [pool.submit(heavy_pipeline, http, url, flooder, image) for _ in range(12)]
            time.sleep(1.0)
            started = time.perf_counter()
            status, text = call(http, url, "predict", [photo], other)
            waited = time.perf_counter() - started
            answers = [future.result() for future in flood]
    refused = [text for status, text in answers if "Too many requests at once" in text]
    assert status == 200 and "event: complete" in text and waited < 5, (waited, text)
    assert 8 <= len(refused) <= 12 - 1, answers  # at most four held; at least one ran


class Decoy(http.server.BaseHTTPRequestHandler):
    """Another server on the port, answering like a Gradio app."""

    def do_GET(self) -> None:
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b'{"named_endpoints": {}}')

    def log_message(self, *args) -> None:
        pass


@contextlib.contextmanager
def decoy_server(port: int) -> Iterator[None]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Decoy)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield
    finally:
        server.shutdown()


def test_a_busy_port_makes_the_fixture_fail_not_pass() -> None:
    """The deploy rehearsal and every live test start the app through `running_app`: when the port is
    already answered by something else, it must fail with a clear message, not test the other server."""
    port = free_port()
    with decoy_server(port), pytest.raises(RuntimeError, match=f"port {port}"), running_app(port=port, timeout=60):
        pass


def test_the_strip_that_took_4_8_gb_costs_little(tmp_path: Path) -> None:
    """A 400000×50 PNG (19 KB) through /predict's path: peak RSS well under the 400 MB budget."""
    strip = tmp_path / "strip.png"
    Image.new("RGB", (400_000, 50), (90, 90, 90)).save(strip)
    code = (
        "import resource, sys; from inference import PetClassifier; c = PetClassifier.load(); c.predict(sys.argv[1]);"
        "base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss; print(base)"
    )
    idle = "import resource; from inference import PetClassifier; c = PetClassifier.load(); import numpy as np;"
    idle += "c.predict(np.zeros((300, 400, 3), np.uint8)); print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"
    run = [sys.executable, "-c"]
    peak = int(subprocess.run([*run, code, str(strip)], cwd=REPO, capture_output=True, text=True, check=True).stdout)
    baseline = int(subprocess.run([*run, idle], cwd=REPO, capture_output=True, text=True, check=True).stdout)
    assert (peak - baseline) / 1024 < 250, f"{(peak - baseline) / 1024:.0f} MB above a small photo's peak"
