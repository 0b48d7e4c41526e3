"""python -m train publish: the promotion gate, the exact file list, and valid workflows.
The Hugging Face Hub cannot be reached here: the upload itself stays a thin call covered by the dry run."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO
from train.shipping.gates import Gates, PublishGate, publish_failure
from train.shipping.publish import GateError, publish, validate

SPACE_TOP_LEVEL = {
    "app.py",
    "gradio_patches.py",
    "inference.py",
    "limits.py",
    "preprocess.py",
    "transforms.py",
    "requirements.txt",
    "README.md",
}


@pytest.fixture
def space_copy(tmp_path: Path) -> Path:
    """The repository's Space files plus things that must never be uploaded."""
    for name in SPACE_TOP_LEVEL:
        shutil.copy(REPO / name, tmp_path / name)
    for folder in ("model", "examples"):
        shutil.copytree(REPO / folder, tmp_path / folder)
    for stray in (
        "train/experiments/fit.py",
        "tests/test_x.py",
        "mlflow.db",
        "mlruns/0/meta.yaml",
        ".env",
        "model/__pycache__/x.pyc",
    ):
        (tmp_path / stray).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / stray).write_text("secret")
    return tmp_path


def set_test_accuracy(root: Path, accuracy: float) -> None:
    card = json.loads((root / "model" / "card.json").read_text())
    card["metrics"]["test"]["accuracy"] = accuracy
    (root / "model" / "card.json").write_text(json.dumps(card))


def config(threshold: float = 0.5, regression: float = 0.01) -> PublishGate:
    return PublishGate(threshold, regression)


def test_dry_run_lists_exactly_the_space_files(space_copy: Path, capsys: pytest.CaptureFixture) -> None:
    set_test_accuracy(space_copy, 0.99)
    assert publish(None, dry_run=True, root=space_copy) == 0
    lines = capsys.readouterr().out.splitlines()
    listed = dict(line.split("\t") for line in lines[:-2])
    expected = SPACE_TOP_LEVEL | {
        p.relative_to(space_copy).as_posix()
        for folder in ("model", "examples")
        for p in (space_copy / folder).rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }
    assert set(listed) == expected
    sizes = {path: int(size) for path, size in listed.items() if path != "README.md"}  # README: the Space's own
    assert all(size == (space_copy / path).stat().st_size for path, size in sizes.items())
    assert lines[-2].startswith("Deploy ") and "pet-breed-classifier version" in lines[-2]
    assert lines[-1].startswith("gate: passed")


def test_dry_run_reports_a_failed_gate(space_copy: Path, capsys: pytest.CaptureFixture) -> None:
    set_test_accuracy(space_copy, 0.10)
    assert publish(None, dry_run=True, root=space_copy) == 1
    assert "gate: FAILED: Test accuracy 0.1000 is below the threshold" in capsys.readouterr().out


def test_gate_refuses_a_card_below_the_threshold(space_copy: Path) -> None:
    set_test_accuracy(space_copy, 0.80)
    with pytest.raises(GateError, match="0.8000 is below the threshold 0.9000"):
        validate(space_copy / "model", config(threshold=0.9), None)


def test_gate_refuses_a_model_whose_sha256_does_not_match(space_copy: Path) -> None:
    with open(space_copy / "model" / "model.onnx", "ab") as handle:
        handle.write(b"tampered")
    with pytest.raises(GateError, match="sha256"):
        validate(space_copy / "model", config(), None)


def test_gate_refuses_a_labels_count_mismatch(space_copy: Path) -> None:
    (space_copy / "model" / "labels.json").write_text('["a", "b"]')
    with pytest.raises(GateError, match="37 species but labels.json lists 2 classes"):
        validate(space_copy / "model", config(), None)


def test_gate_compares_with_what_the_space_serves(space_copy: Path) -> None:
    set_test_accuracy(space_copy, 0.90)
    served = {"metrics": {"test": {"accuracy": 0.95}}}
    with pytest.raises(GateError, match="more than 0.0100 below the 0.9500 the Space serves now"):
        validate(space_copy / "model", config(), served)
    assert validate(space_copy / "model", config(), {"metrics": {"test": {"accuracy": 0.905}}})
    assert validate(space_copy / "model", config(), None)  # no Space yet: nothing to compare


def test_publish_needs_a_space_and_a_token(space_copy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_TOKEN", raising=False)
    with pytest.raises(GateError, match="Say which Space"):
        publish(None, dry_run=False, root=space_copy)
    with pytest.raises(GateError, match="HF_TOKEN is not set"):
        publish("someone/pets", dry_run=False, root=space_copy)


def test_a_dog_expert_without_its_no_cat_or_dog_answer_is_not_published(space_copy: Path) -> None:
    """select and expert drop the "no cat or dog" entry (its threshold is fitted to the pair they replace):
    the Space must not lose the answer because no-pet was not run again."""
    card = json.loads((space_copy / "model" / "card.json").read_text())
    (space_copy / "model" / "card.json").write_text(json.dumps({k: v for k, v in card.items() if k != "no_pet"}))
    with pytest.raises(GateError, match="no 'no cat or dog' answer: run python -m train no-pet"):
        validate(space_copy / "model", Gates.load().publish, None)


def test_publish_imports_no_torch() -> None:
    code = "import sys, train.__main__, train.shipping.publish; print('torch' in sys.modules)"
    assert (
        subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True).stdout.strip() == "False"
    )


