"""python -m train COMMAND: train, select and ship the pet-breed models (docs/training.md); each COMMAND
has --help."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from train.learning.config import ConfigError, load_config

DATA_DIR_HELP = "Oxford-IIIT Pet root (default: $PETS_DATA_DIR or data/oxford-iiit-pet)"


def build_parser() -> argparse.ArgumentParser:
    """Every subcommand with a help line; options after the subcommand, `--data-dir` before it or after."""
    parser = argparse.ArgumentParser(prog="python -m train", description=__doc__)
    parser.add_argument("--data-dir", help=DATA_DIR_HELP)
    data = argparse.ArgumentParser(add_help=False)  # --data-dir after the subcommand too; it wins there
    data.add_argument("--data-dir", default=argparse.SUPPRESS, help=DATA_DIR_HELP)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str) -> argparse.ArgumentParser:
        return commands.add_parser(name, help=help, description=help, parents=[data])

    helps = {
        "fit": "train one configuration and register it (validation split)",
        "sweep": "train every configuration of a sweep file's grid",
        "cv": "cross-validate a configuration, then train it on all of trainval and register it",
    }
    for name in ("fit", "sweep", "cv"):
        sub = command(name, helps[name])
        sub.add_argument("--config", required=True)
        sub.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
        if name != "sweep":
            sub.add_argument("--resume", action="store_true", help="end to end: each run from its last saved epoch")
        if name != "fit":
            sub.add_argument("--engine", choices=("in-process", "ray"), default="in-process")
            sub.add_argument("--address", help="ray: a running cluster (host:6379); default: start a local one")
            sub.add_argument("--max-concurrent", type=int, default=0, help="ray: trials at once (0: no cap)")
    commands.choices["cv"].add_argument(
        "--checkpoints-only",
        action="store_true",
        help="train and checkpoint every fold, logging nothing (a GPU box); then cv --resume logs them",
    )
    select = command("select", "ship the best cross-validated breed model into a model folder, tested once")
    select.add_argument("--model-dir", default="model")
    select.add_argument("--version", help="ship this registered version instead of the best-ranked one")
    select.add_argument("--alias", default="champion", help="the alias it gets (another one tries it out)")
    expert = command("expert", "ship the best cross-validated dog expert beside the breed model")
    expert.add_argument("--model-dir", default="model")
    expert.add_argument("--version", help="ship this registered pet-dog-expert version instead of the best-ranked one")
    no_pet = command("no-pet", "fit and measure the 'no cat or dog' answer on photos without one")
    no_pet.add_argument("--model-dir", default="model")
    no_pet.add_argument("--photos", help="not-pets layout; default: not-pets beside the data")
    command("int8", "quantize a model folder again under today's int8 gate").add_argument(
        "--model-dir", default="model"
    )
    command("retest", "test a model folder again on today's photos; update its card").add_argument(
        "--model-dir", default="model"
    )
    export = command("export", "export a registered version to ONNX (parity gate) with the card's first part")
    export.add_argument("--version")
    export.add_argument("--alias")
    export.add_argument("--model-dir", default="model")
    publish = command("publish", "validate model/ and upload the Space (no torch needed)")
    publish.add_argument("--space-id", default=os.environ.get("HF_SPACE_ID"))
    publish.add_argument("--dry-run", action="store_true", help="upload nothing: list files, message and verdict")
    publish.add_argument("--out", help="with --dry-run: copy exactly the tree that would be uploaded here")
    server = command("server", "try a tracking server: MLflow on a throwaway PostgreSQL")
    server.add_argument("--port", type=int, default=5000)
    server.add_argument("--host", default="127.0.0.1", help="0.0.0.0 to let other machines log to it")
    server.add_argument("--artifacts", help="keep the artifacts in this folder (default: a temporary one)")
    dogs = command("stanford-dogs", "build the extra dog photos folder from Stanford Dogs")
    dogs.add_argument("--out", default="data/stanford-dogs-extra")
    dogs.add_argument("--archive", default="data/stanford-dogs/images.tar", help="downloaded here when absent")
    dogs.add_argument("--sha256", help="refuse an archive with another checksum")
    evaluate = command("evaluate", "a model folder's served answer on a split, as JSON")
    evaluate.add_argument("--model", default="model")
    evaluate.add_argument("--split", choices=("train", "val", "test"), default="test")
    retention = command("retention", "a model folder against its ImageNet teacher on dog photos")
    retention.add_argument("--model", default="model")
    retention.add_argument("--photos", help="extra layout; default: stanford-dogs-extra beside the data")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        return run(args) or 0
    except ConfigError as error:
        print(f"config error: {error}", file=sys.stderr)
        return 2
    except RuntimeError as error:  # GateError, DataError, ExportError, ...: already a sentence for the user
        print(f"error: {error}", file=sys.stderr)
        return 1
    except Exception as error:  # MLflow's: a tracking server that is down, or refuses a request
        mlflow = sys.modules.get("mlflow")
        if mlflow is None or not isinstance(error, mlflow.exceptions.MlflowException):
            raise
        print(f"error: MLflow tracking at {mlflow.get_tracking_uri()} failed: {error}", file=sys.stderr)
        return 1


def engine(args: argparse.Namespace):
    from train.experiments.trials import Engine

    if args.max_concurrent < 0:
        raise ConfigError("--max-concurrent must be 0 (no cap) or more.")
    return Engine(args.engine, args.address, args.max_concurrent)


def run(args: argparse.Namespace) -> int | None:
    if args.command == "fit":
        from train.experiments.fit import fit

        result = fit(load_config(args.config, args.set), args.data_dir, args.config, resume=args.resume)
        print(f"{result.run_id}\tversion {result.version}\tval_accuracy {result.val_accuracy:.4f}")
    elif args.command == "sweep":
        from train.experiments.trials import sweep

        results = sweep(args.config, args.set, args.data_dir, engine(args))
        for result in results:
            outcome = f"failed: {result.error}" if result.error else f"val_accuracy {result.val_accuracy:.4f}"
            print(f"{result.run_id}\t{result.name}\tversion {result.version}\t{outcome}")
        return 1 if any(result.error for result in results) else 0
    elif args.command == "cv":
        from train.experiments.crossval import cross_validate, train_checkpoints

        config = load_config(args.config, args.set)
        if args.checkpoints_only:
            train_checkpoints(config, args.data_dir)
        else:
            found = cross_validate(config, args.data_dir, args.config, args.resume, engine(args))
            print(json.dumps(found, indent=2))
    elif args.command == "select":
        from train.shipping.select import print_card, select

        print_card(select(args.model_dir, args.data_dir, args.version, args.alias))
    elif args.command == "expert":
        from train.shipping.expert import ship_expert
        from train.shipping.select import print_card

        print_card(ship_expert(args.model_dir, args.data_dir, args.version))
    elif args.command == "no-pet":
        from pathlib import Path

        from train.shipping.no_pet import fit_no_pet

        print(
            json.dumps(fit_no_pet(args.model_dir, args.data_dir, Path(args.photos) if args.photos else None), indent=2)
        )
    elif args.command == "int8":
        from train.shipping.select import requantize

        print(json.dumps(requantize(args.model_dir, args.data_dir).int8, indent=2))
    elif args.command == "retest":
        from train.shipping.retest import retest
        from train.shipping.select import print_card

        print_card(retest(args.model_dir, args.data_dir))
    elif args.command == "export":
        from train.shipping.export import export

        card = export(args.version, args.alias, args.model_dir, args.data_dir)
        print(json.dumps(card.to_dict()["model"], indent=2))
    elif args.command == "publish":
        from train.shipping.publish import publish

        return publish(args.space_id, args.dry_run, out=args.out)
    elif args.command == "server":
        from train.experiments.tracking_server import serve

        return serve(args.port, args.host, args.artifacts)
    elif args.command == "stanford-dogs":
        from pathlib import Path

        from train.data.stanford import build, fetch

        written = build(fetch(Path(args.archive)), Path(args.out), args.sha256)
        print(json.dumps(written, indent=2))
    elif args.command == "evaluate":
        import numpy as np

        from train.shipping.evaluate import evaluate

        summary = evaluate(args.model, args.split, args.data_dir)
        print(json.dumps({k: v for k, v in summary.items() if not isinstance(v, np.ndarray)}, indent=2))
    elif args.command == "retention":
        from pathlib import Path

        from inference import PetClassifier
        from train.data.pets import DataError, data_dir
        from train.shipping.retention import FOLDER, measure

        photos = Path(args.photos) if args.photos else data_dir(args.data_dir).parent / FOLDER
        classifier = PetClassifier.load(Path(args.model), variant="fp32")
        found = measure(classifier, photos)
        if found is None:
            raise DataError(f"No retention measured on {photos}: see the warning above.")
        print(json.dumps(found, indent=2))


if __name__ == "__main__":
    raise SystemExit(main())
