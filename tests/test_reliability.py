"""Reliability: a run can be killed at any moment and lose nothing; bad flags and
files never cost a run. The small runs here use the toy model of toys.py, which
compiles in about a second."""
import dataclasses
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from capsjax.data import DATASETS, MnistFileError, load_mnist
from capsjax.data import mnist as mnist_lib
from capsjax.losses import margin_loss
from capsjax.models import MODELS
from capsjax.training import (
    CheckpointError, Checkpointer, ConfigError, NonFiniteLossError, TrainConfig, evaluate_workdir,
    init_state, make_model, make_optimizer, train_and_evaluate)
from capsjax.training import loop
from capsjax.training.logs import RunLog

from toys import ROOT, TOY_BN, toy_dataset

TOY = dict(model="toy_bn", dataset="toy", batch_size=16, eval_every=0, log_every=1,
           checkpoint_every=1, eval_batch_size=16)


@pytest.fixture
def toys(registered):
  registered(MODELS, "toy_bn", TOY_BN)
  registered(DATASETS, "toy", toy_dataset())


def restored(workdir):
  config = TrainConfig.load(workdir / "config.json")
  model, tx = make_model(config), make_optimizer(config)
  return Checkpointer(workdir / "checkpoints").restore(
      init_state(model, tx, config.data.image_shape, config.seed))


def records(workdir):
  return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


# ----------------------------------------------------------------------------
# The NaN guard saves only states whose parameters are known finite.

def nan_gradient_loss(out, batch, config, step):
  """A finite loss whose gradient is NaN: d sqrt(0 x)/dx = inf x 0."""
  del config
  loss = margin_loss(out.scores, batch["multi_hot"])
  return loss + 0.0 * jnp.sqrt(0.0 * out.scores[:, 0]), {}


def test_nan_gradients_with_a_finite_loss_stop_before_saving(tmp_path, toys, registered):
  import dataclasses
  registered(MODELS, "toy_nan_grad", dataclasses.replace(TOY_BN, loss=nan_gradient_loss))
  config = TrainConfig(**{**TOY, "model": "toy_nan_grad"}, steps=4, workdir=str(tmp_path))
  with pytest.raises(NonFiniteLossError, match=r"^grad_norm is nan; the parameters are not "
                     r"finite at step 1; stopped, no checkpoint was saved\. Lower --lr\.$"):
    train_and_evaluate(config)
  assert Checkpointer(tmp_path / "checkpoints").latest_step() is None


def _resume_from_a_corrupted_state(tmp_path, corrupt, **overrides):
  """Trains 1 step, replaces checkpoint 1 by ``corrupt(state)``, then resumes
  for 2 more steps; returns the NonFiniteLossError's message."""
  config = TrainConfig(**{**TOY, **overrides}, steps=1, workdir=str(tmp_path))
  train_and_evaluate(config)
  state = corrupt(restored(tmp_path))
  shutil.rmtree(tmp_path / "checkpoints")
  checkpoints = Checkpointer(tmp_path / "checkpoints")
  checkpoints.save(1, state)
  checkpoints.close()
  with pytest.raises(NonFiniteLossError) as info:
    train_and_evaluate(config.replace(steps=3))
  assert Checkpointer(tmp_path / "checkpoints").all_steps() == [1]  # nothing bad saved
  return str(info.value)


def test_parameters_that_overflow_with_a_finite_loss_stop_before_saving(tmp_path, toys):
  # Adam's first moment set to inf: the loss and gradients of step 2 are
  # finite (they use the old parameters), its update makes parameters inf.
  def corrupt(state):
    mu = state.opt_state[0].mu
    mu["caps"]["bias"] = mu["caps"]["bias"].at[0].set(np.inf)
    return state
  message = _resume_from_a_corrupted_state(tmp_path, corrupt)
  assert message == (f"the parameters are not finite at step 2; stopped, the last good "
                     f"checkpoint (step 1) is kept in {tmp_path / 'checkpoints'}. Lower --lr.")


