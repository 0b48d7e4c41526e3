"""Lint refuses what would make a load run code: ruff's S301/TID251 (pyproject.toml) and the no-unpickling
hook (.pre-commit-config.yaml), run as CI runs them on files that do each forbidden thing once."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

RUFF_CAUGHT = {
    "import pickle\n\nwith open('m.pkl', 'rb') as f:\n    model = pickle.load(f)\n": "S301",
    "import pickle\n\nmodel = pickle.loads(b'')\n": "S301",
    "import mlflow.pytorch\n\nmlflow.pytorch.log_model(object(), name='model')\n": "TID251",
    "from mlflow.pytorch import load_model\n\nmodel = load_model('models:/m/1')\n": "TID251",
    "import mlflow\n\nmodel = mlflow.pyfunc.load_model('models:/m/1')\n": "TID251",
    "import cloudpickle\n\nmodel = cloudpickle.loads(b'')\n": "TID251",
}

HOOK_CAUGHT = [
    "import torch\n\nstate = torch.load('c.pt', weights_only=False)\n",  # pickle-ok: a sample the hook must catch
    "import torch\n\nstate = torch.load('c.pt', map_location='cpu', weights_only = 0)\n",  # pickle-ok: a sample
    "import torch\n\nstate = torch.load('c.pt', pickle_module=__import__('pickle'))\n",  # pickle-ok: a sample
    "import mlflow\n\nmlflow.pytorch.log_model(m, name='m', serialization_format='pickle')\n",  # pickle-ok: a sample
    'import mlflow\n\nmlflow.pytorch.save_model(m, "m", serialization_format="cloudpickle")\n',  # pickle-ok: a sample
    "import numpy as np\n\nlogits = np.load('l.npy', allow_pickle=True)\n",  # pickle-ok: a sample
    "import os\n\nos.environ['MLFLOW_ALLOW_PICKLE_DESERIALIZATION'] = 'true'\n",  # pickle-ok: a sample
    "import os\n\nos.environ['TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD'] = '1'\n",  # pickle-ok: a sample
]

SAFE = (
    "import json\n\nimport numpy as np\nimport torch\n\n"
    "state = torch.load('c.pt', map_location='cpu', weights_only=True)\n"
    "logits = np.load('l.npy')\nconfig = json.loads('{}')\n"
)


def ruff(path: Path) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "ruff", "check", "--no-cache", "--config", str(REPO / "pyproject.toml"), str(path)]
    return subprocess.run(command, capture_output=True, text=True, cwd=REPO)


def hook(path: Path) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "pre_commit", "run", "no-unpickling", "--files", str(path)]
    return subprocess.run(command, capture_output=True, text=True, cwd=REPO)


@pytest.mark.parametrize(("source", "rule"), list(RUFF_CAUGHT.items()))
def test_ruff_refuses_pickle_loads_and_mlflows_pickling_apis(tmp_path: Path, source: str, rule: str) -> None:
    path = tmp_path / "unsafe.py"
    path.write_text(source)
    found = ruff(path)
    assert found.returncode == 1 and f"{rule} " in found.stdout, found.stdout + found.stderr


@pytest.mark.parametrize("source", HOOK_CAUGHT)
def test_the_hook_refuses_loads_told_to_unpickle(tmp_path: Path, source: str) -> None:
    path = tmp_path / "unsafe.py"
    path.write_text(source)
    found = hook(path)
    assert found.returncode == 1 and "unsafe.py:3:" in found.stdout, found.stdout + found.stderr


def test_safe_loads_pass_both(tmp_path: Path) -> None:
    path = tmp_path / "safe.py"
    path.write_text(SAFE)
    for check in (ruff, hook):
        found = check(path)
        assert found.returncode == 0, found.stdout + found.stderr


def test_the_repository_passes_the_hook() -> None:
    """What CI runs: every tracked Python file, this one's samples excused line by line."""
    command = [sys.executable, "-m", "pre_commit", "run", "no-unpickling", "--all-files"]
    found = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    assert found.returncode == 0, found.stdout + found.stderr
