"""Training beyond one machine, for real: a PostgreSQL cluster and `mlflow server` processes started here
(train.experiments.tracking_server), the train commands pointed at them by MLFLOW_TRACKING_URI, and sweeps on a
local Ray. Each server can be killed mid-command to check the failure is clean."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import mlflow
import pytest
import requests
from mlflow import MlflowClient

from tests.conftest import REPO, write_tiny_dataset
from train.__main__ import main as train_main
from train.experiments.tracking import HOLDOUT_LOGITS, OOF_LOGITS, REGISTERED_MODEL, RUN_CONFIG, WEIGHTS, load_logits
from train.experiments.tracking_server import ServerError, free_port, mlflow_server, postgres, stop

pytestmark = pytest.mark.slow

CONFIG = """
backbone = "efficientnet_lite0"
epochs = {epochs}
patience = {epochs}
val_fraction = 0.25
cache_dir = "{cache}"
experiment = "{experiment}"
"""
SWEEP = "[base]\n" + CONFIG + "[grid]\nlr = [0.003, 0.00001]\n"
QUICK_FAILURE = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory):
    """A throwaway PostgreSQL, one long-lived `mlflow server` on it, a tiny dataset and a working folder."""
    root = tmp_path_factory.mktemp("scale_out")
    try:
        database = postgres()
        backend = database.__enter__()
    except ServerError as error:
        pytest.skip(f"no PostgreSQL to start here ({error}); .ci/run installs Debian's postgresql")
    try:
        with mlflow_server(backend, root / "artifacts") as (url, _):
            yield {
                "url": url,
                "backend": backend,
                "root": root,
                "artifacts": root / "artifacts",
                "data": write_tiny_dataset(root / "oxford-iiit-pet"),
            }
    finally:
        database.__exit__(None, None, None)


@pytest.fixture
def tracked(stack, monkeypatch: pytest.MonkeyPatch):
    """This process's train commands pointed at the server; the working folder holds no store of its own."""
    monkeypatch.chdir(stack["root"])
    monkeypatch.setenv("MLFLOW_TRACKING_URI", stack["url"])
    mlflow.set_tracking_uri(stack["url"])
    yield stack
    mlflow.set_tracking_uri(None)


def write_config(stack: dict, name: str, text: str, epochs: int, experiment: str) -> str:
    path = stack["root"] / name
    path.write_text(text.format(epochs=epochs, cache=stack["root"] / "cache", experiment=experiment))
    return str(path)


def rest(url: str, endpoint: str, **params) -> dict:
    answer = requests.get(f"{url}/api/2.0/mlflow/{endpoint}", params=params, timeout=30)
    answer.raise_for_status()
    return answer.json()


def folder_digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_fit_select_export_round_trip_through_the_server(tracked) -> None:
    data = ["--data-dir", str(tracked["data"])]
    config = write_config(tracked, "fit.toml", CONFIG, epochs=20, experiment="round-trip")
    assert train_main([*data, "fit", "--config", config]) == 0
    assert train_main([*data, "select", "--model-dir", "model"]) == 0
    assert train_main([*data, "export", "--alias", "champion", "--model-dir", "exported"]) == 0

    shipped, exported = tracked["root"] / "model", tracked["root"] / "exported"
    assert folder_digest(exported)["model.onnx"] == folder_digest(shipped)["model.onnx"]
    assert not (tracked["root"] / "mlruns").exists() and not (tracked["root"] / "mlflow.db").exists()

    # What the server's own REST API shows: the version, its alias, and the run behind it.
    model = rest(tracked["url"], "registered-models/get", name=REGISTERED_MODEL)["registered_model"]
    champion = rest(tracked["url"], "registered-models/alias", name=REGISTERED_MODEL, alias="champion")
    version = champion["model_version"]
    assert {"alias": "champion", "version": version["version"]} in model["aliases"]
    run = rest(tracked["url"], "runs/get", run_id=version["run_id"])["run"]
    assert run["info"]["status"] == "FINISHED" and run["info"]["run_name"]
    assert any(m["key"] == "test_accuracy" for m in run["data"]["metrics"])  # select logged the test result
    assert run["inputs"]["dataset_inputs"][0]["dataset"]["name"] == "oxford-iiit-pet"

    # The artifacts went through the server's proxy into its destination: the registered version is weights.
    stored = {p.name for p in tracked["artifacts"].rglob("*") if p.is_file()}
    assert {"holdout_logits.npz", "input_spec.json", "card.json", WEIGHTS, Path(RUN_CONFIG).name} <= stored
    assert "MLmodel" not in stored and "model.pth" not in stored  # no pickled module


