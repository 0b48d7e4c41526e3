"""Pet breed recognition: one Gradio app around the ONNX classifier in model/.

    python app.py          # serves on http://127.0.0.1:7860 (GRADIO_SERVER_NAME / GRADIO_SERVER_PORT)

Every action is a named API endpoint; see README.md for a `gradio_client` example
and docs/api.md for all of them.
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # privacy by default: set it to True to opt in
# Gradio's queue keeps a record of the last 10000 events and, after every one, rebuilds a pandas summary of
# them for its monitoring page: a profile of REST /predict found a fifth of the worker threads' time there,
# growing with the records. This app has no use for it: keep 200, summarised every 100 events.
os.environ.setdefault("GRADIO_ANALYTICS_MAX_EVENTS", "200")
os.environ.setdefault("GRADIO_ANALYTICS_CACHE_FREQUENCY", "100")
import gradio as gr
from gradio.components.label import LabelConfidence, LabelData
from gradio.route_utils import FnIndexInferError
from PIL import Image

import gradio_patches
import limits
import preprocess
import transforms
from inference import (
    FASTER_BY,
    FEW_TEST_PHOTOS,
    ModelCard,
    ModelError,
    PetClassifier,
    Prediction,
    how_answered,
    no_pet_sentence,
    overlay,
    readable_name,
    retention_sentence,
    stanford_retention,
)

log = logging.getLogger("app")

HERE = Path(__file__).parent
EXAMPLES = sorted(str(path) for path in (HERE / "examples").glob("*.jpg"))
MAX_FILE_SIZE = "20mb"
MAX_BODY_BYTES = 20_000_000  # any request body: a data URL in a JSON call is held to the upload limit
MAX_BATCH_FILES = 32  # files per batch and per upload request
# Waiting or running requests one visitor (session or address) may hold; 0 lifts the limit (all of a laptop's
# own scripts come from one address).
MAX_QUEUED_PER_CLIENT = int(os.environ.get("PETS_MAX_QUEUED_PER_VISITOR", "4"))
try:  # who the visitor is: the socket's peer, or behind proxies an X-Forwarded-For entry (limits.visitor)
    TRUSTED_PROXIES = limits.trusted_proxies()
except ValueError as error:
    raise SystemExit(str(error)) from None
NOT_SURE = "Not sure"  # /predict's label when the top-1 probability is below the card's threshold
NO_PET = "No cat or dog"  # /predict's label when the ImageNet network sees neither (the card's `no_pet`)
# Gradio keeps a state per session (each REST call is a new one; gradio_patches.LazySessionState keeps it ~8 KB) and
# evicts the oldest only past this many sessions. The app keeps no per-session state of its own (no
# gr.State), so an evicted session just starts afresh. (docs/operations.md, "Memory")
SESSION_CAPACITY = int(os.environ.get("PETS_SESSION_CAPACITY", "100"))
# Uploaded photos and result images are files in Gradio's cache: every 10 minutes, those over an hour old go.
DELETE_CACHE = (600, 3600)

try:  # a model folder that serving would refuse (a file missing, a checksum off) stops the start in one line
    classifier = PetClassifier.load()
except ModelError as error:
    raise SystemExit(f"error: {error}") from None


class ImageUpload(gr.Image):
    """An image input that hands the uploaded file to `preprocess.load_image` untouched, so that every
    bad upload (non-image, truncated, bomb) gets the loader's specific message, not a decoder crash."""

    is_template = True  # rendered by the frontend's own Image component

    def preprocess(self, payload: Any) -> str | bytes | None:
        if payload is None:
            return None
        if payload.path is None and payload.url and payload.url.startswith("data:"):
            return decode_data_url(payload.url)
        return payload.path


def decode_data_url(url: str) -> bytes:
    """The bytes of a `data:<type>;base64,<data>` URL, or a user error that says what is wrong with it."""
    header, comma, data = url.partition(",")
    if not comma or not header.endswith(";base64"):
        raise user_error("The image's data URL is malformed: expected data:image/<type>;base64,<data>.")
    try:
        return base64.b64decode(data, validate=True)
    except binascii.Error:
        raise user_error("The image's data URL is not valid base64.") from None