def test_model_state_that_overflows_stops_before_saving_and_advice_fits_bf16(tmp_path, toys):
  # BatchNorm's running mean set to inf: training uses the batch's statistics,
  # so loss, gradients and parameters stay finite; the new running mean does not.
  def corrupt(state):
    stats = state.model_state["batch_stats"]["bn"]
    stats["mean"] = stats["mean"].at[3].set(np.inf)
    return state
  message = _resume_from_a_corrupted_state(tmp_path, corrupt, precision="bf16")
  assert message.startswith("the model state (e.g. BatchNorm statistics) is not finite at "
                            "step 2; stopped, the last good checkpoint (step 1)")
  assert message.endswith("Lower --lr, or use --precision fp32.")


# ----------------------------------------------------------------------------
# Logs: once per step after kills; the learning rate of the step's own update.

def test_resume_drops_the_rows_a_killed_run_wrote_past_its_checkpoint(tmp_path):
  path = tmp_path / "metrics.jsonl"
  rows = [json.dumps({"step": s, "split": "train", "loss": 1.0 / s}) + "\n" for s in range(1, 9)]
  rows.insert(4, json.dumps({"step": 4, "split": "test", "accuracy": 0.5}) + "\n")
  path.write_text("".join(rows) + '{"step": 9, "split": "tr')   # torn by the kill
  log = RunLog(tmp_path, resume_step=4)
  log.write({"step": 5, "split": "train", "loss": 0.2})
  steps = [(r["step"], r["split"]) for r in records(tmp_path)]
  assert steps == [(1, "train"), (2, "train"), (3, "train"), (4, "train"), (4, "test"),
                   (5, "train")]
  RunLog(tmp_path, resume_step=0)  # a fresh start (no checkpoint) keeps nothing
  assert path.read_text() == ""


def test_logged_learning_rate_is_the_one_of_the_steps_update(tmp_path, toys):
  train_and_evaluate(TrainConfig(**TOY, steps=3, lr=0.01, lr_decay_rate=0.5, lr_decay_steps=1,
                                 lr_min=0.0, workdir=str(tmp_path)))
  lrs = [r["lr"] for r in records(tmp_path) if r["split"] == "train"]
  np.testing.assert_allclose(lrs, [0.01, 0.005, 0.0025], rtol=1e-6)  # updates 0, 1, 2


def test_signal_during_the_last_step_still_finishes_the_run(tmp_path, toys, monkeypatch):
  write = RunLog.write

  def write_and_signal(self, record):
    if record["step"] == 3 and record["split"] == "train":
      os.kill(os.getpid(), signal.SIGTERM)
    write(self, record)

  monkeypatch.setattr(RunLog, "write", write_and_signal)
  summary = train_and_evaluate(TrainConfig(**TOY, steps=3, workdir=str(tmp_path)))
  assert "interrupted" not in summary and summary["step"] == 3
  assert (tmp_path / "curves.png").exists()


# ----------------------------------------------------------------------------
# Evaluation records survive a kill at any moment.

class Killed(BaseException):
  """Stands for SIGKILL: nothing after it runs."""


def test_a_kill_during_the_final_evaluation_loses_nothing(tmp_path, toys, monkeypatch):
  config = TrainConfig(**TOY, steps=3, workdir=str(tmp_path))
  evaluate = loop.evaluate

  def killed_at_step_3(eval_step, variables, test, mesh, batch_size):
    raise Killed()

  monkeypatch.setattr(loop, "evaluate", killed_at_step_3)
  with pytest.raises(Killed):
    train_and_evaluate(config)
  # The checkpoint comes before the evaluation of its step: no training is lost.
  assert Checkpointer(tmp_path / "checkpoints").latest_step() == 3
  monkeypatch.setattr(loop, "evaluate", evaluate)
  summary = train_and_evaluate(config)
  tests = [r for r in records(tmp_path) if r["split"] == "test"]
  assert [r["step"] for r in tests] == [3]
  assert tests[0]["accuracy"] == summary["accuracy"]


