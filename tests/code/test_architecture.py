"""Who may import whom (docs/architecture.md): the serving modules stay installable from requirements.txt
alone, `preprocess` stays the one leaf both training and serving share, nothing imports the app, and each
stage of train/ imports only from the stages below it, with no circle."""

from __future__ import annotations

import ast
from collections.abc import Iterator
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


STAGES = ("data", "learning", "experiments", "shipping")  # train/'s subpackages, lowest first


def train_modules(root: Path) -> dict[str, Path]:
    """Every module of the `train` package under `root`, by dotted name (a package by its own name)."""
    modules = {}
    for path in sorted((root / "train").rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def train_imports(path: Path, known: set[str]) -> set[str]:
    """The modules of `known` a file imports, at any depth; `from train.stage import module` names the module."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
    return found & known


def stage_of(module: str) -> int | None:
    """The stage's rank (0 = lowest) of a module inside one, else None (`train`, `train.__main__`)."""
    parts = module.split(".")
    return STAGES.index(parts[1]) if len(parts) > 1 and parts[1] in STAGES else None


def upward_imports(root: Path) -> list[str]:
    """Imports from a stage to a stage above it, and any import of the CLI or from the package's root."""
    modules = train_modules(root)
    bad = []
    for module, path in modules.items():
        for target in train_imports(path, set(modules)) - {module}:
            rank, target_rank = stage_of(module), stage_of(target)
            outside_the_stages = target_rank is None and target != "train"
            if outside_the_stages or (rank is not None and target_rank > rank):
                bad.append(f"{module} -> {target}")
    return sorted(bad)


def circles(root: Path) -> list[list[str]]:
    """Sets of train/ modules that import one another round a circle (Tarjan's strongly connected parts)."""
    modules = train_modules(root)
    graph = {module: train_imports(path, set(modules)) - {module} for module, path in modules.items()}
    order, low, stack, found = {}, {}, [], []

    def visit(module: str) -> Iterator[None]:
        order[module] = low[module] = len(order)
        stack.append(module)
        for target in graph[module]:
            if target not in order:
                yield from visit(target)
                low[module] = min(low[module], low[target])
            elif target in stack:
                low[module] = min(low[module], order[target])
        if low[module] == order[module]:
            part = stack[stack.index(module) :]
            del stack[stack.index(module) :]
            if len(part) > 1:
                found.append(sorted(part))
        yield

    for module in graph:
        if module not in order:
            list(visit(module))
    return found


def test_each_stage_of_train_imports_only_from_the_stages_below_it() -> None:
    assert not upward_imports(REPO)


def test_train_imports_its_own_modules_by_full_name() -> None:
    """A relative import (`from ..shipping import x`) would slip past the stage rule, which reads full names."""
    relative = [
        path.relative_to(REPO).as_posix()
        for path in (REPO / "train").rglob("*.py")
        if any(isinstance(node, ast.ImportFrom) and node.level for node in ast.walk(ast.parse(path.read_text())))
    ]
    assert not relative


def test_train_has_no_import_circle() -> None:
    assert not circles(REPO)


def test_train_is_its_stages_each_saying_in_one_line_what_it_holds() -> None:
    loose = sorted(path.name for path in (REPO / "train").glob("*.py"))
    assert loose == ["__init__.py", "__main__.py"], loose  # every module lives in a stage
    for stage in STAGES:
        lines = (REPO / "train" / stage / "__init__.py").read_text().splitlines()
        assert len(lines) == 1 and lines[0].startswith('"""') and lines[0].endswith('"""'), (stage, lines)


def test_the_stage_rules_see_an_upward_import_and_a_circle(tmp_path: Path) -> None:
    """On a made-up package: data importing learning inside a function is upward, and with learning
    importing it back, a circle; the CLI importing a stage is neither."""
    for stage in ("data", "learning"):
        (tmp_path / "train" / stage).mkdir(parents=True)
        (tmp_path / "train" / stage / "__init__.py").write_text('"""x"""\n')
    (tmp_path / "train" / "__init__.py").write_text("")
    (tmp_path / "train" / "__main__.py").write_text("from train.learning import model\n")
    (tmp_path / "train" / "data" / "pets.py").write_text("def f():\n    from train.learning.model import g\n")
    (tmp_path / "train" / "learning" / "model.py").write_text("from train.data import pets\n")
    assert upward_imports(tmp_path) == ["train.data.pets -> train.learning.model"]
    assert circles(tmp_path) == [["train.data.pets", "train.learning.model"]]