class BreedLabel(gr.Label):
    """A label whose headline reads "No cat or dog" where the ImageNet network sees neither, "Not sure" below
    the calibrated threshold, else the breed; the top-5 stays in `confidences`: API clients see what the
    page shows."""

    is_template = True  # rendered by the frontend's own Label component

    def postprocess(self, value: Prediction | None) -> LabelData | dict:
        if not isinstance(value, Prediction):
            return super().postprocess(value)
        confidences = [LabelConfidence(label=name, confidence=p) for name, p in value.top]
        return LabelData(label=headline(value), confidences=confidences)


def headline(prediction: Prediction) -> str:
    """/predict's label: "No cat or dog", "Not sure" or the breed, in that order of precedence."""
    if prediction.no_pet:
        return NO_PET
    return NOT_SURE if prediction.not_sure else prediction.top[0][0]


def user_error(message: str) -> gr.Error:
    """A `gr.Error` for a user's mistake: the user sees the message, the log gets one line, no traceback."""
    log.warning("user error: %s", message)
    return gr.Error(message, print_exception=False)


def endpoint(fn: Callable) -> Callable:
    """Every endpoint's wrapper: the loader's and transforms' errors become a `gr.Error` the user sees
    (one log line); an unexpected error keeps its traceback in the log but not in the answer. The error is
    raised outside the `except` block, so it carries no traceback into the request's frames: Gradio holds
    on to the error for a while, and those frames hold the decoded image. After each request the heap's
    free pages go back to the OS, so one large photo does not leave RSS high."""

    @functools.wraps(fn)
    def wrapper(*args: Any) -> Any:
        try:
            return fn(*args)
        except preprocess.PreprocessError as error:
            message = str(error)
        except Exception:
            log.exception("unexpected error in %s", fn.__name__)
            message = None
        finally:
            limits.trim_memory()
        if message is None:
            raise gr.Error("Something went wrong while processing this request; please try another image.")
        raise user_error(message)

    return wrapper


def _require(image: Any, for_model: bool = False) -> Image.Image:
    """The uploaded image decoded: at full size for transforms, no larger than needed for the model."""
    if image is None:
        raise preprocess.PreprocessError("Upload a photo first.")
    return preprocess.load_for_model(image, classifier.spec) if for_model else preprocess.load_image(image)


# --------------------------------------------------------------------------- prediction


@endpoint
def identify(image: Any) -> tuple[Prediction, str, dict, Image.Image]:
    """The Identify button: one decode and one run of each network (logits and CAM) feed the label, the summary
    line, the JSON details and the heatmap."""
    photo = _require(image, for_model=True)
    prediction, heat = classifier.explain(photo)
    return prediction, summary_line(prediction), prediction.as_details(), overlay(photo, heat)


def identify_example(selected: gr.SelectData) -> tuple[str, Prediction, str, dict, Image.Image]:
    """A click on an example photo: show it and identify it at once (one decode, one run of each network)."""
    path = EXAMPLES[selected.index]
    return (path, *identify(path))


@endpoint
def predict(image: Any) -> Prediction:
    """The five most likely breeds with their probabilities; the label reads "Not sure" when unsure."""
    return classifier.predict(_require(image, for_model=True))


@endpoint
def predict_details(image: Any) -> dict:
    """Top-5, species, and whether the model is unsure the photo shows one of its 37 breeds."""
    return classifier.predict(_require(image, for_model=True)).as_details()


@endpoint
def explain(image: Any) -> Image.Image:
    """The photo with a heatmap of where the evidence for the top-1 breed lies."""
    photo = _require(image, for_model=True)
    return overlay(photo, classifier.explain(photo)[1])