def test_a_kill_during_a_midway_evaluation_keeps_the_steps_and_evaluates_them_on_resume(
    tmp_path, toys, monkeypatch):
  # As when an evaluation batch too large for memory gets the process killed.
  config = TrainConfig(**{**TOY, "checkpoint_every": 2, "eval_every": 2}, steps=6,
                       workdir=str(tmp_path))
  evaluate, calls = loop.evaluate, []

  def killed_at_the_second_evaluation(*args):
    calls.append(1)
    if len(calls) == 2:
      raise Killed()
    return evaluate(*args)

  monkeypatch.setattr(loop, "evaluate", killed_at_the_second_evaluation)
  with pytest.raises(Killed):
    train_and_evaluate(config)
  assert Checkpointer(tmp_path / "checkpoints").latest_step() == 4
  assert [r["step"] for r in records(tmp_path) if r["split"] == "test"] == [2]
  monkeypatch.setattr(loop, "evaluate", evaluate)
  train_and_evaluate(config)
  assert [r["step"] for r in records(tmp_path) if r["split"] == "test"] == [2, 4, 6]
  assert [r["step"] for r in records(tmp_path) if r["split"] == "train"] == [1, 2, 3, 4, 5, 6]
  uninterrupted = tmp_path / "uninterrupted"
  train_and_evaluate(dataclasses.replace(config, workdir=str(uninterrupted)))
  assert [r for r in records(tmp_path) if r["split"] == "test"] == [
      r for r in records(uninterrupted) if r["split"] == "test"]


def test_a_finished_run_missing_its_last_evaluation_record_writes_it_once(tmp_path, toys):
  config = TrainConfig(**TOY, steps=2, workdir=str(tmp_path))
  train_and_evaluate(config)
  lines = (tmp_path / "metrics.jsonl").read_text().splitlines(keepends=True)
  (tmp_path / "metrics.jsonl").write_text(
      "".join(line for line in lines if '"split": "test"' not in line))
  for _ in range(2):  # the first rerun writes it, the second finds it
    summary = train_and_evaluate(config)
    tests = [r for r in records(tmp_path) if r["split"] == "test"]
    assert [r["step"] for r in tests] == [2]
    assert tests[0]["accuracy"] == summary["accuracy"]


# ----------------------------------------------------------------------------
# Checkpoints that cannot be restored say what failed.

def test_checkpoint_errors_say_what_failed(tmp_path, toys):
  train_and_evaluate(TrainConfig(**TOY, steps=2, workdir=str(tmp_path / "toy")))
  config = TrainConfig(**TOY)
  model, tx = make_model(config), make_optimizer(config)
  target = init_state(model, tx, (24, 24, 3), 0)
  checkpoints = Checkpointer(tmp_path / "toy" / "checkpoints")
  with pytest.raises(CheckpointError, match=r"there is no checkpoint .*/7; the checkpoints in "
                     r".* are \[1, 2\]"):
    checkpoints.restore(target, step=7)
  other = TrainConfig(**{**TOY, "dataset": "mnist"})       # another input shape: other params
  wrong = init_state(make_model(other), tx, (28, 28, 1), 0)
  with pytest.raises(CheckpointError, match="does not hold the state of this configuration"):
    checkpoints.restore(wrong)


def test_a_checkpoint_dir_without_config_json(tmp_path, toys):
  train_and_evaluate(TrainConfig(**TOY, steps=1, workdir=str(tmp_path)))
  (tmp_path / "config.json").unlink()
  with pytest.raises(ConfigError, match="holds checkpoints but no config.json"):
    train_and_evaluate(TrainConfig(**TOY, steps=2, workdir=str(tmp_path)))
  with pytest.raises(ConfigError, match="has no config.json; pass the --workdir of a training"):
    evaluate_workdir(tmp_path)


def test_bundled_files_that_fail_their_sha256_are_refused(tmp_path, monkeypatch):
  copy = tmp_path / "bundled"
  shutil.copytree(mnist_lib.BUNDLED_DIR, copy)
  victim = copy / "t10k-labels-idx1-ubyte.gz"
  data = bytearray(victim.read_bytes())
  data[100] ^= 0xFF
  victim.write_bytes(bytes(data))
  monkeypatch.setitem(mnist_lib.IDX_DATASETS, "mnist",
                      mnist_lib.IdxDataset("mnist", "https://unused/", copy))
  with pytest.raises(MnistFileError, match=f"bundled {victim} fails its SHA256 check"):
    load_mnist("test", source="bundled")


