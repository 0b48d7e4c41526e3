"""How long a cross-validation took on this machine, from its MLflow runs, printed as JSON.

    python -m bench.cv_time [--experiment pet-breeds] [--out bench/results/cv-time.json]

The latest CV parent run of the experiment (or --parent RUN_ID): the wall time of the whole, of each
fold's run and the final run, and the seconds spent extracting features (the frozen part's one pass per
view) as the runs logged them. Reads the tracking store that MLFLOW_TRACKING_URI names (sqlite:///mlflow.db
by default, as `python -m train` uses)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from mlflow import MlflowClient

from bench.common import cpu
from train.experiments import tracking


def seconds(run) -> float:
    return round((run.info.end_time - run.info.start_time) / 1000, 1)


def report(client: MlflowClient, parent_id: str) -> dict:
    parent = client.get_run(parent_id)
    children = client.search_runs(
        [parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent_id}'", order_by=["attributes.start_time"]
    )
    return {
        "cpu": cpu(),
        "cv_run": parent.info.run_name,
        "params": {key: parent.data.params[key] for key in ("backbone", "end_to_end", "views", "epochs")},
        "total_s": seconds(parent),
        "feature_extraction_s": round(sum(run.data.metrics.get("feature_seconds", 0.0) for run in children), 1),
        "images_extracted": int(sum(run.data.metrics.get("feature_images_computed", 0) for run in children)),
        "runs_s": {run.info.run_name: seconds(run) for run in children},
        "cv_accuracy": parent.data.metrics.get("cv_accuracy"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", default="pet-breeds")
    parser.add_argument("--parent", help="the CV parent run id (default: the latest finished one)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    tracking.start(args.experiment)
    client = MlflowClient()
    parent = args.parent
    if not parent:
        experiment = client.get_experiment_by_name(args.experiment)
        finished = client.search_runs(
            [experiment.experiment_id],
            "attributes.run_name LIKE 'cv:%' AND attributes.status = 'FINISHED'",
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
        if not finished:
            raise SystemExit(f"No finished CV run in experiment {args.experiment!r}: run `python -m train cv` first.")
        parent = finished[0].info.run_id
    found = json.dumps(report(client, parent), indent=2)
    print(found)
    if args.out:
        args.out.write_text(found + "\n")


if __name__ == "__main__":
    main()
