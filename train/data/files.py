"""Tensor files read as data: torch's weights-only loader rebuilds tensors and plain values (numbers,
strings, lists, dicts) and refuses any other object rather than calling the code that would rebuild it.
What the project loads back, registered weights and checkpoints, may come from shared storage that others
can write to, so it goes through here."""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any

import torch


class NotTensorsError(RuntimeError):
    """The file holds an object other than tensors and plain values: refused, its code never run."""


def load_tensors(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:  # torch's refusal; its message is a page of advice on unsafe loading
        found = re.search(r"\bGLOBAL ([\w.]+)", str(error))  # "Unsupported global: GLOBAL x.Y was not allowed", ...
        what = found.group(1) if found else "an object the weights-only loader refuses"
        raise NotTensorsError(f"{path} holds {what}, not only tensors and plain values") from None