# ----------------------------------------------------------------------------
# Evaluation: the same on 8 devices as on 1; experiments/evaluate.py end to end.

def test_evaluation_on_eight_devices_equals_one(tmp_path, toys):
  from capsjax.training import make_eval_step, make_mesh, variables_of
  train_and_evaluate(TrainConfig(**TOY, steps=2, workdir=str(tmp_path)))
  config = TrainConfig.load(tmp_path / "config.json")
  state = restored(tmp_path)
  _, test = config.data.build(config)
  results = []
  for devices in (jax.devices()[:1], jax.devices()):
    mesh = make_mesh(devices)
    step = make_eval_step(make_model(config), mesh)
    results.append(loop.evaluate(step, jax.device_get(variables_of(state)), test, mesh, 8))
  assert results[0] == results[1]
  # Reference: the scores of the whole test split in one plain apply.
  batch = next(test.batches(len(test)))
  scores = make_model(config).apply(variables_of(state), batch["image"]).scores
  expected = np.mean(np.argmax(scores, -1) == batch["labels"][:, 0])
  assert results[0]["accuracy"] == pytest.approx(expected)
  assert results[0]["test_examples"] == 16


@pytest.mark.slow
def test_evaluate_script_end_to_end(tmp_path):
  workdir = tmp_path / "run"
  train_and_evaluate(TrainConfig(dataset="mnist", batch_size=8, steps=2, eval_every=0,
                                 checkpoint_every=2, test_subset=40, eval_batch_size=40,
                                 data_source="bundled", workdir=str(workdir)))
  trained = [r for r in records(workdir) if r["split"] == "test"][-1]
  (workdir / "reconstructions.png").unlink()
  env = dict(os.environ)  # the 8 devices of the training run: the same sums
  proc = subprocess.run([sys.executable, str(ROOT / "experiments" / "evaluate.py"),
                         "--workdir", str(workdir)], env=env, capture_output=True, text=True,
                        timeout=300)
  assert proc.returncode == 0, proc.stderr
  result = json.loads(proc.stdout.split("evaluation ", 1)[1])
  assert result["step"] == 2 and result["test_examples"] == 40
  assert result["accuracy"] == pytest.approx(trained["accuracy"])
  assert (workdir / "reconstructions.png").exists()
  proc = subprocess.run([sys.executable, str(ROOT / "experiments" / "evaluate.py"),
                         "--workdir", str(tmp_path / "nothing")], env=env, capture_output=True,
                        text=True, timeout=300)
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines() == [
      f"error: {tmp_path / 'nothing'} has no config.json; pass the --workdir of a training run."]


# ----------------------------------------------------------------------------
# Every flag with a bad value: exit code 2, one line naming the flag, nothing written.

