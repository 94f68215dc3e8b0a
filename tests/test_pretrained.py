"""Pretrained models: a run exported, registered and loaded back with one call, its
file checked by SHA256, its accuracy against the run's own evaluation; every shipped
model against the checksum and the test accuracy its entry (and the docs) give."""
import hashlib
import importlib.util
import json

import jax
import numpy as np
import pytest

from capsjax.data import DATASETS
from capsjax.models import (MODELS, PRETRAINED, PretrainedFileError, PretrainedModel,
                            pretrained)
from capsjax.models.pretrained import weights_path
import orbax.checkpoint as ocp
from toys import ROOT, TOY_BN, toy_dataset, train_script


def script(name):
  spec = importlib.util.spec_from_file_location(name, ROOT / "experiments" / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.fixture
def exported(tmp_path, registered, capsys):
  """A BatchNorm toy trained 6 steps, exported and registered as "toy_bn"."""
  registered(MODELS, "toy_bn", TOY_BN)
  registered(DATASETS, "toy", toy_dataset())
  workdir = tmp_path / "run"
  assert train_script(["--model", "toy_bn", "--dataset", "toy", "--batch_size", "8",
                       "--steps", "6", "--eval_every", "6", "--checkpoint_every", "6",
                       "--eval_batch_size", "16", "--workdir", str(workdir)]) == 0
  capsys.readouterr()
  out = tmp_path / "toy_bn.msgpack"
  assert script("export_pretrained").main(["--workdir", str(workdir), "--out", str(out)]) == 0
  printed = capsys.readouterr().out
  entry = json.loads(printed.split("entry ", 1)[1])
  assert entry["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
  registered(PRETRAINED, "toy_bn", PretrainedModel(
      entry["config"], str(out), entry["sha256"], entry["test_accuracy"]))
  return workdir, out, entry


@pytest.mark.slow
def test_a_run_exported_loads_back_with_its_state_and_accuracy(exported, capsys):
  workdir, _, entry = exported
  module, variables = pretrained("toy_bn")
  # The same arrays as the run's checkpoint, read with orbax directly.
  manager = ocp.CheckpointManager((workdir / "checkpoints").absolute())
  saved = manager.restore(6, args=ocp.args.StandardRestore())
  manager.close()
  np.testing.assert_array_equal(variables["params"]["caps"]["kernel"],
                                saved["params"]["caps"]["kernel"])
  np.testing.assert_array_equal(variables["batch_stats"]["bn"]["var"],
                                saved["model_state"]["batch_stats"]["bn"]["var"])
  assert float(np.abs(variables["batch_stats"]["bn"]["mean"]).sum()) > 0  # trained state
  images = np.random.default_rng(0).uniform(size=(3, 24, 24, 3)).astype(np.float32)
  assert module.apply(variables, images).scores.shape == (3, 4)
  # The accuracy the training loop logged at its last step, and evaluate.py's.
  test = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()
          if '"test"' in line]
  assert entry["test_accuracy"] == test[-1]["accuracy"]
  assert script("evaluate").main(["--pretrained", "toy_bn"]) == 0
  result = json.loads(capsys.readouterr().out.split("evaluation ", 1)[1])
  assert result["accuracy"] == result["registered_accuracy"] == test[-1]["accuracy"]
  assert jax.tree.structure(variables) == jax.tree.structure(
      {"params": saved["params"], **saved["model_state"]})


@pytest.mark.slow
def test_an_evaluation_batch_that_does_not_divide_the_devices_is_rounded_up(
    exported, registered, capsys):
  """A model registered with --eval_batch_size 20 evaluates on the 8 test devices (as
  one trained on a GPU does on a pod): the same accuracy, all examples counted once."""
  _, out, entry = exported
  registered(PRETRAINED, "toy_bn_20", PretrainedModel(
      {**entry["config"], "eval_batch_size": 20}, str(out), entry["sha256"],
      entry["test_accuracy"]))
  assert len(jax.devices()) == 8
  assert script("evaluate").main(["--pretrained", "toy_bn_20"]) == 0
  result = json.loads(capsys.readouterr().out.split("evaluation ", 1)[1])
  assert result["accuracy"] == entry["test_accuracy"]
  assert result["test_examples"] == 16                   # the toy test split, padded to 24


@pytest.mark.slow
def test_an_altered_missing_or_misfit_file_is_refused_with_the_fix(
    exported, registered, capsys):
  _, out, entry = exported
  original = out.read_bytes()
  altered = bytearray(original)
  altered[len(altered) // 2] ^= 1
  out.write_bytes(bytes(altered))
  with pytest.raises(PretrainedFileError, match="has SHA256 .* not the registered"):
    pretrained("toy_bn")
  evaluate = script("evaluate")
  with pytest.raises(SystemExit) as exit_:                 # one line, exit 2
    evaluate.cli.run(lambda: evaluate.main(["--pretrained", "toy_bn"]))
  assert exit_.value.code == 2
  err = capsys.readouterr().err
  assert err.startswith("error: pretrained model 'toy_bn'") and err.count("\n") == 1
  out.unlink()
  with pytest.raises(PretrainedFileError, match="is missing; reinstall capsjax"):
    pretrained("toy_bn")
  # The intact file registered with a config of another network (5 classes, not 4).
  out.write_bytes(original)
  registered(DATASETS, "toy5", toy_dataset(num_classes=5))
  registered(PRETRAINED, "toy_bn_5", PretrainedModel(
      {**entry["config"], "dataset": "toy5"}, str(out), entry["sha256"], 0.0))
  with pytest.raises(PretrainedFileError, match="do not fit the network"):
    pretrained("toy_bn_5")


def test_unknown_names_list_the_registered_ones(capsys):
  evaluate = script("evaluate")
  with pytest.raises(SystemExit) as exit_:
    evaluate.cli.run(lambda: evaluate.main(["--pretrained", "no_such"]))
  assert exit_.value.code == 2
  assert "unknown pretrained model 'no_such'; registered:" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("name", PRETRAINED.names())
def test_shipped_models_match_their_checksum_and_documented_accuracy(name, capsys):
  entry = PRETRAINED.get(name)
  assert hashlib.sha256(weights_path(entry).read_bytes()).hexdigest() == entry.sha256
  assert script("evaluate").main(["--pretrained", name, "--data_source", "bundled"]) == 0
  result = json.loads(capsys.readouterr().out.split("evaluation ", 1)[1])
  assert result["test_examples"] == 10_000
  assert abs(result["accuracy"] - entry.test_accuracy) <= 1e-4     # 0.01 %
  assert f"{100 * entry.test_accuracy:.2f} %" in (ROOT / "docs" / "results.md").read_text()
