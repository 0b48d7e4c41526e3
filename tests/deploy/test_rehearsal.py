"""A deploy rehearsal: the exact tree `publish` would upload, in a fresh virtual environment holding only
its requirements.txt, started the way Hugging Face starts a Space, then used through gradio_client, plain
REST and a browser."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from bench.common import rest_call, running_app
from tests.conftest import EXAMPLES, REPO

pytestmark = pytest.mark.slow


def tree(root: Path) -> dict[str, tuple[int, int]]:
    """Every path with its size and mtime, but for two caches that Python and Gradio skip without a word
    where the code directory is read-only, as on Spaces: bytecode, and Gradio's type stubs (.pyi) of
    component subclasses. As root here nothing is read-only, so they get written and are ignored."""
    paths = (p for p in root.rglob("*") if "__pycache__" not in p.parts and p.suffix != ".pyi")
    return {p.relative_to(root).as_posix(): (p.stat().st_size, p.stat().st_mtime_ns) for p in paths}


@pytest.fixture(scope="module")
def space(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    root = tmp_path_factory.mktemp("rehearsal")
    out, venv, home = root / "space", root / "venv", root / "home"
    home.mkdir()
    publish = [sys.executable, "-m", "train", "publish", "--dry-run", "--out", str(out)]
    done = subprocess.run(publish, cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    install = [venv / "bin" / "pip", "install", "--quiet", "-r", out / "requirements.txt"]
    subprocess.run(install, check=True, capture_output=True)
    before = tree(out)
    subprocess.run(["chmod", "-R", "a-w", str(out)], check=True)  # read-only, for a runner that is not root
    spaces = {
        "PATH": f"{venv / 'bin'}:/usr/bin:/bin",
        "HOME": str(home),
        "SYSTEM": "spaces",
        "GRADIO_SERVER_NAME": "0.0.0.0",
    }
    try:
        python = venv / "bin" / "python"
        # A free port, not Spaces' 7860: a Quick-start app left running there must not answer for the Space
        # (running_app also checks that the port's listener is the process it started).
        with running_app(spaces, 120, python, out, inherit_env=False) as (url, _):
            yield {"url": url, "out": out, "venv": venv, "before": before, "home": home}
    finally:
        subprocess.run(["chmod", "-R", "u+w", str(out)], check=True)  # so pytest can clean up


def test_the_space_environment_holds_only_the_runtime(space: dict) -> None:
    python = space["venv"] / "bin" / "python"
    assert subprocess.run([python, "-c", "import torch"], capture_output=True).returncode != 0
    assert subprocess.run([python, "-c", "import onnxruntime, gradio"], capture_output=True).returncode == 0
    assert not (space["out"] / "train").exists() and not (space["out"] / "tests").exists()


def test_predict_through_gradio_client_and_rest(space: dict) -> None:
    from gradio_client import Client, handle_file

    photo = EXAMPLES[0]
    answer = Client(space["url"], verbose=False).predict(handle_file(photo), api_name="/predict")
    with httpx.Client(timeout=60) as http:
        assert rest_call(http, space["url"], "predict", photo)[0] == answer
    assert answer["label"] == photo.stem.rsplit("_", 1)[0].replace("_", " ")


def test_the_browser_suite_passes_against_the_space(space: dict) -> None:
    env = os.environ | {"PETS_APP_URL": space["url"], "SCREENSHOT_DIR": str(space["out"].parent / "shots")}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/browser"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0 and "passed" in done.stdout, done.stdout[-3000:]
    assert "skipped" not in done.stdout.splitlines()[-1] or not Path("/usr/bin/chromium").exists()


def test_the_space_writes_nothing_into_its_code_directory(space: dict) -> None:
    assert tree(space["out"]) == space["before"]


def test_no_telemetry_state_lands_in_home(space: dict) -> None:
    """ONNX Runtime would keep a device id under ~/.cache/Microsoft; the app turns its telemetry off."""
    assert not (space["home"] / ".cache" / "Microsoft").exists()