def test_workflows_are_valid() -> None:
    actionlint = shutil.which("actionlint", path=str(Path(sys.executable).parent))
    assert actionlint, "actionlint is installed by requirements-dev.txt"
    workflows = sorted(str(p) for p in (REPO / ".github" / "workflows").glob("*.yml"))
    assert len(workflows) == 2
    done = subprocess.run([actionlint, *workflows], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_deploy_runs_only_after_ci_passed_on_main_with_least_privilege() -> None:
    import yaml

    deploy = yaml.safe_load((REPO / ".github" / "workflows" / "deploy.yml").read_text())
    ci = yaml.safe_load((REPO / ".github" / "workflows" / "ci.yml").read_text())
    triggers = deploy[True]  # YAML 1.1 reads the key `on` as a boolean
    assert set(triggers) == {"workflow_run", "workflow_dispatch"}
    assert triggers["workflow_run"] == {"workflows": [ci["name"]], "types": ["completed"], "branches": ["main"]}
    assert deploy["permissions"] == {"contents": "read"} and deploy["concurrency"]["cancel-in-progress"] is False
    (job,) = deploy["jobs"].values()  # one job: publishing; the tests ran in CI
    assert "conclusion == 'success'" in job["if"] and job["environment"] == "huggingface"
    assert not any("pytest" in step.get("run", "") for step in job["steps"])


def test_the_shipped_model_passes_the_committed_gate() -> None:
    """Otherwise every merge to main would fail to deploy."""
    assert validate(REPO / "model", Gates.load().publish, None).mlflow["alias"] == "champion"


def test_gates_file_names_a_missing_key(tmp_path: Path) -> None:
    from train.learning.config import ConfigError

    text = (REPO / "train" / "configs" / "gates.toml").read_text().replace("max_regression", "max_regresion")
    (tmp_path / "gates.toml").write_text(text)
    with pytest.raises(
        ConfigError, match=r"\[publish\] missing key\(s\) \['max_regression'\], unknown key\(s\) \['max_regresion'\]"
    ):
        Gates.load(tmp_path / "gates.toml")


def test_publish_gate_function() -> None:
    gate = PublishGate(min_test_accuracy=0.9, max_regression=0.005)

    def metrics(accuracy: float, mean: float | None = None) -> dict:
        return {"accuracy": accuracy} | ({"mean_per_class_accuracy": mean} if mean is not None else {})

    assert (
        publish_failure(metrics(0.91), None, gate) is None
        and publish_failure(metrics(0.91), metrics(0.914), gate) is None
    )
    assert "below the threshold" in publish_failure(metrics(0.89), None, gate)
    assert "below the 0.9200 the Space serves now" in publish_failure(metrics(0.91), metrics(0.92), gate)
    assert "no test accuracy" in publish_failure(None, None, gate)
    # a model as good on top-1 but worse over breeds is refused; a served card without the mean is no bar
    assert "Mean per-class test accuracy 0.8500" in publish_failure(metrics(0.92, 0.85), metrics(0.92, 0.88), gate)
    assert publish_failure(metrics(0.92, 0.85), metrics(0.92), gate) is None
    # figures measured on other photos are not compared; a served card that predates digests still is
    on = lambda digest: metrics(0.92) | {"data_digest": digest}  # noqa: E731
    assert "tested on different photos" in publish_failure(on("a"), on("b"), gate)
    assert publish_failure(on("a"), on("a"), gate) is None and publish_failure(on("a"), metrics(0.92), gate) is None


def set_front_matter(readme: Path, old: str, new: str) -> None:
    assert old in readme.read_text()
    readme.write_text(readme.read_text().replace(old, new, 1))


@pytest.fixture
def space_tree(space_copy: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What the dry run materialises: the Space's files and the README written for it."""
    out = tmp_path_factory.mktemp("space")
    set_test_accuracy(space_copy, 0.99)
    assert publish(None, dry_run=True, root=space_copy, out=out) == 0
    return out


def test_the_front_matter_is_what_spaces_need(space_tree: Path) -> None:
    from train.shipping.space_config import problems

    assert problems(space_tree) == []


def test_a_python_without_wheels_for_the_pins_fails(space_tree: Path) -> None:
    from train.shipping.space_config import problems

    set_front_matter(space_tree / "README.md", 'python_version: "3.11"', 'python_version: "3.8"')
    found = problems(space_tree)
    assert any(p.startswith("numpy==") and "no wheel for Python 3.8" in p for p in found), found


def test_front_matter_mistakes_are_named(
    space_copy: Path, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    import train.shipping.publish
    from train.shipping.space_config import problems

    template = tmp_path / "space_readme.md"
    shutil.copy(train.shipping.publish.SPACE_README, template)
    set_front_matter(template, "colorTo: indigo", "colorTo: teal")
    set_front_matter(template, "sdk_version: 6.31.0", "sdk_version: 5.0.0")
    set_front_matter(template, "license: mit", "license: MIT License")
    set_front_matter(template, "short_description: ", "short_description: " + "very " * 12)
    monkeypatch.setattr(train.shipping.publish, "SPACE_README", template)
    set_test_accuracy(space_copy, 0.99)
    out = tmp_path / "space"
    assert publish(None, dry_run=True, root=space_copy, out=out) == 1
    assert "gate: FAILED: The Space would not build as tested" in capsys.readouterr().out
    found = problems(out, check_wheels=False)
    assert len(found) == 4 and "colorTo 'teal'" in found[1] and "differs from gradio==6.31.0" in found[0], found


def test_the_space_readme_is_written_for_visitors_from_the_card(space_tree: Path) -> None:
    readme = (space_tree / "README.md").read_text()
    card = json.loads((space_tree / "model" / "card.json").read_text())
    assert "Use it from Python" in readme and "CC BY-SA 4.0" in readme and "../shared" not in readme
    assert f"**{card['metrics']['test']['accuracy']:.1%} top-1**" in readme
    assert "python -m train" not in readme  # no training instructions for visitors


def test_the_space_page_gives_photo_counts_and_names_extra_data_only_when_used() -> None:
    from dataclasses import replace

    from inference import ModelCard
    from train.shipping.publish import space_readme

    card = ModelCard.load(REPO / "model" / "card.json")
    labels = json.loads((REPO / "model" / "labels.json").read_text())
    test = card.metrics["test"]
    cats = sum(sum(row) for row, kind in zip(test["confusion"], card.species, strict=True) if kind == "cat")
    page = space_readme(card, labels, None)
    assert f"cats {test['per_species']['cat']:.1%} of {cats} photos" in page
    assert "American Pit Bull Terrier" not in page.split("The weakest")[1].split(";")[0]  # 1 photo: not judged
    assert "extra dog photos from Stanford Dogs" not in page and "non-commercial" not in page
    with_extra = replace(card, data=card.data | {"images": card.data["images"] | {"extra": 2677}})
    page = space_readme(with_extra, labels, None)  # a card from before extra training folders retired
    assert "2677 extra dog photos from Stanford Dogs" in page and "non-commercial research and education" in page


def test_dry_run_materialises_exactly_the_upload(space_copy: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    out = tmp_path_factory.mktemp("space")
    set_test_accuracy(space_copy, 0.99)
    assert publish(None, dry_run=True, root=space_copy, out=out) == 0
    uploaded = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert "app.py" in uploaded and "model/model.onnx" in uploaded and not {"mlflow.db", ".env"} & uploaded
    assert not any(name.startswith(("train/", "tests/", "mlruns/")) for name in uploaded)


def test_the_space_page_says_what_the_model_keeps_of_imagenet_about_dogs() -> None:
    from dataclasses import replace

    from inference import ModelCard, stanford_retention
    from train.shipping.publish import space_readme

    card = ModelCard.load(REPO / "model" / "card.json")
    labels = json.loads((REPO / "model" / "labels.json").read_text())
    untaught = replace(
        card, model=replace(card.model, teacher=None), expert=None, metrics=card.metrics | {"retention": None}
    )
    assert "(ImageNet's own)" not in space_readme(untaught, labels, None)
    per_breed = {"beagle": {"student": 0.97}, "chihuahua": {"student": 0.81}, "pug": {"student": 0.99}}
    retained = {"student": 0.934, "teacher": 0.951, "photos": 2682.0, "per_breed": per_breed}
    retained |= {"folder": "stanford-dogs-extra"}
    measured = replace(untaught, metrics=card.metrics | {"retention": retained})
    page = space_readme(measured, labels, None)
    assert "learnt 22 of them from about 1,300 photos each" in page
    said = "on 2682 Stanford Dogs photos of 3 breeds (ImageNet's own): this model 93.4%, the ImageNet network 95.1%"
    assert said in page
    shipped = space_readme(card, labels, None)  # with the dog expert: it says how a photo is answered
    assert "goes on to the dog expert" in shipped and "Dogs are named by the dog expert" in shipped
    assert "weakest there: Chihuahua 81%, Beagle 97%, Pug 99%." in page
    assert stanford_retention(retained, "the ImageNet network") in page  # the Model tab's sentence
