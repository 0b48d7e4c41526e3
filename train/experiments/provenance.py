"""Where a run or a deploy came from: the git commit and the versions of the packages that matter."""

from __future__ import annotations

import os
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

PACKAGES = ("torch", "torchvision", "mlflow", "onnx", "onnxruntime", "numpy", "pillow", "efficientnet-lite-pytorch")


def git_commit() -> str:
    """HEAD of this checkout; GITHUB_SHA in Actions; "unknown" outside git."""
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True, cwd=Path(__file__).parent
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return os.environ.get("GITHUB_SHA", "unknown")


def package_versions() -> dict[str, str]:
    found = {}
    for name in PACKAGES:
        try:
            found[f"version.{name}"] = version(name)
        except PackageNotFoundError:
            found[f"version.{name}"] = "absent"
    return found
