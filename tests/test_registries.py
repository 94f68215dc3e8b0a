"""Routers, models and datasets chosen by name; users register their own without
editing capsjax; presets; model state (BatchNorm) through the train step."""
import dataclasses
import json
import pathlib

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from capsjax.data import DATASETS
from capsjax.models import MODELS
from capsjax.registry import Registry, UnknownNameError
from capsjax.routing import ROUTERS, dynamic_routing, squash
from capsjax.training import (
    Checkpointer, ConfigError, TrainConfig, init_state, make_mesh, make_model, make_optimizer,
    make_train_step, shard_batch, train_and_evaluate)

from toys import SMALL, TOY_BN, toy_dataset, train_script


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path, monkeypatch):
  monkeypatch.setenv("CAPSJAX_CACHE_DIR", str(tmp_path / "xla_cache"))


# ----------------------------------------------------------------------------
# A toy router, registered from here, trains through experiments/train.py.

@pytest.mark.slow
def test_toy_router_registered_outside_the_package_trains(tmp_path, registered):
  calls = []

  def uniform_routing(u_hat, num_iters, **options):
    """Uniform coupling: every child sends 1/n_out of itself to every parent."""
    calls.append((u_hat.shape, num_iters))
    c = jnp.full(u_hat.shape[:-1], 1.0 / u_hat.shape[-2], u_hat.dtype)
    return squash(jnp.einsum("...ij,...ijd->...jd", c, u_hat)), c

  registered(ROUTERS, "uniform", uniform_routing)
  workdir = tmp_path / "run"
  assert train_script(["--dataset", "mnist", "--routing", "uniform", "--routing_iters", "2",
                       *SMALL, "--workdir", str(workdir)]) == 0
  assert calls and all(shape[-3:] == (1152, 10, 16) and iters == 2 for shape, iters in calls)
  config = json.loads((workdir / "config.json").read_text())
  assert config["routing"] == "uniform"
  steps = [json.loads(line)["step"] for line in (workdir / "metrics.jsonl").read_text().splitlines()
           if json.loads(line)["split"] == "train"]
  assert steps == [1, 2]
  # Uniform coupling is dynamic routing with one iteration: the same v.
  u_hat = jax.random.normal(jax.random.key(0), (3, 7, 4, 5))
  np.testing.assert_allclose(uniform_routing(u_hat, 1)[0], dynamic_routing(u_hat, 1)[0],
                             rtol=1e-6)


def test_router_options_and_unknown_names_are_config_errors(tmp_path, registered):
  registered(ROUTERS, "no_options", lambda u_hat, num_iters: dynamic_routing(u_hat, num_iters))
  base = dict(dataset="mnist", workdir=str(tmp_path / "run"))
  with pytest.raises(ConfigError, match="--stop_gradient_inner is an option of the dynamic"):
    TrainConfig(routing="no_options", stop_gradient_inner=True, **base).validate()
  with pytest.raises(ConfigError, match=r"--routing 'nope' is unknown; use one of .*dynamic"):
    TrainConfig(routing="nope", **base).validate()
  with pytest.raises(ConfigError, match=r"--model 'nope' is unknown; use one of .*capsnet"):
    TrainConfig(model="nope", **base).validate()
  TrainConfig(routing="dynamic", stop_gradient_inner=True, **base).validate()


# ----------------------------------------------------------------------------
# A toy dataset spec (toys.py): 3 channels, 4 classes, 24x24.

@pytest.mark.slow
def test_toy_dataset_registered_outside_the_package_trains(tmp_path, registered):
  registered(DATASETS, "toy", toy_dataset())
  workdir = tmp_path / "run"
  assert train_script(["--dataset", "toy", *SMALL, "--workdir", str(workdir)]) == 0
  config = TrainConfig.load(workdir / "config.json")
  assert config.decay_steps == 100  # the spec's default decay period
  model, tx = make_model(config), make_optimizer(config)
  state = Checkpointer(workdir / "checkpoints").restore(init_state(model, tx, (24, 24, 3), 0))
  assert int(state.step) == 2
  chex.assert_shape(state.params["conv1"]["kernel"], (9, 9, 3, 256))     # 3 input channels
  chex.assert_shape(state.params["digit_caps"]["W"], (4 * 4 * 32, 4, 16, 8))  # 4 classes
  chex.assert_shape(state.params["decoder"]["fc3"]["kernel"], (1024, 24 * 24 * 3))
  assert (workdir / "reconstructions.png").stat().st_size > 1000


def test_model_that_does_not_fit_the_dataset_is_a_config_error(tmp_path, registered):
  spec = MODELS.get("capsnet")
  registered(MODELS, "capsnet_28", dataclasses.replace(spec, image_shape=(28, 28, 1)))
  with pytest.raises(ConfigError, match=r"--model capsnet_28 needs images \(28, 28, 1\), the "
                     r"dataset has \(36, 36, 1\)"):
    TrainConfig(model="capsnet_28", dataset="multimnist").validate()
  with pytest.raises(ConfigError, match="--dataset 'cifar' is unknown.*tfds:NAME"):
    TrainConfig(dataset="cifar").validate()


# ----------------------------------------------------------------------------
# A model with BatchNorm (toys.py): batch_stats through the state, the step, checkpoints.

