"""Tensor files read as data: torch's weights-only loader rebuilds tensors and plain values (numbers,
strings, lists, dicts) and refuses any other object rather than calling the code that would rebuild it.
What the project loads back, registered weights and checkpoints, may come from shared storage that others
can write to, so it goes through here."""

from __future__ import annotations

import os
import pickle
import re
import uuid
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


def save_tensors(value: Any, path: Path) -> None:
    """`torch.save` to a temporary file of this writer's own beside `path` (process id and a random part in
    its name, made with the umask's permissions like any file, so others on a shared folder can read it),
    then an atomic rename: two writers of one path (Ray trials on a shared cache or checkpoint folder) never
    write into the same file, a reader never sees half a file, and the last rename wins."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f"{path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
    try:
        torch.save(value, temporary)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
