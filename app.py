"""Pet breed recognition: one Gradio app around the ONNX classifier in model/.

    python app.py          # serves on http://127.0.0.1:7860 (GRADIO_SERVER_NAME / GRADIO_SERVER_PORT)

Every action is a named API endpoint; see README.md for a `gradio_client` example.
"""

from __future__ import annotations

import base64
import functools
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # privacy by default: set it to True to opt in
import gradio as gr
from gradio.components.label import LabelConfidence, LabelData
from PIL import Image

import preprocess
import transforms
from inference import ModelCard, PetClassifier, Prediction, overlay, readable_name

log = logging.getLogger("app")

HERE = Path(__file__).parent
EXAMPLES = sorted(str(path) for path in (HERE / "examples").glob("*.jpg"))
MAX_FILE_SIZE = "20mb"
MAX_BATCH_FILES = 32
NOT_SURE = "Not sure"  # /predict's label when the top-1 probability is below the card's threshold
# Gradio keeps, per session, a copy of every component's config (~100 KB for this app's 64 blocks) and
# evicts the oldest only past this many sessions; each REST call is a new session. The app keeps no
# per-session state of its own (no gr.State), so an evicted session just starts afresh. (README, "Memory")
SESSION_CAPACITY = int(os.environ.get("PETS_SESSION_CAPACITY", "100"))
# Uploaded photos and result images are files in Gradio's cache: every 10 minutes, those over an hour old go.
DELETE_CACHE = (600, 3600)

classifier = PetClassifier.load()


class ImageUpload(gr.Image):
    """An image input that hands the uploaded file to `preprocess.load_image` untouched, so that every
    bad upload (non-image, truncated, bomb) gets the loader's specific message, not a decoder crash."""

    is_template = True  # rendered by the frontend's own Image component

    def preprocess(self, payload: Any) -> str | bytes | None:
        if payload is None:
            return None
        if payload.path is None and payload.url and payload.url.startswith("data:"):
            return base64.b64decode(payload.url.split(",", 1)[1])
        return payload.path


class BreedLabel(gr.Label):
    """A label whose headline reads "Not sure" below the calibrated threshold, the top-5 staying in
    `confidences`: API clients see the flag the page shows."""

    is_template = True  # rendered by the frontend's own Label component

    def postprocess(self, value: Prediction | None) -> LabelData | dict:
        if not isinstance(value, Prediction):
            return super().postprocess(value)
        confidences = [LabelConfidence(label=name, confidence=p) for name, p in value.top]
        return LabelData(label=NOT_SURE if value.not_sure else value.top[0][0], confidences=confidences)


def user_errors(fn: Callable) -> Callable:
    """Turn the loader's and transforms' errors into a `gr.Error` the user sees; never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any) -> Any:
        try:
            return fn(*args)
        except preprocess.PreprocessError as error:
            raise gr.Error(str(error)) from None
        except gr.Error:
            raise
        except Exception:
            log.exception("unexpected error in %s", fn.__name__)
            raise gr.Error("Something went wrong while processing this request; please try another image.") from None

    return wrapper


def _require(image: Any) -> Image.Image:
    if image is None:
        raise gr.Error("Upload a photo first.")
    return preprocess.load_image(image)


# --------------------------------------------------------------------------- prediction


@user_errors
def identify(image: Any) -> tuple[Prediction, str, dict, Image.Image]:
    """The Identify button: one decode and one model run (logits and CAM) feed the label, the summary
    line, the JSON details and the heatmap."""
    photo = _require(image)
    prediction, heat = classifier.explain(photo)
    return prediction, summary_line(prediction), prediction.as_details(), overlay(photo, heat)


@user_errors
def predict(image: Any) -> Prediction:
    """The five most likely breeds with their probabilities; the label reads "Not sure" when unsure."""
    return classifier.predict(_require(image))


@user_errors
def predict_details(image: Any) -> dict:
    """Top-5, species, and whether the model is unsure the photo shows one of its 37 breeds."""
    return classifier.predict(_require(image)).as_details()


@user_errors
def explain(image: Any) -> Image.Image:
    """The photo with a heatmap of where the evidence for the top-1 breed lies."""
    photo = _require(image)
    return overlay(photo, classifier.explain(photo)[1])


def summary_line(prediction: Prediction) -> str:
    """The line under the label: the species, or a "not sure" warning below the calibrated threshold."""
    breed, confidence = prediction.top[0]
    if prediction.not_sure:
        return (
            f"**Not sure** ({confidence:.0%}): this photo may not show one of the 37 breeds this model "
            "knows, or not clearly. The closest matches are listed anyway."
        )
    return f"Looks like a **{prediction.species}**: most likely a {breed} ({confidence:.0%})."


@user_errors
def predict_batch(files: list[Any] | None) -> list[list[Any]]:
    """One row per file: file, top-1 breed, its probability, the top-5; unreadable files say why."""
    files = files or []
    if len(files) > MAX_BATCH_FILES:
        raise gr.Error(f"At most {MAX_BATCH_FILES} files per batch, got {len(files)}.")
    rows: dict[int, list[Any]] = {}
    images: dict[int, Image.Image] = {}
    paths = [Path(getattr(file, "name", file)) for file in files]
    names = [path.name for path in paths]
    for i, path in enumerate(paths):
        try:
            images[i] = preprocess.load_image(path)
        except preprocess.PreprocessError as error:
            rows[i] = [names[i], "", None, f"error: {error}"]
    for i, prediction in zip(images, classifier.predict_batch(list(images.values())), strict=True):
        top1, probability = prediction.top[0]
        rows[i] = [names[i], top1, round(probability, 4), ", ".join(f"{n} ({p:.1%})" for n, p in prediction.top)]
    return [rows[i] for i in range(len(files))]


def model_runs() -> int:
    """How many times the model has run in this process (bench and tests: one Identify click, one run)."""
    return classifier.runs


def classes() -> list[dict[str, str]]:
    """The 37 breeds the model knows: dataset label, readable name and species."""
    return [
        {"label": label, "name": readable_name(label), "species": species}
        for label, species in zip(classifier.labels, classifier.species, strict=True)
    ]


# --------------------------------------------------------------------------- transforms


def transform_endpoint(transform: transforms.Transform) -> Callable:
    """An endpoint for one transform: the image first, then the transform's parameters in table order."""

    @user_errors
    def run(image: Any, *params: Any) -> Image.Image:
        return transform(_require(image), *(None if p == "" else p for p in params))

    run.__name__, run.__doc__ = transform.name, transform.summary
    return run