BAD_FLAGS = [
    (["--routing_iters", "0"], "--routing_iters must be >= 1"),
    (["--routing_iters", "x"], "argument --routing_iters: invalid int value: 'x'"),
    (["--batch_size", "0"], "--batch_size must be >= 1"),
    (["--batch_size", "12"], "--batch_size 12 is not divisible by the 8 devices"),
    (["--batch_size", "1.5"], "argument --batch_size: invalid int value"),
    (["--epochs", "0"], "give --steps > 0 or --epochs > 0"),
    (["--steps", "-3", "--epochs", "-1"], "give --steps > 0 or --epochs > 0"),
    (["--lr", "0"], "--lr must be > 0"),
    (["--lr", "fast"], "argument --lr: invalid float value"),
    (["--lr", "1e-7"], "--lr 1e-07 is below --lr_min 1e-06, the floor of the decayed rate"),
    (["--lr", "inf"], "--lr inf: give a finite number"),
    (["--epochs", "inf"], "--epochs inf: give a finite number"),
    (["--epochs", "1e30"], "steps, more than the step counter holds (2,147,483,647)"),
    (["--steps", "3000000000"], "the run would take 3,000,000,000 steps, more than the step "
     "counter holds (2,147,483,647); lower --epochs or --steps"),
    (["--seed", "-1"], "--seed must be in 0 .. 2**32 - 1 (got -1)"),
    (["--seed", "4294967296"], "--seed must be in 0 .. 2**32 - 1 (got 4294967296)"),
    (["--distributed", "true"], "--distributed true: jax.distributed.initialize() failed ("),
    (["--lr_min", "-1"], "--lr_min >= 0"),
    (["--lr_decay_rate", "0"], "--lr_decay_rate must be in (0, 1]"),
    (["--lr_decay_rate", "1.5"], "--lr_decay_rate must be in (0, 1]"),
    (["--lr_decay_steps", "-5"], "--lr_decay_steps must be >= 0"),
    (["--recon_weight", "-1"], "--recon_weight must be >= 0"),
    (["--adam_eps", "0"], "--adam_eps must be > 0 (got 0.0); optax's is 1e-8"),
    (["--eval_every", "-1"], "--eval_every must be >= 0"),
    (["--checkpoint_every", "0"], "--checkpoint_every"),
    (["--keep_checkpoints", "0"], "--keep_checkpoints"),
    (["--log_every", "0"], "--log_every"),
    (["--eval_batch_size", "0"], "--eval_batch_size 0 must be a positive multiple"),
    (["--eval_batch_size", "12"], "--eval_batch_size 12 must be a positive multiple"),
    (["--test_pairs_per_digit", "0"], "--test_pairs_per_digit must be >= 1"),
    (["--test_subset", "-1"], "--test_subset must be >= 0"),
    (["--digit_caps_init", "0"], "--digit_caps_init must be > 0"),
    (["--primary_caps_scale", "-1"], "--primary_caps_scale must be > 0"),
    (["--precision", "fp16"], "--precision 'fp16' is unknown"),
    (["--dataset", "cifar"], "--dataset 'cifar' is unknown"),
    (["--dataset", "tfds:no_such_dataset"], "'no_such_dataset' split 'train' is not prepared"),
    (["--model", "resnet"], "--model 'resnet' is unknown"),
    (["--routing", "em"], "--routing 'em' is unknown; use one of dynamic, self_attention"),
    (["--model", "matrix_capsnet", "--dataset", "mnist", "--routing", "dynamic"],
     "--routing 'dynamic' is unknown; use one of em"),
    (["--model", "matrix_capsnet", "--dataset", "mnist", "--model_size", "huge"],
     "--model_size 'huge' is unknown; use one of small, large"),
    (["--model", "matrix_capsnet"], "--model matrix_capsnet handles at most 1 labels"),
    (["--margin_ramp_steps", "-1"], "--margin_ramp_steps must be >= 0"),
    (["--assignments_per_parent_type", "true"],
     "--assignments_per_parent_type is an option of matrix capsules; --model capsnet has none"),
    (["--dataset", "smallnorb"], "'smallnorb' split 'train' is not prepared"),
    (["--data_source", "web"], "--data_source 'web' is unknown"),
    (["--data_source", "idx"], "--data_source idx needs --mnist_dir"),
    (["--mnist_dir", "/no/such/dir"], "--mnist_dir /no/such/dir is not a directory"),
    (["--stop_gradient_inner", "maybe"], "argument --stop_gradient_inner: expected true or false"),
    (["--config", "no_such_preset"], "argument --config: invalid choice: 'no_such_preset'"),
    (["--no_such_flag", "1"], "unrecognized arguments: --no_such_flag 1"),
    (["--workdir", "{file}/run"], "--workdir {file}/run is not writable"),
    (["--dataset", "multimnist", "--test_subset", "5", "--data_source", "bundled"],
     "--test_subset 5: every class 0..9 needs at least one image"),
]


@pytest.mark.parametrize("argv,message", BAD_FLAGS, ids=[" ".join(a) for a, _ in BAD_FLAGS])
def test_bad_flags_exit_2_with_one_line(tmp_path, monkeypatch, capsys, argv, message):
  from capsjax import cli
  from toys import train_script
  (tmp_path / "file").write_text("")
  workdir = tmp_path / "run"
  # Good values for the other flags (8 devices here), then the bad one.
  argv = ["--batch_size", "16", "--eval_batch_size", "16",
          *(a.format(file=tmp_path / "file") for a in argv)]
  message = message.format(file=tmp_path / "file")
  if "--workdir" not in argv:
    argv += ["--workdir", str(workdir)]
  monkeypatch.setattr(sys, "argv", ["train.py", *argv])
  with pytest.raises(SystemExit) as info:
    cli.run(lambda: train_script(argv))
  assert info.value.code == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
  assert "Traceback" not in err[0]
  assert not workdir.exists()


