"""Training speed on this machine, printed as JSON.

    python -m bench.train_speed [--data-dir ../shared/data/oxford-iiit-pet]

A 6-configuration frozen-head sweep (`python -m train sweep`'s own code) in-process and on a local Ray,
each from a cold feature cache (the first run pays for extraction) and again warm; the cost of each
further head run; the throughput of end-to-end fine-tuning from images (train/configs/e2e_lite2.toml,
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
from pathlib import Path

import mlflow

from bench.common import REPO, SHARED_DATA
from train.data.pets import load_dataset
from train.experiments.trials import IN_PROCESS, Engine, sweep
from train.learning.config import load_config
from train.learning.finetune import finetune, pick_device
from train.learning.model import build_net, seed_everything


def end_to_end_images_per_s(data_dir: str, images: int, scratch: str) -> dict:
    """One epoch of the shipped recipe on the first `images` training images (the data loaders included)."""
    config = replace(load_config(REPO / "train" / "configs" / "e2e_lite2.toml"), epochs=1, warmup_epochs=0)
    config = replace(config, checkpoint_dir=f"{scratch}/checkpoints", workers=min(config.workers, os.cpu_count()))
    data = load_dataset(data_dir, config.val_fraction, config.seed)
    seed_everything(config.seed)
    net, spec = build_net(config, data.classes)
    outcome = finetune(config, net, spec, data.classes, data.splits["train"][:images], [], data.digest)
    return {
        "config": "train/configs/e2e_lite2.toml",
        "device": pick_device(config.device).type,
        "images": images,
        "train_images_per_s": round(outcome.images_per_second, 1),
    }


def timed_sweep(path: str, data_dir: str, engine: Engine, cache: str) -> dict:
    """One sweep through `python -m train sweep`'s own code; each run's time comes from its MLflow record."""
    experiment = f"bench-{engine.kind}"
    started = time.perf_counter()
    results = sweep(path, [f'cache_dir="{cache}"', f'experiment="{experiment}"'], data_dir, engine)
    wall = time.perf_counter() - started
    client = mlflow.MlflowClient()
    runs = {r.info.run_id: r for r in client.search_runs([client.get_experiment_by_name(experiment).experiment_id])}
    seconds = [(runs[r.run_id].info.end_time - runs[r.run_id].info.start_time) / 1000 for r in results]
    computed = sum(runs[r.run_id].data.metrics["feature_images_computed"] for r in results)
    extracting = sum(runs[r.run_id].data.metrics["feature_seconds"] for r in results)
    return {
        "wall_s": round(wall, 1),
        "run_s": [round(s, 1) for s in seconds],
        "computed_feature_images": int(computed),
        "feature_extraction_images_per_s": round(computed / extracting, 1) if extracting else None,
        "failed": sum(r.error is not None for r in results),
        "best_val_accuracy": round(max(r.val_accuracy for r in results), 4),
    }


def engines_side_by_side(path: str, data_dir: str, scratch: str) -> dict:
    """The same sweep in-process and on a local Ray, each from a cold feature cache, then again warm."""
    ray = Engine("ray")
    found = {
        "in_process_cold": timed_sweep(path, data_dir, IN_PROCESS, f"{scratch}/cache-in-process"),
        "ray_cold": timed_sweep(path, data_dir, ray, f"{scratch}/cache-ray"),
        "in_process_warm": timed_sweep(path, data_dir, IN_PROCESS, f"{scratch}/cache-in-process"),
        "ray_warm": timed_sweep(path, data_dir, ray, f"{scratch}/cache-ray"),
    }
    return found | {
        "cpus": os.cpu_count(),
        "ray_to_in_process_wall_cold": round(found["ray_cold"]["wall_s"] / found["in_process_cold"]["wall_s"], 2),
        "ray_to_in_process_wall_warm": round(found["ray_warm"]["wall_s"] / found["in_process_warm"]["wall_s"], 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=str(SHARED_DATA))
    parser.add_argument("--sweep", default=str(REPO / "train" / "configs" / "sweep_frozen.toml"))
    parser.add_argument("--end-to-end-images", type=int, default=128)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        mlflow.set_tracking_uri(f"sqlite:///{scratch}/mlflow.db")
        os.chdir(scratch)
        sweeps = engines_side_by_side(args.sweep, args.data_dir, scratch)
        end_to_end = end_to_end_images_per_s(args.data_dir, args.end_to_end_images, scratch)
    cold = sweeps["in_process_cold"]
    report = {
        "sweep": Path(args.sweep).name,
        "sweep_configs": len(cold["run_s"]),
        "sweep_wall_s": cold["wall_s"],
        "first_run_s": cold["run_s"][0],
        "further_head_run_s_median": round(statistics.median(cold["run_s"][1:]), 1),
        "further_head_run_s_max": max(cold["run_s"][1:]),
        "engines": sweeps,
        "end_to_end": end_to_end,
    }
    json.dump(report, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