def summary_line(prediction: Prediction) -> str:
    """The line under the label: the species, a "no cat or dog" message, or a "not sure" warning below the
    calibrated threshold."""
    breed, confidence = prediction.top[0]
    if prediction.no_pet:
        saw = f" (it looks more like: {prediction.seen[0]})" if prediction.seen else ""
        return (
            f"**No cat or dog** here{saw}, as far as this model can tell. The closest breeds are listed anyway; "
            "try a photo of a cat or a dog."
        )
    if prediction.not_sure:
        return (
            f"**Not sure** ({confidence:.0%}): this photo may not show one of the 37 breeds this model "
            "knows, or not clearly. The closest matches are listed anyway."
        )
    return f"Looks like a **{prediction.species}**: most likely a {breed} ({confidence:.0%})."


@endpoint
def predict_batch(files: list[Any] | None) -> list[list[Any]]:
    """One row per file: file, top-1 breed, its probability, "not sure" or not, the top-5; unreadable files
    say why. One file is decoded, predicted and released at a time, so memory is one photo's, not 32."""
    files = files or []
    if len(files) > MAX_BATCH_FILES:
        raise preprocess.PreprocessError(f"At most {MAX_BATCH_FILES} files per batch, got {len(files)}.")
    return [batch_row(Path(getattr(file, "name", file))) for file in files]


def batch_row(path: Path) -> list[Any]:
    try:
        prediction = classifier.predict(preprocess.load_for_model(path, classifier.spec))
    except preprocess.PreprocessError as error:
        return [path.name, "", None, "", f"error: {error}"]
    top1, probability = prediction.top[0]
    sure = f"not sure (below {prediction.threshold:.0%})" if prediction.not_sure else "sure"
    sure = "no cat or dog" if prediction.no_pet else sure
    return [path.name, top1, round(probability, 4), sure, ", ".join(f"{n} ({p:.1%})" for n, p in prediction.top)]


def model_runs() -> int:
    """How many times the model has run in this process (bench and tests: one Identify click, one run)."""
    return classifier.runs


def serving() -> dict[str, Any]:
    """What this process serves: the variant, its intra-op threads and the start-up timings (bench)."""
    return {"variant": classifier.variant, "threads": classifier.threads, "timings": classifier.timings}


def classes() -> list[dict[str, str]]:
    """The 37 breeds the model knows: dataset label, readable name and species."""
    return [
        {"label": label, "name": readable_name(label), "species": species}
        for label, species in zip(classifier.labels, classifier.species, strict=True)
    ]


# --------------------------------------------------------------------------- transforms


def transform_endpoint(transform: transforms.Transform) -> Callable:
    """An endpoint for one transform: the image first, then the transform's parameters in table order."""

    @endpoint
    def run(image: Any, *values: Any) -> Image.Image:
        return transform(_require(image), *(p.from_text(v) for p, v in zip(transform.params, values, strict=True)))

    run.__name__, run.__doc__ = transform.name, transform.summary
    return run


@endpoint
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
    if param.optional_number:  # gr.Number shows and sends an empty value as 0: a text field can be empty
        return gr.Textbox(
            label=param.describe(), value="" if value is None else str(value), placeholder=param.note or "empty"
        )
    initial = None if value is transforms.REQUIRED else value
    return gr.Number(label=param.describe(), value=initial, precision=0 if param.kind is int else None)


# --------------------------------------------------------------------------- the model card


def selection_row(card: ModelCard) -> str:
    """The table row of what the model was selected on: k-fold cross-validation or a validation split."""
    if "cv" in card.metrics:
        cv = card.metrics["cv"]
        return (
            f"| {cv['folds']}-fold cross-validation (trainval) | {card.data['images']['train']} | "
            f"{cv['accuracy']:.1%} ± {cv['accuracy_std']:.1%} | {percent(cv.get('mean_per_class_accuracy'))} | "
            f"{cv['top5_accuracy']:.1%} |"
        )
    val = card.metrics["val"]
    return (
        f"| validation | {card.data['images']['val']} | {val['accuracy']:.1%} | "
        f"{percent(val.get('mean_per_class_accuracy'))} | {val['top5_accuracy']:.1%} |"
    )


def percent(value: float | None) -> str:
    return "—" if value is None else f"{value:.1%}"