def test_batch_stats_are_carried_and_averaged_over_devices(tmp_path, registered):
  registered(MODELS, "toy_bn", TOY_BN)
  registered(DATASETS, "toy", toy_dataset())
  config = TrainConfig(model="toy_bn", dataset="toy", batch_size=16, eval_batch_size=16,
                       seed=0, workdir=str(tmp_path)).validate(num_devices=8)
  model, tx = make_model(config), make_optimizer(config)
  state = init_state(model, tx, (24, 24, 3), seed=0)
  assert set(state.model_state) == {"batch_stats"}
  np.testing.assert_array_equal(state.model_state["batch_stats"]["bn"]["mean"], 0)
  train, _ = config.data.build(config)
  batch = train.batch(0, 16)
  # Reference in NumPy: the running mean moves by (1 - momentum) x the batch
  # mean of the BatchNorm input; the 8 devices' slices average to the batch.
  dense = {k: np.asarray(v, np.float64) for k, v in state.params["dense"].items()}
  features = batch["image"].reshape(16, -1) @ dense["kernel"] + dense["bias"]
  mesh = make_mesh()
  assert mesh.size == 8
  new, _ = make_train_step(model, tx, mesh, config)(state, shard_batch(batch, mesh))
  np.testing.assert_allclose(new.model_state["batch_stats"]["bn"]["mean"],
                             0.1 * features.mean(0), rtol=2e-4, atol=1e-6)


@pytest.mark.slow
def test_batch_stats_resume_bitwise(tmp_path, registered):
  registered(MODELS, "toy_bn", TOY_BN)
  registered(DATASETS, "toy", toy_dataset())
  base = dict(model="toy_bn", dataset="toy", batch_size=16, eval_every=0, log_every=1,
              checkpoint_every=2, eval_batch_size=16)
  train_and_evaluate(TrainConfig(steps=6, workdir=str(tmp_path / "full"), **base))
  train_and_evaluate(TrainConfig(steps=3, workdir=str(tmp_path / "half"), **base))
  train_and_evaluate(TrainConfig(steps=6, workdir=str(tmp_path / "half"), **base))
  config = TrainConfig(**base)
  model, tx = make_model(config), make_optimizer(config)
  states = [Checkpointer(tmp_path / name / "checkpoints").restore(
      init_state(model, tx, (24, 24, 3), 0)) for name in ("full", "half")]
  assert int(states[0].step) == int(states[1].step) == 6
  assert jax.tree.leaves(states[0].model_state)  # the checkpoint holds batch_stats
  for a, b in zip(jax.tree.leaves(states[0]), jax.tree.leaves(states[1])):
    np.testing.assert_array_equal(a, b)
  init = init_state(model, tx, (24, 24, 3), 0)
  assert not np.array_equal(states[0].model_state["batch_stats"]["bn"]["mean"],
                            init.model_state["batch_stats"]["bn"]["mean"])


# ----------------------------------------------------------------------------
# Presets.

def test_presets_are_valid_configs_with_their_command():
  from capsjax.presets import PRESETS
  assert {"quickstart", "mnist_paper", "multimnist_paper"} <= set(PRESETS)
  for name in PRESETS:
    preset = PRESETS[name]
    config = TrainConfig(**preset.values).validate()
    assert f"python experiments/train.py --config {name}" in preset.doc
    assert config.run_dir == pathlib.Path("runs") / name


def test_flags_override_the_preset():
  from capsjax import cli
  config = cli.parse_config("", ["--config", "mnist_paper", "--routing_iters", "1",
                                 "--workdir", "x"])
  assert (config.dataset, config.batch_size, config.epochs) == ("mnist", 128, 1200)
  assert (config.routing_iters, config.workdir) == (1, "x")
  assert cli.parse_config("", []) == TrainConfig()
  with pytest.raises(SystemExit):
    cli.parse_config("", ["--config", "no_such_preset"])


# ----------------------------------------------------------------------------
# The registry itself.

def test_registry_names_errors_and_duplicates():
  registry = Registry("widget", "somewhere.WIDGETS")

  @registry.register("b")
  def b():
    pass

  registry.register("a", 1)
  assert registry.names() == ["a", "b"] and "a" in registry and registry["b"] is b
  with pytest.raises(UnknownNameError, match=r"unknown widget 'c'; registered: a, b \(add one "
                     r"with somewhere.WIDGETS.register\)"):
    registry.get("c")
  with pytest.raises(ValueError, match="already registered"):
    registry.register("a", 2)
  registry.register("a", 2, replace=True)
  assert registry["a"] == 2
  assert ROUTERS["dynamic"] is dynamic_routing and "capsnet" in MODELS
  assert {"mnist", "multimnist", "fashion_mnist"} <= set(DATASETS)


@pytest.mark.slow
def test_prepared_tfds_dataset_trains_by_name(tmp_path):
  import tensorflow_datasets as tfds
  workdir = tmp_path / "run"
  with tfds.testing.mock_data(num_examples=16):
    assert train_script(["--dataset", "tfds:cifar10", *SMALL, "--workdir", str(workdir)]) == 0
    config = TrainConfig.load(workdir / "config.json")
    model, tx = make_model(config), make_optimizer(config)  # reads the dataset's features
  records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in records if r["split"] == "train"] == [1, 2]
  assert [r["test_examples"] for r in records if r["split"] == "test"] == [16]
  state = Checkpointer(workdir / "checkpoints").restore(init_state(model, tx, (32, 32, 3), 0))
  chex.assert_shape(state.params["conv1"]["kernel"], (9, 9, 3, 256))
  chex.assert_shape(state.params["decoder"]["fc3"]["kernel"], (1024, 32 * 32 * 3))
