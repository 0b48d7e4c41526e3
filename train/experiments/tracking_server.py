"""A shared MLflow tracking server to try out on one machine: a throwaway PostgreSQL cluster (Debian's
initdb and pg_ctl in a temporary folder, on a free port, trust auth on loopback only; no system role or
service touched) behind `mlflow server` with proxied artifacts. `python -m train server` runs one until
Ctrl-C; the tests start the same thing. A team server is the same `mlflow server` line with a real
database: docs/scaling-out.md."""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import requests


class ServerError(RuntimeError):
    """PostgreSQL or the MLflow server could not be started."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def pg_binary(name: str) -> str:
    """Debian keeps the server binaries off PATH, in /usr/lib/postgresql/<major>/bin."""
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=lambda p: int(Path(p).parts[-3]))
    path = found[-1] if found else shutil.which(name)
    if not path:
        raise ServerError(f"{name} not found: install PostgreSQL (Debian: apt-get install postgresql).")
    return path


def as_postgres_user() -> list[str]:
    """PostgreSQL refuses to run as root; as root, run it as the `postgres` user Debian's package made."""
    if os.geteuid() != 0:
        return []
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        raise ServerError("Running as root and there is no 'postgres' user to run PostgreSQL as.") from None
    return ["runuser", "-u", "postgres", "--"]


def run(command: list[str]) -> None:
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        raise ServerError(f"{Path(command[0]).name} failed: {(done.stderr or done.stdout).strip()}")


@contextlib.contextmanager
def postgres() -> Iterator[str]:
    """A PostgreSQL cluster in its own temporary folder on a free port; yields the SQLAlchemy URI of its
    `mlflow` database and removes everything when the block ends."""
    port = free_port()
    folder = Path(tempfile.mkdtemp(prefix="pets-postgres-"))
    user = as_postgres_user()
    if user:
        shutil.chown(folder, "postgres", "postgres")
    data = folder / "data"
    run([*user, pg_binary("initdb"), "-D", str(data), "-U", "mlflow", "--auth=trust", "-E", "UTF8"])
    options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off"
    try:
        run([*user, pg_binary("pg_ctl"), "-D", str(data), "-o", options, "-l", str(folder / "log"), "-w", "start"])
        run([*user, pg_binary("createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "mlflow", "mlflow"])
        yield f"postgresql+psycopg2://mlflow@127.0.0.1:{port}/mlflow"
    finally:
        subprocess.run([*user, pg_binary("pg_ctl"), "-D", str(data), "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def mlflow_server(
    backend_uri: str, artifacts: Path, port: int | None = None, host: str = "127.0.0.1"
) -> Iterator[tuple[str, subprocess.Popen]]:
    """`mlflow server` on `backend_uri`, artifacts proxied to `artifacts`; yields its URL and process once
    /health answers, and stops it (its workers too) afterwards."""
    port = port or free_port()
    url = f"http://{host}:{port}"
    command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend_uri]
    command += ["--artifacts-destination", str(artifacts), "--host", host, "--port", str(port), "--workers", "2"]
    with tempfile.TemporaryFile(mode="w+") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_for_health(url, process, log)
            yield url, process
        finally:
            stop(process)


def wait_for_health(url: str, process: subprocess.Popen, log, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            log.seek(0)
            raise ServerError(f"mlflow server exited with {process.returncode}:\n{log.read()[-3000:]}")
        with contextlib.suppress(requests.RequestException):
            if requests.get(f"{url}/health", timeout=2).ok:
                return
        time.sleep(0.3)
    raise ServerError(f"mlflow server at {url} did not answer within {timeout:.0f} s")


def stop(process: subprocess.Popen) -> None:
    """The server forks workers into its own session: signal the whole group."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


@contextlib.contextmanager
def local_server(artifacts: Path, port: int | None = None, host: str = "127.0.0.1") -> Iterator[str]:
    """PostgreSQL and `mlflow server` together; yields the tracking URI."""
    with postgres() as backend, mlflow_server(backend, artifacts, port, host) as (url, _):
        yield url


def serve(port: int, host: str, artifacts: str | None) -> int:
    """`python -m train server`: run until Ctrl-C or SIGTERM. The database always goes with it; the
    artifacts stay only where `artifacts` names a folder."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with contextlib.ExitStack() as stack:
        folder = Path(artifacts or stack.enter_context(tempfile.TemporaryDirectory(prefix="pets-artifacts-")))
        url = stack.enter_context(local_server(folder.resolve(), port, host))
        print(f"MLflow on a throwaway PostgreSQL at {url}, artifacts in {folder}. Ctrl-C stops it.")
        print(f"In another shell: export MLFLOW_TRACKING_URI={url}", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            signal.pause()
    return 0
