"""--stop_at_accuracy: a run ends, with its checkpoint, at the first evaluation
reaching the target, against the evaluations of the same run without it;
--train_minutes: a run ends, with its checkpoint and an evaluation, once its
wall-clock time (summed over resumed runs) reaches the budget."""
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
  """The records of a run, without the timings (which differ run to run)."""
  return [{k: v for k, v in json.loads(line).items()
           if k not in ("images_per_sec", "train_seconds")}
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


@pytest.mark.slow
def test_a_time_budget_ends_the_run_saved_and_evaluated_and_resumes_add_up(
    tmp_path, toys, capsys):
  workdir = tmp_path / "run"
  budget = ["--train_minutes", "1e-6"]          # 60 us: spent within the first step
  assert train_script(argv(workdir, *budget)) == 0
  assert "--train_minutes 1e-06 used: stopping" in capsys.readouterr().out
  assert Checkpointer(workdir / "checkpoints").all_steps() == [1]
  logged = [(r["step"], r["split"]) for r in records(workdir)]
  assert logged == [(1, "train"), (1, "test")]            # evaluated where it stopped
  first = json.loads((workdir / "metrics.jsonl").read_text().splitlines()[0])["train_seconds"]
  assert first > 1e-6 * 60
  # The same command again: the budget is spent, nothing more is trained.
  assert train_script(argv(workdir, *budget)) == 0
  assert '"stopped_at_train_minutes": 1e-06' in capsys.readouterr().out
  assert Checkpointer(workdir / "checkpoints").all_steps() == [1]
  # A larger budget goes on from there, counting the time already spent.
  assert train_script(argv(workdir, "--train_minutes", "60")) == 0
  assert Checkpointer(workdir / "checkpoints").latest_step() == 24
  seconds = [json.loads(line)["train_seconds"]
             for line in (workdir / "metrics.jsonl").read_text().splitlines()
             if '"train"' in line]
  assert len(seconds) == 24 and seconds[0] == first
  assert all(b > a for a, b in zip(seconds, seconds[1:])) and seconds[1] > first


@pytest.mark.parametrize("extra,match", [
    (dict(train_minutes=-1.0), "--train_minutes must be >= 0"),
    (dict(train_minutes=float("inf")), "--train_minutes inf: give a finite number"),
    (dict(train_minutes=float("nan")), "--train_minutes nan: give a finite number"),
    (dict(stop_at_accuracy=1.5), r"--stop_at_accuracy is a fraction in \[0, 1\]"),
    (dict(stop_at_accuracy=0.99, eval_every=0), "give --eval_every > 0"),
])
def test_bad_targets_are_refused(extra, match):
  with pytest.raises(ConfigError, match=match):
    TrainConfig(**extra).validate()