def trust_text(card: ModelCard) -> str:
    """Test accuracy per species, calibration and "not sure", once `select` has tested and calibrated."""
    if "test" not in card.metrics or not card.calibration or not card.not_sure:
        return "Not tested or calibrated yet (`python -m train select`): confidences are raw softmax."
    test, calibration, not_sure = card.metrics["test"], card.calibration, card.not_sure
    counts = card.test_photos_per_species(classifier.labels) if test.get("confusion") else {}
    species = ", ".join(
        f"{kind}s {share:.1%}" + (f" ({counts[kind]} photos)" if counts else "")
        for kind, share in test["per_species"].items()
    )
    variant = classifier.variant
    served = card.int8["test"] if variant == "int8" else test
    return (
        f"Test accuracy per species: {species}. Confidences are temperature-scaled (T = "
        f"{card.temperature_of(variant):.2f} for the {variant} model{expert_temperature(card, variant)}, fitted on "
        f"{calibration['fitted_on']} predictions): test ECE {test['ece_uncalibrated']:.1%} → {served['ece']:.1%}. "
        f"Below {card.threshold_of(variant):.0%}{expert_threshold(card, variant)} the answer is marked *not sure* "
        f"({served.get('not_sure_rate', test['not_sure_rate']):.0%} of test photos; {not_sure['non_pet']['rate']:.0%} "
        "of non-pet images)."
    )


def expert_temperature(card: ModelCard, variant: str) -> str:
    return f", {card.expert_variant(variant)[2]:.2f} for the dog expert's" if card.expert else ""


def expert_threshold(card: ModelCard, variant: str) -> str:
    return f" (below {card.expert_variant(variant)[3]:.0%} for a dog the expert named)" if card.expert else ""


def teacher_text(card: ModelCard) -> str:
    """How the model learnt from the ImageNet network it started from, and how much of what that network knew
    about the dog breeds it has classes for the model still knows (retention), said of any model measured."""
    teacher, cv, retained = card.model.teacher, card.metrics.get("cv", {}), card.metrics.get("retention")
    parts = [f"The untouched ImageNet network (the teacher): {distilled_text(teacher)}."] if teacher else []
    network = "the teacher" if teacher else "the ImageNet network it started from"
    if cv.get("retention_photos"):
        where = f"{cv['retention_photos']:.0f} held-out Oxford dog photos (cross-validation)"
        parts.append(retention_sentence(where, cv["retention_student"], network, cv["retention_teacher"]))
    if retained and retained["photos"]:
        parts.append(stanford_retention(retained, network))
    return " ".join(parts)


def distilled_text(teacher: dict) -> str:
    if not teacher["distill_weight"]:
        return "not distilled"
    weight, temperature = teacher["distill_weight"], teacher["distill_temperature"]
    return f"its dog rows distilled on dog photos (weight {weight:g}, T = {temperature:g})"


def missing_sentence(card: ModelCard) -> str:
    missing = card.data["missing"]
    if not any(missing.values()):
        return "Every image the dataset lists was present."
    parts = " and ".join(f"{count:,} {split}" for split, count in missing.items() if count)
    return f"This copy of the dataset lacks {parts} images that the official lists name; they were skipped."


def int8_row(card: ModelCard) -> str:
    """The int8 model's test numbers, where it ships beside fp32 (its gate is fidelity to fp32 on trainval)."""
    if "int8" not in card.variants() or "test" not in card.int8 or "test" not in card.metrics:
        return ""
    test = card.int8["test"]
    return (
        f"| test, int8 | {card.metrics['test']['images']} | {test['accuracy']:.1%} | "
        f"{percent(test.get('mean_per_class_accuracy'))} | {test['top5_accuracy']:.1%} |"
    )


def routing_text(card: ModelCard) -> str:
    """How often the breed model sent a test photo to the right model, where the card measured it."""
    routing = card.metrics.get("test", {}).get("routing")
    if not card.expert or not routing:
        return ""
    return f" It sends {routing['species_accuracy']:.1%} of the test photos to the right one."