# ----------------------------------------------------------------------------
# Fault injection: SIGKILL at random moments, resume each time, end bitwise equal.

RUN_SCRIPT = textwrap.dedent("""
    import os, sys, threading
    sys.path.insert(0, {tests!r})
    from capsjax import cli
    from capsjax.data import DATASETS
    from capsjax.models import MODELS
    from toys import TOY_BN, toy_dataset, train_script
    MODELS.register("toy_bn", TOY_BN)
    DATASETS.register("toy", toy_dataset())
    kill_in_save = int(os.environ.get("KILL_IN_SAVE", "0"))
    if kill_in_save:
      from capsjax.training import checkpoint
      save = checkpoint.Checkpointer.save
      def save_and_die(self, step, state):
        if step == kill_in_save:  # SIGKILL 5 ms into writing this checkpoint
          threading.Timer(0.005, os.kill, (os.getpid(), 9)).start()
        save(self, step, state)
      checkpoint.Checkpointer.save = save_and_die
    if __name__ == "__main__":  # not in the spawned data workers
      cli.run(lambda: train_script(sys.argv[1:]))
""")


@pytest.mark.slow
def test_sigkill_at_random_moments_then_resume_is_bitwise_equal(tmp_path, toys):
  script = tmp_path / "run.py"
  script.write_text(RUN_SCRIPT.format(tests=str(ROOT / "tests")))
  steps = 40
  argv = ["--model", "toy_bn", "--dataset", "toy", "--batch_size", "16", "--steps", str(steps),
          "--eval_every", "10", "--log_every", "1", "--checkpoint_every", "3",
          "--eval_batch_size", "16"]
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2",
             CAPSJAX_CACHE_DIR=str(tmp_path / "cache"))

  def run(workdir, **extra_env):
    return subprocess.Popen([sys.executable, str(script), *argv, "--workdir", str(workdir)],
                            env=dict(env, **extra_env), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)

  straight = run(tmp_path / "straight")
  _, err = straight.communicate(timeout=300)
  assert straight.returncode == 0, err

  killed = tmp_path / "killed"
  proc = run(killed, KILL_IN_SAVE="6")  # during the write of checkpoint 6
  proc.communicate(timeout=300)
  assert proc.returncode == -signal.SIGKILL
  rng = np.random.default_rng(0)
  for _ in range(3):  # then at random moments of the training steps
    before = len(records(killed)) if (killed / "metrics.jsonl").exists() else 0
    proc = run(killed)
    deadline = time.time() + 240
    target = before + int(rng.integers(1, 8))
    while time.time() < deadline and proc.poll() is None:
      if (killed / "metrics.jsonl").exists() and len(records_lenient(killed)) >= target:
        time.sleep(float(rng.uniform(0, 0.3)))
        break
      time.sleep(0.01)
    proc.kill()
    proc.communicate(timeout=60)
  final = run(killed)
  _, err = final.communicate(timeout=300)
  assert final.returncode == 0, err

  a, b = restored(tmp_path / "straight"), restored(killed)
  assert int(a.step) == int(b.step) == steps
  for x, y in zip(jax.tree.leaves((a.params, a.opt_state, a.model_state)),
                  jax.tree.leaves((b.params, b.opt_state, b.model_state))):
    np.testing.assert_array_equal(x, y)  # bitwise
  logged = [(r["step"], r["split"]) for r in records(killed)]
  assert len(logged) == len(set(logged))  # each logged step once
  assert {s for s, split in logged if split == "train"} == set(range(1, steps + 1))
  straight_train = {r["step"]: r["loss"] for r in records(tmp_path / "straight")
                    if r["split"] == "train"}
  killed_train = {r["step"]: r["loss"] for r in records(killed) if r["split"] == "train"}
  assert killed_train == straight_train


