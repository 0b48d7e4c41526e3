"""Training speed on this machine, printed as JSON.

    python -m bench.train_speed [--data-dir ../shared/data/oxford-iiit-pet]

A 6-configuration frozen-head sweep from a cold feature cache (the first run pays for extraction), the
cost of each further head run, feature-extraction throughput, the throughput of fine-tuning the last
layers on cached activations, and of end-to-end fine-tuning from images (train/configs/e2e_lite2.toml,
one epoch on a subset, on CUDA when present, else the CPU). Uses a throwaway MLflow store and cache.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import replace

import mlflow

from bench.common import REPO, SHARED_DATA
from train.config import load_config, load_sweep
from train.data import load_dataset
from train.finetune import finetune, pick_device
from train.fit import fit
from train.model import build_net, seed_everything


def end_to_end_images_per_s(data_dir: str, images: int, scratch: str) -> dict:
    """One epoch of the shipped recipe on the first `images` training images (the data loaders included)."""
    config = replace(load_config(REPO / "train" / "configs" / "e2e_lite2.toml"), epochs=1, warmup_epochs=0)
    config = replace(config, checkpoint_dir=f"{scratch}/checkpoints", workers=min(config.workers, os.cpu_count()))
    data = load_dataset(data_dir, config.val_fraction, config.seed)
    seed_everything(config.seed)
    net, spec = build_net(config, data.classes)
    outcome = finetune(config, net, spec, data.classes, data.splits["train"][:images], [])
    return {
        "config": "train/configs/e2e_lite2.toml",
        "device": pick_device(config.device).type,
        "images": images,
        "train_images_per_s": round(outcome.images_per_second, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=str(SHARED_DATA))
    parser.add_argument("--sweep", default=str(REPO / "train" / "configs" / "sweep_frozen.toml"))
    parser.add_argument("--finetune-blocks", type=int, default=3)
    parser.add_argument("--end-to-end-images", type=int, default=128)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        mlflow.set_tracking_uri(f"sqlite:///{scratch}/mlflow.db")
        os.chdir(scratch)
        configs = [replace(c, cache_dir=f"{scratch}/cache", experiment="bench") for c in load_sweep(args.sweep)]
        started, runs = time.perf_counter(), []
        for config in configs:
            run_started = time.perf_counter()
            result = fit(config, args.data_dir)
            runs.append({"seconds": time.perf_counter() - run_started, "result": result})
        sweep_seconds = time.perf_counter() - started
        first = runs[0]["result"].cache
        tail = fit(replace(configs[0], finetune_blocks=args.finetune_blocks, epochs=3), args.data_dir)
        end_to_end = end_to_end_images_per_s(args.data_dir, args.end_to_end_images, scratch)
    report = {
        "sweep_configs": len(configs),
        "sweep_wall_s": round(sweep_seconds, 1),
        "first_run_s": round(runs[0]["seconds"], 1),
        "further_head_run_s_median": round(statistics.median(r["seconds"] for r in runs[1:]), 1),
        "further_head_run_s_max": round(max(r["seconds"] for r in runs[1:]), 1),
        "feature_extraction_images_per_s": round(first.computed_images / first.seconds, 1),
        "further_runs_computed_features": sum(r["result"].cache.computed_images for r in runs[1:]),
        "finetune": {
            "blocks": args.finetune_blocks,
            "one_off_extraction_images": tail.cache.computed_images,
            "one_off_extraction_s": round(tail.cache.seconds, 1),
            "train_images_per_s": round(tail.train_images_per_s, 1),
        },
        "end_to_end": end_to_end,
        "best_val_accuracy": round(max(r["result"].val_accuracy for r in runs), 4),
    }
    json.dump(report, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
