"""Publish the Space: validate model/ behind a promotion gate, then upload exactly the Space's files.

Needs only the runtime requirements and huggingface_hub (no torch), so a deploy job stays small.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from string import Template

from inference import (
    FEW_TEST_PHOTOS,
    ModelCard,
    ModelError,
    PetClassifier,
    how_answered,
    no_pet_sentence,
    readable_name,
    stanford_retention,
)
from train.experiments.provenance import git_commit
from train.learning.config import ConfigError, read_toml
from train.shipping.gates import Gates, PublishGate, publish_failure
from train.shipping.space_config import problems

REPO = Path(__file__).resolve().parents[2]
PUBLISH_CONFIG = REPO / "train" / "configs" / "publish.toml"
SPACE_README = REPO / "train" / "configs" / "space_readme.md"
SKIPPED = {"__pycache__", ".DS_Store"}


class GateError(RuntimeError):
    """The model may not be published; the message says which check failed."""


def load_space_files(path: Path = PUBLISH_CONFIG) -> tuple[str, ...]:
    data = read_toml(path)
    if set(data) != {"space_files"}:
        raise ConfigError(f"{path}: expected only the key space_files, got {sorted(data)}.")
    return tuple(data["space_files"])


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


def validate(model_dir: Path, gate: PublishGate, served_card: dict | None) -> ModelCard:
    """The promotion gate: the folder loads as serving loads it (card schema, sha256 of every shipped model,
    labels against outputs), a dog expert ships with its "no cat or dog" answer, then the test accuracy passes
    `gate`. Raises GateError naming what failed."""
    try:
        card = ModelCard.load(model_dir / "card.json")
        for variant in card.variants():
            PetClassifier.load(model_dir, variant=variant)  # refuses what serving would refuse
    except ModelError as error:
        raise GateError(f"{error} Re-run `python -m train select`.") from None
    if card.expert and card.no_pet is None:  # select and expert drop it: its threshold is fitted to the pair
        raise GateError("The model folder has a dog expert but no 'no cat or dog' answer: run python -m train no-pet.")
    served = served_card["metrics"]["test"] if served_card else None
    failure = publish_failure(card.metrics.get("test"), served, gate)
    if failure:
        raise GateError(failure)
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


def commit_message(card: ModelCard) -> str:
    test = card.metrics.get("test", {}).get("accuracy", float("nan"))
    return (
        f"Deploy {git_commit()[:12]}: {card.mlflow['registered_model']} "
        f"version {card.mlflow['version']} (test accuracy {test:.4f})"
    )


def check_space_config(root: Path) -> None:
    found = problems(root)
    if found:
        raise GateError("The Space would not build as tested: " + "; ".join(found) + ".")


def space_readme(card: ModelCard, labels: list[str], space_id: str | None) -> str:
    """The visitor's page, with the Space's front matter: SPACE_README filled in from the card (and the
    labels, which name the rows of its test confusion counts: how many photos each figure rests on)."""
    test, spec, space_id = card.metrics["test"], card.preprocess, space_id or "your-name/pet-breeds"
    photos, per_species = card.test_photos(labels), card.test_photos_per_species(labels)
    judged = {name: value for name, value in test["per_class"].items() if photos.get(name, 0) >= FEW_TEST_PHOTOS}
    weakest = sorted(judged.items(), key=lambda item: item[1])[:3]
    cv = card.metrics.get("cv")
    return Template(SPACE_README.read_text()).substitute(
        threshold=f"{card.threshold:.0%}",
        dog_threshold=f" ({card.expert_variant('fp32')[3]:.0%} for a dog's breed)" if card.expert else "",
        space_id=space_id,
        url=f"https://{space_id.replace('/', '-').replace('_', '-').lower()}.hf.space",
        backbone=f"{card.model.backbone.replace('efficientnet_lite', 'EfficientNet-Lite')} at {spec.crop} px",
        version=card.mlflow["version"],
        selection=f"{cv['folds']}-fold cross-validation ({cv['accuracy']:.1%})" if cv else "validation accuracy",
        test_images=test["images"],
        accuracy=f"{test['accuracy']:.1%}",
        cats=f"{test['per_species'].get('cat', float('nan')):.1%} of {per_species['cat']} photos",
        dogs=f"{test['per_species'].get('dog', float('nan')):.1%} of {per_species['dog']}",
        top5=f"{test['top5_accuracy']:.1%}",
        mean_per_class=f"{test['mean_per_class_accuracy']:.1%}"
        if "mean_per_class_accuracy" in test
        else "not measured",
        breeds=len(test["per_class"]),
        weakest=", ".join(f"{readable_name(name)} {value:.0%} ({photos[name]} photos)" for name, value in weakest),
        ece=f"{test['ece']:.1%}",
        dog_limits=dog_limits(card),
        how_answered=how_answered(card),
        no_pet=no_pet_sentence(card),
        extra_data=STANFORD_DOGS.format(extra=extra) if (extra := card.data["images"].get("extra")) else "",
    )


STANFORD_DOGS = (  # a card from before extra training folders retired (6346004) that counts them: their terms
    "It also trained on {extra} extra dog photos from Stanford Dogs (A. Khosla, N. Jayadevaprakash, B. Yao,"
    ' L. Fei-Fei, "Novel Dataset for Fine-Grained Image Categorization", FGVC 2011), whose images come from'
    " ImageNet and may be used for non-commercial research and education only. "
)


def dog_limits(card: ModelCard) -> str:
    """The page's word on dogs: what the answer keeps of the ImageNet network the model started from, how much
    of that network's knowledge of the dog breeds ImageNet has it still shows, and where it is weakest."""
    retained = card.metrics.get("retention")
    if card.expert:
        said = (
            "Dogs are named by the dog expert, whose ImageNet network was never retrained, so what it learnt of "
            "the 22 dog breeds ImageNet has (about 1,300 photos each) stays in the answer"
        )
    else:
        said = (
            "It learnt the dog breeds from those few photos on top of an ImageNet network, which had learnt "
            "22 of them from about 1,300 photos each"
        )
    return f"{said}. {stanford_retention(retained, 'the ImageNet network')} " if retained else f"{said}. "


