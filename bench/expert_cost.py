"""What the dog expert costs, printed as JSON:

    python -m bench.expert_cost [--repeats 60] [--runs 3]

Model time of a cat photo, a dog photo and a photo with neither, the breed model alone against the pair that
serves (the breed model, and the expert's network for a photo routed to dogs and for every photo the card's
"no cat or dog" entry asks about), in the same process, in turn, at the app's thread
count and the served variant: medians of `--repeats` calls, for each of `--runs` runs. And the app's
resident memory once started and idle, with and without the expert. The targets: any photo both networks
run on at most 2.1x the breed model alone (a cat photo 1.05x where only dogs run the expert), idle memory
at most 80 MB more.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from bench.common import REPO, cpu, resident_mb, running_app
from bench.latency import alternating
from inference import DEFAULT_MODEL_DIR, PetClassifier
from preprocess import load_image, model_input

PHOTOS = {  # a cat the breed model is sure of, a dog, and a photo without either (both networks run)
    "cat": REPO / "examples" / "Abyssinian_201.jpg",
    "dog": REPO / "examples" / "yorkshire_terrier_79.jpg",
    "no_pet": REPO / "tests" / "not-pets" / "kodak_kodim05.jpg",
}


def breed_model_alone(model_dir: Path, out: Path) -> Path:
    """A copy of the model folder without the expert and its "no cat or dog": the card as `select` writes it."""
    shutil.copytree(model_dir, out, ignore=shutil.ignore_patterns("expert*"))
    card = json.loads((out / "card.json").read_text())
    card.pop("expert", None)
    card.pop("no_pet", None)  # it asks the expert's network
    (out / "card.json").write_text(json.dumps(card))
    return out


def model_times(alone_dir: Path, repeats: int) -> dict:
    """Per photo: median ms of the breed model alone and of the pair, taken in turn, and their ratio."""
    pair = PetClassifier.load()
    alone = PetClassifier.load(alone_dir, variant=pair.variant)
    found = {"variant": pair.variant, "threads": pair.threads}
    for kind, photo in PHOTOS.items():
        x = model_input(load_image(photo), pair.spec)
        before = pair.expert.runs
        samples = alternating({"alone": lambda x=x: alone.answer(x), "pair": lambda x=x: pair.answer(x)}, repeats)
        medians = {name: statistics.median(times) for name, times in samples.items()}
        found[kind] = {
            "photo": photo.name,
            "expert_ran": pair.expert.runs > before,
            "alone_ms": round(medians["alone"], 2),
            "pair_ms": round(medians["pair"], 2),
            "ratio": round(medians["pair"] / medians["alone"], 3),
        }
    return found


def idle_memory(alone_dir: Path, settle_s: float = 3.0) -> dict:
    """The app's resident memory a few seconds after it answers, with the expert and without."""
    found = {}
    for name, env in (("alone", {"PETS_MODEL_DIR": str(alone_dir)}), ("pair", {})):
        with running_app(env) as (_, process):
            time.sleep(settle_s)
            found[f"{name}_rss_mb"] = round(resident_mb(process.pid), 1)
    found["expert_adds_mb"] = round(found["pair_rss_mb"] - found["alone_rss_mb"], 1)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=60)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        alone_dir = breed_model_alone(DEFAULT_MODEL_DIR, Path(scratch) / "model")
        runs = [model_times(alone_dir, args.repeats) for _ in range(args.runs)]
        memory = idle_memory(alone_dir)
    summary = {kind: {"ratio_median_of_runs": statistics.median(run[kind]["ratio"] for run in runs)} for kind in PHOTOS}
    print(json.dumps({"cpu": cpu(), "runs": runs, "summary": summary, "memory": memory}, indent=2))


if __name__ == "__main__":
    main()