def expert_row(card: ModelCard) -> str:
    """The dog expert's own cross-validation over the trainval dog photos (honest: its backbone is frozen)."""
    cv = card.expert.metrics.get("cv") if card.expert else None
    if not cv:
        return ""
    return (
        f"| dog expert, {cv['folds']}-fold cross-validation (trainval dogs) | {cv['images']} | {cv['accuracy']:.1%} | "
        f"{percent(cv.get('mean_per_class_accuracy'))} | {cv['top5_accuracy']:.1%} |"
    )


def variant_note() -> str:
    """Why this variant serves: the timings `PetClassifier.load` took on this host, where it had a choice."""
    if not classifier.timings:
        return ""
    timed = ", ".join(f"{name} {ms:.1f} ms" for name, ms in sorted(classifier.timings.items(), key=lambda t: t[1]))
    threads = f"{classifier.threads} thread" + ("s" if classifier.threads > 1 else "")
    fastest = min(classifier.timings, key=classifier.timings.get)
    why = "the faster" if classifier.variant == fastest else f"as {fastest} is not {1 - FASTER_BY:.0%} faster"
    return f", {why} on this host at start ({timed} a photo at {threads})"


def card_markdown(card: ModelCard) -> str:
    spec, model, test = card.preprocess, card.model, card.metrics.get("test")
    training = "fine-tuned end to end" if model.end_to_end else "frozen backbone, trained head"
    if model.finetune_blocks:  # a card from before the partial fine-tune retired (6346004)
        training = f"its last {model.finetune_blocks} layers fine-tuned"
    return "\n".join(
        [
            f"- **Backbone** `{model.backbone}` · head `{model.head}` · {training} · serving the "
            f"**{classifier.variant}** model ({classifier.model_file.stat().st_size / 1e6:.1f} MB){variant_note()}",
            f"- **Input** shorter side {spec.resize_shorter} px, centre crop {spec.crop} px",
            f"- **How a photo is answered** {how_answered(card)}{routing_text(card)} {no_pet_sentence(card)}",
            f"- **MLflow** `{card.mlflow['registered_model']}` version {card.mlflow['version']} "
            f"(alias `{card.mlflow['alias']}`), run `{card.mlflow['run_id']}`",
            "",
            "| split | images | top-1 | mean per breed | top-5 |",
            "|---|---|---|---|---|",
            selection_row(card),
            (
                f"| test, fp32 | {test['images']} | {test['accuracy']:.1%} | "
                f"{percent(test.get('mean_per_class_accuracy'))} | {test['top5_accuracy']:.1%} |"
                if test
                else ""
            ),
            int8_row(card),
            expert_row(card),
            "",
            trust_text(card),
            "",
            teacher_text(card),
            "",
            f"Data digest `{card.data['digest'][:12]}`. {missing_sentence(card)}",
        ]
    )


def test_confusion(card: ModelCard) -> list[list[int]]:
    return card.metrics.get("test", {}).get("confusion", [])


def card_species(card: ModelCard, label: str) -> str:
    return card.species[classifier.labels.index(label)]


def per_class_rows(card: ModelCard) -> list[list[Any]]:
    """Breed, accuracy in %, test photos, species, and a note where the photos are too few to judge (the
    accuracy second, so a phone shows it beside the breed)."""
    per_class, counts = card.metrics.get("test", {}).get("per_class", {}), card.test_photos(classifier.labels)
    rows = []
    for label, accuracy in sorted(per_class.items(), key=lambda item: item[1]):
        count = counts.get(label)
        note = (
            f"fewer than {FEW_TEST_PHOTOS} photos: too few to judge"
            if count is not None and count < FEW_TEST_PHOTOS
            else ""
        )
        rows.append([readable_name(label), f"{accuracy:.1%}", count, card_species(card, label), note])
    return rows


def confused_pairs(card: ModelCard, top: int = 10) -> list[list[Any]]:
    """The most frequent mistakes on test: true breed → answered, the share of that breed's photos, and the count."""
    confusion = test_confusion(card)
    pairs = [
        (count, true, answered)
        for true, row in enumerate(confusion)
        for answered, count in enumerate(row)
        if count and true != answered
    ]
    names = classifier.names
    return [
        [names[true], names[answered], f"{count / sum(confusion[true]):.0%}", count]
        for count, true, answered in sorted(pairs, key=lambda pair: -pair[0])[:top]
    ]