def build_space(root: Path, files: list[Path], card: ModelCard, space_id: str | None, out: Path) -> list[Path]:
    """Exactly the tree to upload, in `out`: the Space's files and its README; returns its files."""
    for path in files:
        (out / path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / path, out / path)
    labels = json.loads((root / "model" / "labels.json").read_text())
    (out / "README.md").write_text(space_readme(card, labels, space_id))
    return [*files, Path("README.md")]


def dry_run_report(root: Path, files: list[Path], gate: PublishGate, out: Path) -> int:
    """Files as `path<TAB>bytes`, the commit message, then the verdict; the Space's current model is not
    compared (that needs its token)."""
    try:
        card = validate(root / "model", gate, None)
        for path in build_space(root, files, card, None, out):
            print(f"{path.as_posix()}\t{(out / path).stat().st_size}")
        print(commit_message(card))
        check_space_config(out)
    except (GateError, ModelError) as error:
        print(f"gate: FAILED: {error}")
        return 1
    print("gate: passed (the Space's current model was not compared: dry run)")
    return 0


def publish(
    space_id: str | None, dry_run: bool, root: Path = REPO, gate: PublishGate | None = None, out: Path | None = None
) -> int:
    gate = gate or Gates.load().publish
    files = space_files(root, load_space_files())
    token = os.environ.get("HF_TOKEN")
    if dry_run:
        with tempfile.TemporaryDirectory() as scratch:
            return dry_run_report(root, files, gate, Path(out or scratch))
    if not space_id:
        raise GateError("Say which Space: --space-id owner/name or HF_SPACE_ID.")
    if not token:
        raise GateError("HF_TOKEN is not set: a write token for the Space is needed.")
    card = validate(root / "model", gate, served_card(space_id, token))
    from huggingface_hub import HfApi

    with tempfile.TemporaryDirectory() as scratch:
        tree = Path(scratch)
        files = build_space(root, files, card, space_id, tree)
        check_space_config(tree)
        api = HfApi(token=token)
        api.create_repo(space_id, repo_type="space", space_sdk="gradio", exist_ok=True)
        info = api.upload_folder(
            repo_id=space_id,
            repo_type="space",
            folder_path=tree,
            commit_message=commit_message(card),
            delete_patterns=["model/**", "examples/**"],
        )
    print(f"published {len(files)} files to {space_id}: {info.commit_url}", file=sys.stderr)
    return 0