def records_lenient(workdir):
  """The records of a metrics.jsonl being written (a last line may be partial)."""
  out = []
  for line in (workdir / "metrics.jsonl").read_text().splitlines():
    try:
      out.append(json.loads(line))
    except json.JSONDecodeError:
      pass
  return out


def test_user_xla_flags_are_kept_and_the_eight_devices_still_set():
  code = ("import os; os.environ['XLA_FLAGS'] = '--xla_cpu_enable_fast_math=false'; "
          f"exec(open({str(ROOT / 'tests' / 'conftest.py')!r}).read()); "
          "import jax; print(os.environ['XLA_FLAGS']); print(jax.device_count())")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
  assert out.returncode == 0, out.stderr
  flags, count = out.stdout.strip().splitlines()
  assert "--xla_cpu_enable_fast_math=false" in flags and count == "8"


# ----------------------------------------------------------------------------
# Multi-host: two processes on this machine (CPU collectives) train as one.

@pytest.mark.slow
def test_two_processes_train_bitwise_as_one(tmp_path, toys):
  import socket
  script = tmp_path / "run.py"
  script.write_text(RUN_SCRIPT.format(tests=str(ROOT / "tests")))
  argv = ["--model", "toy_bn", "--dataset", "toy", "--batch_size", "16", "--steps", "4",
          "--eval_every", "2", "--log_every", "1", "--checkpoint_every", "2",
          "--eval_batch_size", "16"]

  def start(workdir, devices, *extra):
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
               CAPSJAX_CACHE_DIR=str(tmp_path / "cache"))
    return subprocess.Popen([sys.executable, str(script), *argv, "--workdir", str(workdir),
                             *extra], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)

  one = start(tmp_path / "one", 2)
  _, err = one.communicate(timeout=300)
  assert one.returncode == 0, err
  with socket.socket() as s:
    s.bind(("localhost", 0))
    port = s.getsockname()[1]
  # --train_minutes (not reached) asks process 0 at every log step whether to stop.
  two = [start(tmp_path / "two", 1, "--distributed", "true", "--coordinator_address",
               f"localhost:{port}", "--num_processes", "2", "--process_id", str(i),
               "--train_minutes", "60")
         for i in range(2)]
  outs = [p.communicate(timeout=300) for p in two]
  for p, (_, err) in zip(two, outs):
    assert p.returncode == 0, err
  a, b = restored(tmp_path / "one"), restored(tmp_path / "two")
  assert int(a.step) == int(b.step) == 4
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)  # bitwise
  # Process 0 alone logs and draws: one record per step and split, as one process.
  assert [(r["step"], r["split"]) for r in records(tmp_path / "two")] == [
      (r["step"], r["split"]) for r in records(tmp_path / "one")]
  assert [r["accuracy"] for r in records(tmp_path / "two") if r["split"] == "test"] == [
      r["accuracy"] for r in records(tmp_path / "one") if r["split"] == "test"]
  assert (tmp_path / "two" / "curves.png").exists()
  assert "summary" in outs[0][0] and "summary" in outs[1][0]
  assert "step/s" in outs[0][1] and "step/s" not in outs[1][1]  # one progress bar


# ----------------------------------------------------------------------------
# Ctrl-C and SIGTERM to the whole process group of a run with data workers:
# saved and exited within 10 s, nothing left behind; a dying worker stops the
# run with one line. (SIGINT to a group is what a terminal's Ctrl-C sends;
# SIGTERM to a group is what SLURM sends.)

def _start_worker_run(tmp_path, workdir, steps, checkpoint_every=1000):
  script = tmp_path / "run.py"
  script.write_text(RUN_SCRIPT.format(tests=str(ROOT / "tests")))
  argv = ["--model", "toy_bn", "--dataset", "toy", "--batch_size", "16", "--steps", str(steps),
          "--eval_every", "0", "--log_every", "1", "--checkpoint_every",
          str(checkpoint_every), "--eval_batch_size", "16", "--data_workers", "2",
          "--workdir", str(workdir)]
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2",
             CAPSJAX_CACHE_DIR=str(tmp_path / "cache"))
  return subprocess.Popen([sys.executable, str(script), *argv], env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, start_new_session=True)