def confusion_image(card: ModelCard) -> str | None:
    name = card.metrics.get("test", {}).get("confusion_matrix")
    return str(classifier.model_file.parent / name) if name else None


def example_caption(path: str) -> str:
    label = Path(path).stem.rsplit("_", 1)[0]
    return f"{readable_name(label)} ({card_species(classifier.card, label)})"


# --------------------------------------------------------------------------- the app

CSS = """
#examples .grid-wrap { min-height: 0; }
@media (max-width: 640px) { #examples .grid-container { grid-template-columns: repeat(2, minmax(0, 1fr)) !important; } }
#card th, #card td { overflow-wrap: normal; }
/* On a phone the tables are set smaller, and no word or number breaks inside its cell: the card's table
   fits the width, the two long ones scroll sideways in their boxes with the breed column pinned. */
@media (max-width: 640px) {
  #card table { font-size: 12px; }
  #card th, #card td { padding: 4px 6px; word-break: normal; }
  #card td:not(:first-child) { white-space: nowrap; }
  #per-class table, #confused table { font-size: 12px; }
  #per-class th .header, #confused th .header { white-space: nowrap; }
  #per-class th, #confused th, #per-class td, #confused td { min-width: max-content !important; }
}
"""

with gr.Blocks(title="Pet breed recognition", delete_cache=DELETE_CACHE) as demo:
    gr.Markdown("# 🐾 Pet breed recognition\nThe breed of a cat or dog in a photo, among the 37 of Oxford-IIIT Pet.")
    with gr.Tabs(elem_id="tabs"):
        with gr.Tab("Identify", id="identify", elem_id="tab-identify"):
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
            examples = gr.Gallery(
                [(path, example_caption(path)) for path in EXAMPLES],
                label="Examples: click one to identify it",
                columns=6,
                height="auto",
                allow_preview=False,
                interactive=False,
                elem_id="examples",
            )
            gr.Markdown("Example photos: Oxford-IIIT Pet test images (Parkhi et al., CC BY-SA 4.0).")
            with gr.Accordion("Details as JSON", open=False):
                details = gr.JSON()
            with gr.Accordion("Several photos at once", open=False):
                files = gr.File(file_count="multiple", label=f"Photos (at most {MAX_BATCH_FILES})")
                table = gr.Dataframe(
                    headers=["file", "top-1", "probability", "sure", "top-5"], label="Predictions", wrap=True
                )
                gr.Button("Identify all").click(
                    predict_batch, files, table, api_name="predict_batch", concurrency_id="model"
                )

        with gr.Tab("Transform", id="transform", elem_id="tab-transform"):
            with gr.Row():
                source = ImageUpload(label="Image", type="filepath", elem_id="transform-source")
                result = gr.Image(label="Result", type="pil", format="png", elem_id="transform-result")
            for name, transform in transforms.TRANSFORMS.items():
                with gr.Accordion(f"{name}: {transform.summary}", open=name == "resize", elem_id=f"op-{name}"):
                    controls = [control(param) for param in transform.params]
                    gr.Button(f"Apply {name}").click(
                        transform_endpoint(transform),
                        [source, *controls],
                        result,
                        api_name=name,
                        concurrency_id="transform",
                        concurrency_limit=1,
                    )
            with gr.Accordion(f"pipeline: {pipeline.__doc__.splitlines()[0]}", open=False, elem_id="op-pipeline"):
                steps = gr.Code(json.dumps([{"op": "resize", "width": 256}, {"op": "grayscale"}]), language="json")
                gr.Button("Apply pipeline").click(
                    pipeline,
                    [source, steps],
                    result,
                    api_name="pipeline",
                    concurrency_id="transform",
                    concurrency_limit=1,
                )

        with gr.Tab("Model", id="model", elem_id="tab-model"):
            gr.Markdown(card_markdown(classifier.card), elem_id="card")
            gr.Dataframe(
                per_class_rows(classifier.card),
                headers=["breed", "test accuracy", "test photos", "species", "note"],
                label="Per breed, worst first",
                elem_id="per-class",
                wrap=True,
                pinned_columns=1,
            )
            gr.Dataframe(
                confused_pairs(classifier.card),
                headers=["true breed", "answered", "share of that breed", "photos"],
                label="Most confused pairs on test",
                elem_id="confused",
                wrap=True,
                pinned_columns=1,
            )
            gr.Image(
                confusion_image(classifier.card),
                label="Test confusion matrix",
                elem_id="confusion",
                buttons=["fullscreen"],
            )
            with gr.Accordion("The 37 breeds", open=False):
                gr.JSON(classes())

    outputs = [breeds, summary, details, heatmap]
    identify_button.click(identify, photo, outputs, api_name="identify", concurrency_id="model")
    photo.upload(identify, photo, outputs, api_visibility="private", concurrency_id="model")
    examples.select(identify_example, None, [photo, *outputs], api_visibility="private", concurrency_id="model")
    for fn, output in ((predict, breeds), (predict_details, details), (explain, heatmap)):  # API only: no trigger
        gr.on([], fn, photo, output, api_name=fn.__name__, concurrency_id="model")
    gr.api(classes, api_name="classes")
    if os.environ.get("PETS_BENCH_NOOP") == "1":  # the floor for bench/latency.py: same upload, no work
        gr.on([], lambda image: "ok", photo, summary, api_name="noop")  # what the page never triggers
        gr.api(model_runs, api_name="model_runs")
        gr.api(serving, api_name="serving")