@user_errors
def pipeline(image: Any, steps: str) -> Image.Image:
    """Apply a JSON list of steps, e.g. [{"op": "resize", "width": 256}, {"op": "grayscale"}]."""
    return transforms.pipeline(_require(image), steps)


def control(param: transforms.Param) -> gr.components.Component:
    """The input for one transform parameter, labelled with its range from the table."""
    if param.kind is bool:
        return gr.Checkbox(label=param.name, value=param.default)
    if param.choices:
        return gr.Radio(list(param.choices), value=param.default, label=param.name)
    value = param.example if param.example is not None else param.default
    return gr.Number(label=param.describe(), value=None if value is transforms.REQUIRED else value)


# --------------------------------------------------------------------------- the model card


def selection_row(card: ModelCard) -> str:
    """The table row of what the model was selected on: k-fold cross-validation or a validation split."""
    if "cv" in card.metrics:
        cv = card.metrics["cv"]
        return (
            f"| {cv['folds']}-fold cross-validation (trainval) | {card.data['images']['train']} | "
            f"{cv['accuracy']:.1%} ± {cv['accuracy_std']:.1%} | {cv['top5_accuracy']:.1%} |"
        )
    val = card.metrics["val"]
    return f"| validation | {card.data['images']['val']} | {val['accuracy']:.1%} | {val['top5_accuracy']:.1%} |"


def trust_text(card: ModelCard) -> str:
    """Test accuracy per species, calibration and "not sure", once `select` has tested and calibrated."""
    if "test" not in card.metrics or not card.calibration or not card.not_sure:
        return "Not tested or calibrated yet (`python -m train select`): confidences are raw softmax."
    test, calibration, not_sure = card.metrics["test"], card.calibration, card.not_sure
    species = ", ".join(f"{k} {v:.1%}" for k, v in test["per_species"].items())
    return (
        f"Test accuracy per species: {species}. Confidences are temperature-scaled (T = "
        f"{calibration['temperature']:.2f}, fitted on {calibration['fitted_on']} predictions): test ECE "
        f"{test['ece_uncalibrated']:.1%} → {test['ece']:.1%}. Below {not_sure['threshold']:.0%} the answer is "
        f"marked *not sure* ({test['not_sure_rate']:.0%} of test photos; {not_sure['non_pet']['rate']:.0%} of "
        "non-pet images)."
    )


def card_markdown(card: ModelCard) -> str:
    spec, model, test = card.preprocess, card.model, card.metrics.get("test")
    training = "fine-tuned end to end" if model.end_to_end else f"fine-tuned layers {model.finetune_blocks}"
    return "\n".join(
        [
            f"- **Backbone** `{model.backbone}` · head `{model.head}` · {training} · serving the "
            f"**{classifier.variant}** model ({classifier.model_file.stat().st_size / 1e6:.1f} MB)",
            f"- **Input** shorter side {spec.resize_shorter} px, centre crop {spec.crop} px",
            f"- **MLflow** `{card.mlflow['registered_model']}` version {card.mlflow['version']} "
            f"(alias `{card.mlflow['alias']}`), run `{card.mlflow['run_id']}`",
            "",
            "| split | images | top-1 | top-5 |",
            "|---|---|---|---|",
            selection_row(card),
            f"| test | {test['images']} | {test['accuracy']:.1%} | {test['top5_accuracy']:.1%} |" if test else "",
            "",
            trust_text(card),
            f"Data digest `{card.data['digest'][:12]}`; listed images missing from this copy, skipped: "
            f"{card.data['missing']}.",
        ]
    )


