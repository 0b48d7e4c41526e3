"""Helpers shared by benchmarks and live-server tests: start app.py, call it over plain HTTP, summarize."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from train.experiments.tracking_server import free_port

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data" / "oxford-iiit-pet"


@contextlib.contextmanager
def running_app(
    env: dict[str, str] | None = None,
    timeout: float = 60,
    python: str | Path = sys.executable,
    folder: Path = REPO,
    port: int | None = None,
    inherit_env: bool = True,
) -> Iterator[tuple[str, subprocess.Popen]]:
    """`python app.py` in `folder` on `port` (default: a free one), with this process's environment unless
    `inherit_env` is off; yields its URL and process once it answers, stops it afterwards."""
    port = port or free_port()
    url = f"http://127.0.0.1:{port}/"
    log = Path(tempfile.mkstemp(prefix="app-", suffix=".log")[1])  # a file, not a pipe: a full pipe would block it
    process = subprocess.Popen(
        [str(python), "app.py"],
        cwd=folder,
        env=(dict(os.environ) if inherit_env else {}) | {"GRADIO_SERVER_PORT": str(port)} | (env or {}),
        stdout=subprocess.DEVNULL,
        stderr=log.open("w"),
        text=True,
    )
    process.log = log  # what the app wrote to stderr (its log), for tests to read
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"app.py exited before it served on port {port}:\n{log.read_text()[-3000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url + "gradio_api/info", timeout=2).status_code == 200:
                    break
            time.sleep(0.1)
        else:
            raise RuntimeError(f"app.py did not start on port {port} in {timeout:.0f} s")
        if not listens_on(process.pid, port):
            raise RuntimeError(f"port {port} is answered by another process, not the app.py this started")
        yield url, process
    finally:
        process.terminate()
        process.wait(timeout=10)
        log.unlink(missing_ok=True)


def listens_on(pid: int, port: int) -> bool:
    """Whether process `pid` holds the listening TCP socket on `port` (Linux /proc): the proof that an
    answer on the port comes from the server a test started, not from one left running."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "0A":  # 0A: LISTEN
                    inodes.add(fields[9])
    return bool(inodes & sockets_of(pid))


def sockets_of(pid: int) -> set[str]:
    """The socket inodes among the process's open files; a file closed while they are read is skipped."""
    held = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                held.add(target[8:-1])
    return held


def rest_call(http: httpx.Client, url: str, api_name: str, image: Path, inline: bool = False) -> object:
    """What curl does: upload the file, start the call, read the event stream to its `complete` event.
    With `inline` the image travels in the call as a data URL instead, saving the upload round trip."""
    if inline:
        encoded = base64.b64encode(image.read_bytes()).decode()
        data = [{"path": None, "url": f"data:image/jpeg;base64,{encoded}", "meta": {"_type": "gradio.FileData"}}]
    else:
        with open(image, "rb") as handle:
            uploaded = http.post(url + "gradio_api/upload", files={"files": (image.name, handle)}).json()[0]
        data = [{"path": uploaded, "meta": {"_type": "gradio.FileData"}}]
    return call_api(http, url, api_name, data)


def call_api(http: httpx.Client, url: str, api_name: str, data: list) -> object:
    """Start a call of `api_name` with `data` and read its event stream to the `complete` event."""
    event = http.post(f"{url}gradio_api/call/{api_name}", json={"data": data}).json()["event_id"]
    with http.stream("GET", f"{url}gradio_api/call/{api_name}/{event}") as stream:
        kind = None
        for line in stream.iter_lines():
            if line.startswith("event:"):
                kind = line.split(":", 1)[1].strip()
            elif line.startswith("data:") and kind in ("complete", "error"):
                if kind == "error":
                    raise RuntimeError(f"{api_name} failed: {line}")
                return json.loads(line[5:])
    raise RuntimeError(f"{api_name}: the stream ended without an answer")


def cpu() -> str:
    """The CPU for a benchmark's report: its model and whether it has AVX-512 VNNI (int8 speed hangs on it)."""
    info = Path("/proc/cpuinfo").read_text()
    model = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "")
    vnni = "with" if "avx512_vnni" in info else "without"
    return f"{model or 'unknown CPU'}, {vnni} AVX-512 VNNI, {os.cpu_count()} cores"


def cpu_seconds(pid: int) -> float:
    """CPU time (user and system, all threads) process `pid` has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


def own_cpu_seconds() -> float:
    """CPU time this process has used so far: a benchmark's clients, when they are its threads."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def resident_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def percentiles(samples_ms: list[float]) -> dict[str, float]:
    ordered = sorted(samples_ms)
    return {
        "p50_ms": round(statistics.median(ordered), 2),
        "p95_ms": round(ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))], 2),
        "max_ms": round(ordered[-1], 2),
        "n": len(ordered),
    }


def timed(fn, repeats: int) -> list[float]:
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - started) * 1000)
    return samples