# The model's requests and the transforms' are separate groups, two and one at a time on the Space's 2 vCPUs,
# so a burst of heavy transforms cannot hold up /predict; up to 64 wait, at most 4 of them one visitor's. Every
# call goes through the queue: /gradio_api/run/<api> refuses the queued endpoints (`api_open=False`, what
# Gradio does on a Space) instead of running them at once, past the queue and its limits.
demo.queue(default_concurrency_limit=int(os.environ.get("PETS_CONCURRENCY", "2")), max_size=64, api_open=False)
if MAX_QUEUED_PER_CLIENT:  # Gradio has no per-visitor limit of its own
    limits.PER_VISITOR.apply(demo._queue, MAX_QUEUED_PER_CLIENT, TRUSTED_PROXIES)
gradio_patches.QUEUE_WAKE_UP.apply(demo._queue)


def launch(**overrides: Any) -> None:
    """Serve the app with its limits: routes, upload and body size, files per upload, uploads per visitor,
    queued requests per visitor, session capacity, no tracebacks to users."""
    limits.return_memory_to_the_os()
    gradio_patches.LAZY_SESSIONS.apply()
    # uvicorn would replace the socket's peer with an X-Forwarded-For entry for a peer it trusts (loopback by
    # default, so any local client could name itself): trusting none leaves who the visitor is to limits.visitor.
    os.environ["FORWARDED_ALLOW_IPS"] = ""
    log.info(
        "visitors are told apart by %s",
        f"the X-Forwarded-For entry {TRUSTED_PROXIES} from the right" if TRUSTED_PROXIES else "their socket address",
    )
    # routes, bodies, uploads and each visitor's upload budget; its guards on Gradio checked (or no start)
    middleware = limits.request_limits(MAX_BODY_BYTES, MAX_BATCH_FILES, TRUSTED_PROXIES)
    demo.launch(
        **{
            "server_name": os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
            "server_port": int(os.environ.get("GRADIO_SERVER_PORT", "7860")),
            "max_file_size": MAX_FILE_SIZE,
            "state_session_capacity": SESSION_CAPACITY,
            "show_error": False,
            "app_kwargs": {
                "middleware": [middleware],
                "exception_handlers": {FnIndexInferError: limits.unknown_endpoint},
            },
            "css": CSS,
        }
        | overrides
    )


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    launch()
