"""train.learning.config: TOML in, validated dataclass out; unknown keys and bad values are named."""

from __future__ import annotations

import pytest

from tests.conftest import REPO
from train.learning.config import Config, ConfigError, load_config, load_sweep, logged_config, parse_override


def write(tmp_path, text: str):
    path = tmp_path / "c.toml"
    path.write_text(text)
    return path


def test_defaults_and_overrides(tmp_path) -> None:
    config = load_config(write(tmp_path, 'backbone = "efficientnet_lite2"\nlr = 1'), ["epochs=3", "head=mlp"])
    assert config == Config(backbone="efficientnet_lite2", lr=1.0, epochs=3, head="mlp")


def test_unknown_key_is_named(tmp_path) -> None:
    with pytest.raises(ConfigError, match="Unknown config key 'learning_rate'"):
        load_config(write(tmp_path, "learning_rate = 0.1"))


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("lr = -1.0", "lr"),
        ('head = "transformer"', "head"),
        ("epochs = 0", "epochs"),
        ('epochs = "ten"', "epochs"),
        ("val_fraction = 1.5", "val_fraction"),
        ("views = true", "views"),
    ],
)
def test_bad_values_are_named(tmp_path, text: str, key: str) -> None:
    with pytest.raises(ConfigError, match=f"'{key}'"):
        load_config(write(tmp_path, text))


def test_override_parsing() -> None:
    assert parse_override("lr=3e-4") == ("lr", 3e-4)
    assert parse_override("backbone=efficientnet_lite1") == ("backbone", "efficientnet_lite1")
    with pytest.raises(ConfigError, match="key=value"):
        parse_override("lr")


def test_sweep_expands_the_grid(tmp_path) -> None:
    path = write(tmp_path, '[base]\nepochs = 5\n[grid]\nlr = [0.1, 0.01]\nhead = ["linear", "mlp"]\n')
    configs = load_sweep(path)
    assert len(configs) == 4
    assert {(c.lr, c.head) for c in configs} == {(0.1, "linear"), (0.1, "mlp"), (0.01, "linear"), (0.01, "mlp")}
    assert all(c.epochs == 5 for c in configs)


def test_sweep_trials_are_named_by_what_sets_them_apart(tmp_path) -> None:
    from train.experiments.trials import grid_names

    configs = load_sweep(write(tmp_path, '[base]\nepochs = 5\n[grid]\nlr = [0.1, 0.01]\nhead = ["linear", "mlp"]\n'))
    assert [name for name, _ in grid_names(configs)][:2] == ["head=linear,lr=0.1", "head=mlp,lr=0.1"]
    assert grid_names(configs[:1]) == [("trial", configs[0])]


def test_trial_resources_are_checked_and_do_not_change_what_a_run_learns(tmp_path) -> None:
    with pytest.raises(ConfigError, match="'trial_cpus'"):
        load_config(write(tmp_path, "trial_cpus = 0"))
    config = load_config(write(tmp_path, "trial_gpus = 0.5"))
    assert config.trial_gpus == 0.5 and config.training_params() == Config().training_params()


def test_a_negative_max_concurrent_stops_before_anything_runs(tmp_path, capsys) -> None:
    from train.__main__ import main

    sweep = write(tmp_path, "[grid]\nlr = [0.1]\n")
    assert main(["sweep", "--config", str(sweep), "--engine", "ray", "--max-concurrent", "-1"]) == 2
    assert "--max-concurrent" in capsys.readouterr().err


def test_sweep_rejects_unknown_tables_and_keys(tmp_path) -> None:
    with pytest.raises(ConfigError, match="Unknown sweep table"):
        load_sweep(write(tmp_path, "[grids]\nlr = [1.0]"))
    with pytest.raises(ConfigError, match="Unknown config key 'rate'"):
        load_sweep(write(tmp_path, "[grid]\nrate = [1.0]"))


def test_missing_file_and_bad_toml(tmp_path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(write(tmp_path, "lr = = 1"))


@pytest.mark.parametrize(
    "recipe", sorted(p.name for p in (REPO / "train" / "configs").glob("*.toml") if p.stem not in ("gates", "publish"))
)
def test_every_shipped_recipe_loads(recipe: str) -> None:
    path = REPO / "train" / "configs" / recipe
    configs = load_sweep(path) if recipe.startswith("sweep_") else [load_config(path)]
    assert configs and all(c.epochs >= 1 for c in configs)


def test_a_run_config_logged_before_the_retired_recipes_went_still_rebuilds(tmp_path) -> None:
    """Registered versions logged keep_teacher and fine_tuned_*: export rebuilds those that did not use them."""
    retired = {"keep_teacher": False, "fine_tuned_onnx": "", "fine_tuned_sha256": ""}
    logged = Config(lr=0.003).as_params() | retired
    assert logged_config(logged) == Config(lr=0.003)
    with pytest.raises(ConfigError, match="it used fine_tuned_onnx, fine_tuned_sha256, retired after commit 0242e1d"):
        logged_config(logged | {"fine_tuned_onnx": "x.onnx", "fine_tuned_sha256": "ab"})
    with pytest.raises(ConfigError, match="Unknown config key 'keep_teacher'"):  # no recipe sets them any more
        load_config(write(tmp_path, "keep_teacher = false"))


def test_balance_is_checked() -> None:
    with pytest.raises(ConfigError, match="balance"):
        Config(balance="cubic")


@pytest.mark.parametrize(
    "off", [{"finetune_blocks": 0, "extra_data": [], "prior_correction": False}, {"extra_data": "()"}]
)
def test_a_run_logged_before_partial_fine_tuning_and_extra_folders_went_still_rebuilds(off: dict) -> None:
    """Runs logged finetune_blocks, extra_data and prior_correction (a tuple comes back from JSON as a list, from
    MLflow's params as a string): those that left them off rebuild; one that used them is named."""
    assert logged_config(Config(lr=0.003).as_params() | off) == Config(lr=0.003)
    used = {"finetune_blocks": 6, "extra_data": ["data/stanford-dogs-extra"], "prior_correction": True}
    with pytest.raises(ConfigError, match="it used extra_data, finetune_blocks, prior_correction, retired after"):
        logged_config(Config().as_params() | used)


def test_distillation_inside_end_to_end_fine_tuning_is_refused_in_one_line() -> None:
    with pytest.raises(ConfigError, match="distill_weight > 0 needs the frozen backbone") as refused:
        Config(end_to_end=True, distill_weight=1.0)
    assert "\n" not in str(refused.value)
    assert Config(end_to_end=True).distill_weight == 0.0 and Config(distill_weight=1.0).distill_weight == 1.0
