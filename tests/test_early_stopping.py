"""--stop_at_accuracy: a run ends, with its checkpoint, at the first evaluation
reaching the target, against the evaluations of the same run without it."""
import json

import pytest

from capsjax.data import DATASETS
from capsjax.models import MODELS
from capsjax.training import TrainConfig
from capsjax.training.checkpoint import Checkpointer
from capsjax.training.config import ConfigError
from toys import LINEAR, toy_dataset, train_script


@pytest.fixture
def toys(registered):
  registered(MODELS, "linear", LINEAR)
  registered(DATASETS, "toy", toy_dataset())


def records(workdir):
  """The records of a run, without the throughput (which differs run to run)."""
  return [{k: v for k, v in json.loads(line).items() if k != "images_per_sec"}
          for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def argv(workdir, *extra):
  return ["--model", "linear", "--dataset", "toy", "--batch_size", "8", "--steps", "24",
          "--eval_every", "4", "--log_every", "1", "--checkpoint_every", "24",
          "--eval_batch_size", "16", "--lr", "0.001", "--workdir", str(workdir), *extra]


@pytest.mark.slow
def test_stops_at_the_first_evaluation_reaching_the_target_and_stays_stopped(
    tmp_path, toys, capsys):
  assert train_script(argv(tmp_path / "full")) == 0
  full = records(tmp_path / "full")
  accuracy = {r["step"]: r["accuracy"] for r in full if r["split"] == "test"}
  assert sorted(accuracy) == [4, 8, 12, 16, 20, 24]
  assert len(set(accuracy.values())) > 2               # the accuracy moves between evaluations
  target = max(accuracy[s] for s in (4, 8, 12))
  first = min(s for s in accuracy if accuracy[s] >= target)          # 12 at the latest

  capsys.readouterr()
  workdir = tmp_path / "stopped"
  assert train_script(argv(workdir, "--stop_at_accuracy", str(target))) == 0
  out = capsys.readouterr().out
  assert f"--stop_at_accuracy {target:g} reached: stopping" in out
  assert Checkpointer(workdir / "checkpoints").all_steps() == [first]
  assert records(workdir) == [r for r in full if r["step"] <= first]   # the same run, cut
  # The same command again: nothing more is trained, the run is reported as it ended.
  assert train_script(argv(workdir, "--stop_at_accuracy", str(target))) == 0
  assert Checkpointer(workdir / "checkpoints").all_steps() == [first]
  assert records(workdir) == [r for r in full if r["step"] <= first]
  assert f'"stopped_at_accuracy": {target}' in capsys.readouterr().out
  # A higher target trains on from there.
  assert train_script(argv(workdir, "--stop_at_accuracy", "0")) == 0
  assert Checkpointer(workdir / "checkpoints").latest_step() == 24


@pytest.mark.parametrize("extra,match", [
    (dict(stop_at_accuracy=1.5), r"--stop_at_accuracy is a fraction in \[0, 1\]"),
    (dict(stop_at_accuracy=0.99, eval_every=0), "give --eval_every > 0"),
])
def test_bad_targets_are_refused(extra, match):
  with pytest.raises(ConfigError, match=match):
    TrainConfig(**extra).validate()