def _wait_for_steps(proc, workdir, n, timeout=240):
  deadline = time.time() + timeout
  while time.time() < deadline and proc.poll() is None:
    if (workdir / "metrics.jsonl").exists() and len(records_lenient(workdir)) >= n:
      return
    time.sleep(0.05)
  proc.kill()
  raise AssertionError(f"the run did not log {n} steps: {proc.communicate()}")


def _group_gone(pgid, timeout=5.0) -> bool:
  """Whether every process of the group has exited (Python's resource tracker
  exits after the run and is reaped by init: allow it a moment)."""
  deadline = time.time() + timeout
  while time.time() < deadline:
    try:
      os.killpg(pgid, 0)
    except ProcessLookupError:
      return True
    time.sleep(0.1)
  return False


def _data_workers(parent: int) -> list[int]:
  """The spawned worker processes of ``parent``, read from ``/proc/<pid>/stat`` (the
  fourth field is the parent pid). Processes and threads come and go while the
  run trains, so entries that vanish mid-scan are skipped."""
  workers = []
  for entry in os.listdir("/proc"):
    if not entry.isdigit():
      continue
    try:
      stat = open(f"/proc/{entry}/stat").read()
      cmdline = open(f"/proc/{entry}/cmdline", "rb").read()
    except OSError:
      continue
    ppid = int(stat.rsplit(")", 1)[1].split()[1])
    if ppid == parent and b"spawn_main" in cmdline:
      workers.append(int(entry))
  return workers


def _shm():
  return set(os.listdir("/dev/shm"))


@pytest.mark.slow
def test_sigint_and_sigterm_to_the_process_group_save_and_exit_with_workers(tmp_path, toys):
  workdir = tmp_path / "run"
  before = _shm()
  for sig in (signal.SIGINT, signal.SIGTERM):
    proc = _start_worker_run(tmp_path, workdir, steps=10 ** 6)
    done = len(records_lenient(workdir)) if (workdir / "metrics.jsonl").exists() else 0
    _wait_for_steps(proc, workdir, done + 5)
    os.killpg(proc.pid, sig)
    signalled = time.time()
    out, err = proc.communicate(timeout=60)
    assert time.time() - signalled < 10, err
    assert proc.returncode == 128 + sig, err
    assert f"interrupted by {sig.name}" in out, out
    assert "Traceback" not in err, err
    assert _group_gone(proc.pid)
    assert _shm() <= before
    saved = Checkpointer(workdir / "checkpoints").latest_step()
    assert saved is not None and saved >= done + 5
  # The same command, resumed to a finish at the next steps.
  proc = _start_worker_run(tmp_path, workdir, steps=saved + 3)
  out, err = proc.communicate(timeout=240)
  assert proc.returncode == 0, err
  assert int(restored(workdir).step) == saved + 3
  train_steps = [r["step"] for r in records(workdir) if r["split"] == "train"]
  assert train_steps == list(range(1, saved + 4))
  assert _shm() <= before


@pytest.mark.slow
def test_a_data_worker_that_dies_stops_the_run_with_one_line(tmp_path, toys):
  workdir = tmp_path / "run"
  before = _shm()
  proc = _start_worker_run(tmp_path, workdir, steps=10 ** 6, checkpoint_every=2)
  _wait_for_steps(proc, workdir, 5)
  workers = _data_workers(proc.pid)
  assert len(workers) == 2
  os.kill(workers[0], signal.SIGKILL)
  killed = time.time()
  out, err = proc.communicate(timeout=60)
  assert time.time() - killed < 10, err
  assert proc.returncode == 2, err
  lines = [line for line in err.strip().splitlines() if line.startswith("error: ")]
  assert len(lines) == 1, err
  assert re.fullmatch(r"error: a data worker process died \(Worker process was terminated "
                      r"unexpectedly with exit code -9\); stopped, the last good checkpoint "
                      r"\(step (\d+)\) is kept in .*\. Rerun the same command to resume\.",
                      lines[0]), lines[0]
  good = int(re.search(r"\(step (\d+)\)", lines[0]).group(1))
  assert good >= 4 and Checkpointer(workdir / "checkpoints").latest_step() == good
  assert "Traceback" not in err
  assert _group_gone(proc.pid)
  assert _shm() <= before
