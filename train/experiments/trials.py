"""Where the runs of a sweep or a cross-validation execute: one after another in this process (the
default), or as Ray Tune trials on a local or remote Ray cluster. Either way each trial is one `fit`,
logged as a child of the caller's active MLflow run, and a trial that fails is reported while the others
finish. Ray adds no scheduler of ours: trials declare their resources (`trial_cpus`, `trial_gpus`) and
Tune places them."""

from __future__ import annotations

import contextlib
import logging
import math
import sys
import tempfile
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import mlflow

from train.data.pets import PetData, load_dataset
from train.experiments import tracking
from train.experiments.fit import fit
from train.learning.config import Config, load_sweep

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
CODE = [str(REPO / "train"), str(REPO / "preprocess.py"), str(REPO / "inference.py")]  # shipped to Ray workers


@dataclass(frozen=True)
class Trial:
    name: str
    config: Config
    data: PetData  # the config's own split, or a cross-validation fold
    register: bool = True
    resume: bool = False  # end to end: continue from the trial's last checkpoint


@dataclass(frozen=True)
class TrialResult:
    name: str
    run_id: str | None = None
    version: str | None = None
    val_accuracy: float = math.nan
    val_loss: float = math.nan
    error: str | None = None  # why the trial failed; None when it finished


@dataclass(frozen=True)
class Engine:
    kind: str = "in-process"  # or "ray"
    address: str | None = None  # ray: a running cluster ("auto", "host:6379"); None starts a local one
    max_concurrent: int = 0  # ray: at most this many trials at once; 0: as many as the resources allow


IN_PROCESS = Engine()


def run_trial(trial: Trial, config_path: str | None, parent_run_id: str) -> TrialResult:
    result = fit(
        trial.config,
        config_path=config_path,
        data=trial.data,
        resume=trial.resume,
        register=trial.register,
        run_name=trial.name,
        parent_run_id=parent_run_id,
    )
    return TrialResult(trial.name, result.run_id, result.version, result.val_accuracy, result.val_loss)


def sweep(path: str, overrides: list[str], data_dir: str | None, engine: Engine) -> list[TrialResult]:
    """`python -m train sweep`: one trial per grid point under a parent run `sweep:<path>`."""
    configs = load_sweep(path, overrides)
    splits = {key: load_dataset(data_dir, *key) for key in {c.dataset_key() for c in configs}}
    trials = [Trial(name, c, splits[c.dataset_key()]) for name, c in grid_names(configs)]
    tracking.start(configs[0].experiment)
    with mlflow.start_run(run_name=f"sweep:{path}"):
        mlflow.log_param("sweep.size", len(configs))
        mlflow.log_artifact(path, "config")
        results = run_trials(trials, engine, path)
        finished = [r for r in results if r.error is None]
        if finished:
            mlflow.log_metric("best_val_accuracy", max(r.val_accuracy for r in finished))
    return results


def grid_names(configs: list[Config]) -> list[tuple[str, Config]]:
    """Each configuration named by the values that set it apart, as the MLflow UI lists it."""
    varying = [key for key in Config.__dataclass_fields__ if len({getattr(c, key) for c in configs}) > 1]
    return [(",".join(f"{key}={getattr(c, key)}" for key in varying) or "trial", c) for c in configs]


def run_trials(trials: list[Trial], engine: Engine, config_path: str | None) -> list[TrialResult]:
    """Each trial as a child of the active run, results in the order of `trials`."""
    parent = mlflow.active_run().info.run_id
    mlflow.log_param("engine", engine.kind)
    tracking.log_dataset(trials[0].data)
    if engine.kind == "ray":
        results = on_ray(trials, engine, config_path, parent)
    else:
        results = [in_process(trial, config_path, parent) for trial in trials]
    for result in results:
        if result.error:
            log.error("trial %s failed: %s", result.name, result.error)
    mlflow.log_metric("failed_trials", sum(r.error is not None for r in results))
    return results


def in_process(trial: Trial, config_path: str | None, parent: str) -> TrialResult:
    try:
        return run_trial(trial, config_path, parent)
    except Exception as error:  # reported with the others' results; the sweep goes on
        log.exception("trial %s", trial.name)
        return TrialResult(trial.name, error=f"{type(error).__name__}: {error}")


def portable(trial: Trial) -> Trial:
    """Paths made absolute, since a Ray worker does not start in this folder; on a cluster they must name
    the same place on every node (a shared mount, or the same copy)."""
    config = replace(
        trial.config,
        cache_dir=str(Path(trial.config.cache_dir).resolve()),
        checkpoint_dir=str(Path(trial.config.checkpoint_dir).resolve()),
    )
    return replace(trial, config=config)


def on_ray(trials: list[Trial], engine: Engine, config_path: str | None, parent: str) -> list[TrialResult]:
    import ray
    from ray import tune

    trials = [portable(trial) for trial in trials]
    config_path = str(Path(config_path).resolve()) if config_path else None
    ray.init(address=engine.address, runtime_env=worker_environment(), include_dashboard=False)
    try:

        def trainable(params: dict) -> dict:
            return asdict(run_trial(trials[params["index"]], config_path, parent))

        def resources(params: dict) -> dict:
            config = trials[params["index"]].config
            return {"cpu": config.trial_cpus, "gpu": config.trial_gpus}

        with tempfile.TemporaryDirectory(prefix="pets-tune-") as storage:  # MLflow keeps the record, not Tune
            tuner = tune.Tuner(
                tune.with_resources(trainable, resources),
                param_space={"index": tune.grid_search(list(range(len(trials))))},
                tune_config=tune.TuneConfig(max_concurrent_trials=engine.max_concurrent or None),
                run_config=tune.RunConfig(storage_path=storage, name="trials", verbose=1),
            )
            with contextlib.redirect_stdout(sys.stderr):  # Tune's progress tables; stdout keeps the results
                grid = tuner.fit()
            found = {result.config["index"]: result for result in grid}
    finally:
        ray.shutdown()
    return [ray_result(trial, found.get(i)) for i, trial in enumerate(trials)]


def worker_environment() -> dict:
    """What every Ray worker needs: this project's code, the tracking store this process logs to, and its
    own working folder (Tune would otherwise move each trial into a folder of its own)."""
    env = {"MLFLOW_TRACKING_URI": mlflow.get_tracking_uri(), "MLFLOW_DISABLE_TELEMETRY": "true"}
    return {"py_modules": CODE, "env_vars": env | {"RAY_CHDIR_TO_TRIAL_DIR": "0"}}


def ray_result(trial: Trial, result) -> TrialResult:
    if result is None or result.error is not None:
        reason = str(result.error if result else "never ran").strip().splitlines()
        return TrialResult(trial.name, error=reason[-1] if reason else "failed")
    return TrialResult(**{key: result.metrics[key] for key in TrialResult.__dataclass_fields__})