def per_class_rows(card: ModelCard) -> list[list[Any]]:
    per_class = card.metrics.get("test", {}).get("per_class", {})
    return [[readable_name(k), round(v, 3)] for k, v in sorted(per_class.items(), key=lambda item: item[1])]


def confusion_image(card: ModelCard) -> str | None:
    name = card.metrics.get("test", {}).get("confusion_matrix")
    return str(classifier.model_file.parent / name) if name else None


# --------------------------------------------------------------------------- the app


with gr.Blocks(title="Pet breed recognition", delete_cache=DELETE_CACHE) as demo:
    gr.Markdown("# 🐾 Pet breed recognition\nThe breed of a cat or dog in a photo, among the 37 of Oxford-IIIT Pet.")
    with gr.Tab("Identify"):
        with gr.Row():
            photo = ImageUpload(
                label="Photo", sources=["upload", "webcam", "clipboard"], type="filepath", elem_id="photo"
            )
            with gr.Column():
                breeds = BreedLabel(label="Top 5 breeds", num_top_classes=5, elem_id="breeds")
                summary = gr.Markdown(elem_id="summary")
            heatmap = gr.Image(
                label="What it looked at (class activation map)", type="pil", format="jpeg", elem_id="heatmap"
            )
        identify_button = gr.Button("Identify", variant="primary")
        gr.Examples(EXAMPLES, inputs=photo)
        with gr.Accordion("Details as JSON", open=False):
            details = gr.JSON()
        with gr.Accordion("Several photos at once", open=False):
            files = gr.File(file_count="multiple", label="Photos")
            table = gr.Dataframe(headers=["file", "top-1", "probability", "top-5"], label="Predictions")
            gr.Button("Identify all").click(predict_batch, files, table, api_name="predict_batch")
    identify_button.click(identify, photo, [breeds, summary, details, heatmap], api_name="identify")
    for fn, output in ((predict, breeds), (predict_details, details), (explain, heatmap)):  # API only
        gr.Button(visible=False).click(fn, photo, output, api_name=fn.__name__)
    if os.environ.get("PETS_BENCH_NOOP") == "1":  # the floor for bench/latency.py: same upload, no work
        gr.Button(visible=False).click(lambda image: "ok", photo, gr.Textbox(visible=False), api_name="noop")
        gr.api(model_runs, api_name="model_runs")

    with gr.Tab("Transform"):
        with gr.Row():
            source = ImageUpload(label="Image", type="filepath", elem_id="transform-source")
            result = gr.Image(label="Result", type="pil", format="png", elem_id="transform-result")
        for name, transform in transforms.TRANSFORMS.items():
            with gr.Tab(name):
                controls = [control(param) for param in transform.params]
                gr.Button(f"Apply {name}").click(
                    transform_endpoint(transform), [source, *controls], result, api_name=name
                )
        with gr.Tab("pipeline"):
            steps = gr.Code(json.dumps([{"op": "resize", "width": 256}, {"op": "grayscale"}]), language="json")
            gr.Button("Apply pipeline").click(pipeline, [source, steps], result, api_name="pipeline")

    with gr.Tab("Model"):
        gr.Markdown(card_markdown(classifier.card), elem_id="card")
        with gr.Row():
            gr.Dataframe(per_class_rows(classifier.card), headers=["breed", "test accuracy"], label="Per class")
            gr.Image(confusion_image(classifier.card), label="Test confusion matrix")
        with gr.Accordion("The 37 breeds", open=False):
            gr.JSON(classes())
        gr.api(classes, api_name="classes")

# Two requests at a time on the Space's 2 vCPUs, up to 64 waiting: chosen with bench/load.py (README).
demo.queue(default_concurrency_limit=int(os.environ.get("PETS_CONCURRENCY", "2")), max_size=64)


def launch(**overrides: Any) -> None:
    """Serve the app with its limits: upload size, session capacity, no tracebacks to users."""
    demo.launch(
        **{
            "server_name": os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
            "server_port": int(os.environ.get("GRADIO_SERVER_PORT", "7860")),
            "max_file_size": MAX_FILE_SIZE,
            "state_session_capacity": SESSION_CAPACITY,
            "show_error": False,
        }
        | overrides
    )


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    launch()