def command(stack: dict, url: str, *args: str) -> subprocess.Popen:
    env = os.environ | QUICK_FAILURE | {"MLFLOW_TRACKING_URI": url, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-m", "train", "--data-dir", str(stack["data"]), *args],
        cwd=stack["root"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for(condition, process: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, f"the command ended before the server was killed:\n{process.stderr.read()}"
        assert time.monotonic() < deadline, "timed out waiting for the command to get going"
        time.sleep(0.05)


def assert_clean_failure(process: subprocess.Popen, url: str) -> None:
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 1, stderr
    last = stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: MLflow tracking at {url} failed:"), stderr[-2000:]
    assert "Traceback" not in stderr


def test_killing_the_server_mid_fit_fails_clearly_and_registers_nothing(tracked) -> None:
    client = MlflowClient()
    versions_before = len(client.search_model_versions(f"name='{REGISTERED_MODEL}'"))
    config = write_config(tracked, "long.toml", CONFIG, epochs=3000, experiment="doomed-fit")
    with mlflow_server(tracked["backend"], tracked["artifacts"]) as (url, server):
        fit = command(tracked, url, "fit", "--config", config)

        def running() -> bool:
            experiment = client.get_experiment_by_name("doomed-fit")
            return bool(experiment and client.search_runs([experiment.experiment_id], "attributes.status = 'RUNNING'"))

        wait_for(running, fit)
        stop(server)
        assert_clean_failure(fit, url)
    assert len(client.search_model_versions(f"name='{REGISTERED_MODEL}'")) == versions_before


def test_killing_the_server_mid_select_leaves_the_previous_model_whole(tracked) -> None:
    model = tracked["root"] / "kept-model"
    assert (
        train_main(["--data-dir", str(tracked["data"]), "export", "--alias", "champion", "--model-dir", str(model)])
        == 0
    )
    before = folder_digest(model)
    with mlflow_server(tracked["backend"], tracked["artifacts"]) as (url, server):
        select = command(tracked, url, "select", "--model-dir", str(model))
        wait_for(lambda: any(tracked["root"].glob(".kept-model.*/model.onnx")), select)  # export is under way
        stop(server)
        assert_clean_failure(select, url)
    assert folder_digest(model) == before
    assert not list(tracked["root"].glob(".kept-model.*"))  # no half-written folder left behind


def sweep_structure(client: MlflowClient, experiment: str) -> dict:
    """The parent and children of one sweep, as the keys and values a comparison needs."""
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = sorted((r for r in runs if r is not parent), key=lambda r: r.info.run_name)
    versions = {v.run_id: v.version for v in client.search_model_versions(f"name='{REGISTERED_MODEL}'")}
    return {
        "parent": (parent.info.run_name.split(":")[0], parent.data.params["sweep.size"], parent.info.status),
        "parent_inputs": [i.dataset.name for i in parent.inputs.dataset_inputs],  # logged before the children
        "best": parent.data.metrics["best_val_accuracy"],
        "children": [
            {
                "name": r.info.run_name,
                "parent": r.data.tags["mlflow.parentRunId"] == parent.info.run_id,
                "status": r.info.status,
                "lr": r.data.params["lr"],
                "params": len(r.data.params),
                "metrics": sorted(k for k in r.data.metrics if not k.startswith("feature_")),
                "val_accuracy": r.data.metrics["val_accuracy"],
                "registered": r.info.run_id in versions,
            }
            for r in children
        ],
    }


def test_a_sweep_on_local_ray_logs_what_the_in_process_sweep_logs(tracked) -> None:
    data = ["--data-dir", str(tracked["data"])]
    for engine in ("in-process", "ray"):
        sweep = write_config(tracked, f"sweep-{engine}.toml", SWEEP, epochs=25, experiment=f"sweep-{engine}")
        assert train_main([*data, "sweep", "--config", sweep, "--engine", engine, "--max-concurrent", "2"]) == 0
    client = MlflowClient()
    in_process, on_ray = sweep_structure(client, "sweep-in-process"), sweep_structure(client, "sweep-ray")
    assert on_ray == in_process
    assert [c["name"] for c in on_ray["children"]] == ["lr=0.003", "lr=1e-05"]
    assert all(c["parent"] and c["registered"] and c["status"] == "FINISHED" for c in on_ray["children"])
    engines = {
        client.get_run(r.info.run_id).data.params["engine"]
        for r in client.search_runs(
            [client.get_experiment_by_name("sweep-ray").experiment_id], "tags.mlflow.runName LIKE 'sweep:%'"
        )
    }
    assert engines == {"ray"}


def test_a_failed_ray_trial_is_reported_and_the_others_finish(tracked, capsys: pytest.CaptureFixture) -> None:
    sweep = write_config(tracked, "broken.toml", SWEEP, epochs=5, experiment="broken-sweep")
    Path(sweep).write_text(
        Path(sweep).read_text().replace("lr = [0.003, 0.00001]", 'backbone = ["efficientnet_lite0", "no_such_net"]')
    )
    assert train_main(["--data-dir", str(tracked["data"]), "sweep", "--config", sweep, "--engine", "ray"]) == 1
    lines = capsys.readouterr().out.strip().splitlines()[-2:]
    assert "val_accuracy" in lines[0] and "backbone=efficientnet_lite0" in lines[0]
    assert "backbone=no_such_net" in lines[1] and "failed:" in lines[1] and "no_such_net" in lines[1]
    client = MlflowClient()
    parent = client.search_runs(
        [client.get_experiment_by_name("broken-sweep").experiment_id], "tags.mlflow.runName LIKE 'sweep:%'"
    )[0]
    assert parent.data.metrics["failed_trials"] == 1 and parent.data.metrics["best_val_accuracy"] > 0


CV = """
backbone = "efficientnet_lite0"
end_to_end = true
image_size = 64
crop_ratio = 1.0
epochs = {epochs}
folds = 2
batch_size = 8
workers = 0
checkpoint_dir = "{cache}/checkpoints-cv"
experiment = "{experiment}"
"""


def test_cross_validation_folds_run_as_ray_trials(tracked) -> None:
    config = write_config(tracked, "cv.toml", CV, epochs=2, experiment="cv-ray")
    assert train_main(["--data-dir", str(tracked["data"]), "cv", "--config", config, "--engine", "ray"]) == 0
    client = MlflowClient()
    runs = client.search_runs([client.get_experiment_by_name("cv-ray").experiment_id])
    (parent,) = [r for r in runs if r.info.run_name.startswith("cv:")]
    children = {r.info.run_name: r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    assert set(children) == {"fold-1", "fold-2", "all"} and parent.data.params["engine"] == "ray"
    oof_names = load_logits(parent.info.run_id, OOF_LOGITS)[0]
    held_out = [load_logits(children[f"fold-{i}"].info.run_id, HOLDOUT_LOGITS)[0] for i in (1, 2)]
    assert sorted(oof_names) == sorted(held_out[0] + held_out[1])
    assert len(oof_names) == 24 and not set(held_out[0]) & set(held_out[1])  # the tiny trainval, once each
    assert parent.data.metrics["cv_folds"] == 2 and children["all"].data.tags["cv.parent_run_id"] == parent.info.run_id


def test_one_command_runs_a_throwaway_server_and_removes_it(tracked) -> None:
    port, databases = free_port(), set(Path(tempfile.gettempdir()).glob("pets-postgres-*"))
    server = subprocess.Popen(
        [sys.executable, "-m", "train", "server", "--port", str(port)],
        cwd=tracked["root"],
        env=os.environ | {"PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    announced = server.stdout.readline()  # printed once the server answers
    url = f"http://127.0.0.1:{port}"
    assert url in announced, announced
    artifacts = Path(announced.split("artifacts in ")[1].split(". ")[0])
    experiment = MlflowClient(url).create_experiment("tried-out")
    assert rest(url, "experiments/get", experiment_id=experiment)["experiment"]["name"] == "tried-out"
    server.terminate()
    assert server.wait(timeout=60) == 0
    assert not artifacts.exists() and set(Path(tempfile.gettempdir()).glob("pets-postgres-*")) == databases
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{url}/health", timeout=5)
