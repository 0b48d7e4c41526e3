"""Publish the Space: validate model/ behind a promotion gate, then upload exactly the Space's files.

Needs only the runtime requirements and huggingface_hub (no torch), so a deploy job stays small.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import onnxruntime as ort

from inference import sha256_file
from train.config import ConfigError, read_toml
from train.provenance import git_commit

REPO = Path(__file__).resolve().parents[1]
PUBLISH_CONFIG = REPO / "train" / "configs" / "publish.toml"
SKIPPED = {"__pycache__", ".DS_Store"}


class GateError(RuntimeError):
    """The model may not be published; the message says which check failed."""


@dataclass(frozen=True)
class PublishConfig:
    min_test_accuracy: float
    max_regression: float
    space_files: tuple[str, ...]

    @classmethod
    def load(cls, path: Path = PUBLISH_CONFIG) -> PublishConfig:
        data = read_toml(path)
        keys = ("min_test_accuracy", "max_regression", "space_files")
        missing, unknown = [k for k in keys if k not in data], sorted(set(data) - set(keys))
        if missing or unknown:
            raise ConfigError(f"{path}: missing key(s) {missing}, unknown key(s) {unknown}.")
        return cls(float(data["min_test_accuracy"]), float(data["max_regression"]), tuple(data["space_files"]))


def space_files(root: Path, entries: tuple[str, ...]) -> list[Path]:
    """The files to upload, relative to `root`: each entry is a file or a folder taken whole."""
    files = []
    for entry in entries:
        path = root / entry
        if not path.exists():
            raise GateError(f"{entry} is part of the Space but does not exist.")
        found = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        files += [p.relative_to(root) for p in found if not SKIPPED & set(p.parts)]
    return files


def validate(model_dir: Path, config: PublishConfig, served_card: dict | None) -> dict:
    """The promotion gate. Returns the card; raises GateError naming the first failed check."""
    card = json.loads((model_dir / "card.json").read_text())
    if sha256_file(model_dir / "model.onnx") != card["model"]["sha256"]:
        raise GateError("model.onnx does not match the sha256 in card.json: re-export the model.")
    int8 = card.get("int8", {})
    if int8.get("accepted") and sha256_file(model_dir / int8["file"]) != int8["sha256"]:
        raise GateError(f"{int8['file']} does not match the sha256 in card.json: re-run select.")
    labels = json.loads((model_dir / "labels.json").read_text())
    outputs = ort.InferenceSession(str(model_dir / "model.onnx"), providers=["CPUExecutionProvider"]).get_outputs()
    if outputs[0].shape[-1] != len(labels):
        raise GateError(f"labels.json lists {len(labels)} classes but the model has {outputs[0].shape[-1]} outputs.")
    accuracy = card.get("metrics", {}).get("test", {}).get("accuracy")
    if accuracy is None:
        raise GateError("card.json has no test accuracy: run `python -m train select` first.")
    if accuracy < config.min_test_accuracy:
        raise GateError(f"Test accuracy {accuracy:.4f} is below the threshold {config.min_test_accuracy:.4f}.")
    if served_card is not None:
        served = served_card["metrics"]["test"]["accuracy"]
        if accuracy < served - config.max_regression:
            raise GateError(
                f"Test accuracy {accuracy:.4f} is more than {config.max_regression:.4f} below the "
                f"{served:.4f} the Space serves now."
            )
    return card


def served_card(space_id: str, token: str | None) -> dict | None:
    """The card the Space serves now; None when the Space or its card does not exist yet."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError

    try:
        path = hf_hub_download(space_id, "model/card.json", repo_type="space", token=token)
    except (RepositoryNotFoundError, EntryNotFoundError):
        return None
    return json.loads(Path(path).read_text())


def commit_message(card: dict) -> str:
    mlflow = card["mlflow"]
    return (
        f"Deploy {git_commit()[:12]}: {mlflow['registered_model']} "
        f"version {mlflow['version']} (test accuracy {card['metrics']['test']['accuracy']:.4f})"
    )


def dry_run_report(root: Path, files: list[Path], config: PublishConfig) -> int:
    """Files as `path<TAB>bytes`, the commit message, then the verdict; no network, so no Space comparison."""
    for path in files:
        print(f"{path.as_posix()}\t{(root / path).stat().st_size}")
    card = json.loads((root / "model" / "card.json").read_text())
    print(commit_message(card))
    try:
        validate(root / "model", config, None)
    except GateError as error:
        print(f"gate: FAILED: {error}")
        return 1
    print("gate: passed (the Space's current model was not compared: dry run)")
    return 0


def publish(space_id: str | None, dry_run: bool, root: Path = REPO, config_path: Path = PUBLISH_CONFIG) -> int:
    config = PublishConfig.load(config_path)
    files = space_files(root, config.space_files)
    token = os.environ.get("HF_TOKEN")
    if dry_run:
        return dry_run_report(root, files, config)
    if not space_id:
        raise GateError("Say which Space: --space-id owner/name or HF_SPACE_ID.")
    if not token:
        raise GateError("HF_TOKEN is not set: a write token for the Space is needed.")
    card = validate(root / "model", config, served_card(space_id, token))
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    api.create_repo(space_id, repo_type="space", space_sdk="gradio", exist_ok=True)
    info = api.upload_folder(
        repo_id=space_id,
        repo_type="space",
        folder_path=root,
        commit_message=commit_message(card),
        allow_patterns=[path.as_posix() for path in files],
        delete_patterns=["model/**", "examples/**"],
    )
    print(f"published {len(files)} files to {space_id}: {info.commit_url}", file=sys.stderr)
    return 0
