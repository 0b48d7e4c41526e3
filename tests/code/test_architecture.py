"""Who may import whom (docs/architecture.md): the serving modules stay installable from requirements.txt
alone, `preprocess` stays the one leaf both training and serving share, and nothing imports the app."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import REPO

PROJECT = {"app", "inference", "preprocess", "transforms", "limits", "gradio_patches", "train", "bench", "tests"}
# what the Space uploads and runs
SERVING = {"app", "inference", "preprocess", "transforms", "limits", "gradio_patches"}
MAY_IMPORT = {  # project modules each serving module may import
    "preprocess": set(),
    "gradio_patches": set(),
    "limits": {"gradio_patches"},
    "transforms": {"preprocess"},
    "inference": {"preprocess"},
    "app": {"inference", "preprocess", "transforms", "limits", "gradio_patches"},
}
NOT_IN_THE_SPACE = {"torch", "torchvision", "mlflow", "onnx", "ray", "matplotlib", "skimage", "huggingface_hub"}


def imported(path: Path) -> set[str]:
    """Top-level names of every module a file imports, at any depth (function-level imports count)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("module", sorted(SERVING))
def test_serving_modules_import_only_what_they_may(module: str) -> None:
    names = imported(REPO / f"{module}.py")
    assert names & PROJECT <= MAY_IMPORT[module], names & PROJECT - MAY_IMPORT[module]
    assert not names & NOT_IN_THE_SPACE, names & NOT_IN_THE_SPACE  # the Space installs requirements.txt only


def test_training_and_benchmarks_never_import_the_app() -> None:
    offenders = [
        path.relative_to(REPO).as_posix()
        for folder in ("train", "bench")
        for path in (REPO / folder).rglob("*.py")
        if "app" in imported(path)
    ]
    assert not offenders  # the app is a process they start and call, not a library


def test_the_rules_see_an_import_inside_a_function(tmp_path: Path) -> None:
    source = tmp_path / "module.py"
    source.write_text("import os\n\ndef f():\n    from train.data.pets import Sample\n    import torch.nn\n")
    assert imported(source) == {"os", "train", "torch"}
