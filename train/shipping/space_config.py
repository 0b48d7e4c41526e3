"""The Space's README front matter, checked against the Spaces configuration reference before a deploy:
what Hugging Face reads to build the Space (SDK and its version, Python, the app file) and to show it."""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

COLOURS = {"red", "yellow", "green", "blue", "indigo", "purple", "pink", "gray"}
LICENCES = {  # the Hub's licence identifiers that fit an app like this one
    "apache-2.0", "mit", "bsd-2-clause", "bsd-3-clause", "gpl-3.0", "lgpl-3.0", "agpl-3.0", "mpl-2.0",
    "cc-by-4.0", "cc-by-sa-4.0", "cc0-1.0", "openrail", "unlicense", "other",
}  # fmt: skip
REQUIRED = ("title", "sdk", "sdk_version", "python_version", "app_file", "license", "short_description")
MAX_SHORT_DESCRIPTION = 60


def front_matter(readme: Path) -> dict:
    match = re.match(r"---\n(.*?)\n---\n", readme.read_text(), re.S)
    if not match:
        raise ValueError(f"{readme} has no front matter (a YAML block between --- lines at the top).")
    return yaml.safe_load(match.group(1))


def pins(requirements: Path) -> dict[str, str]:
    """name -> version for each `name==version` line."""
    found = {}
    for line in requirements.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            found[name.strip().lower()] = version.strip()
    return found


def problems(root: Path, check_wheels: bool = True) -> list[str]:
    """What Hugging Face would refuse, or build differently from what we test; empty when all is well."""
    meta, runtime = front_matter(root / "README.md"), pins(root / "requirements.txt")
    found = [f"front matter: '{key}' is missing" for key in REQUIRED if key not in meta]
    if meta.get("sdk") != "gradio":
        found.append(f"front matter: sdk must be gradio, got {meta.get('sdk')!r}")
    if str(meta.get("sdk_version")) != runtime.get("gradio"):
        found.append(
            f"front matter: sdk_version {meta.get('sdk_version')} differs from gradio=={runtime.get('gradio')}"
        )
    if not (root / str(meta.get("app_file"))).is_file():
        found.append(f"front matter: app_file {meta.get('app_file')!r} does not exist")
    for key in ("colorFrom", "colorTo"):
        if key in meta and meta[key] not in COLOURS:
            found.append(f"front matter: {key} {meta[key]!r} is not one of {sorted(COLOURS)}")
    if len(str(meta.get("short_description", ""))) > MAX_SHORT_DESCRIPTION:
        found.append(f"front matter: short_description is over {MAX_SHORT_DESCRIPTION} characters")
    if meta.get("license") not in LICENCES:
        found.append(f"front matter: license {meta.get('license')!r} is not a Hub licence identifier")
    if check_wheels and "python_version" in meta:
        found += missing_wheels(str(meta["python_version"]), runtime)
    return found


def missing_wheels(python_version: str, runtime: dict[str, str]) -> list[str]:
    """Each pinned runtime package must have a wheel for the Space's Python (pip asks the package index)."""
    found = []
    with tempfile.TemporaryDirectory() as scratch:
        for name, version in runtime.items():
            command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:"]
            command += ["--python-version", python_version, "--dest", scratch, f"{name}=={version}"]
            if subprocess.run(command, capture_output=True, text=True).returncode:
                found.append(f"{name}=={version} has no wheel for Python {python_version}: pin another version")
    return found
