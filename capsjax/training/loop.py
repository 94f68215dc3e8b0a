"""The training loop: data, state, checkpoints, evaluation, metrics and pictures.

``train_and_evaluate(config)`` is what ``experiments/train.py`` runs. Rerunning
it with the same configuration in the same workdir resumes from the latest
checkpoint, and the result is bitwise identical to an uninterrupted run (the
data is a pure function of ``(seed, step)``; nothing else needs saving).
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import pathlib
import signal
import tempfile
import time
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec as P

from capsjax.data import DataWorkerError, TrainBatches, batch_stream, local_rows, padded
from capsjax.data.pipeline import Chunks
from capsjax.registry import UnknownNameError
from capsjax.training.checkpoint import Checkpointer
from capsjax.training.config import ConfigError, TrainConfig
from capsjax.training.logs import RunLog
from capsjax.training.pictures import write_pictures
from capsjax.training.steps import (
    STEP_LIMIT, init_state, make_eval_step, make_mesh, make_model, make_optimizer, make_schedule,
    make_train_step, shard_batch, variables_of)

__all__ = ["train_and_evaluate", "evaluate_workdir", "evaluate_model", "NonFiniteLossError",
           "prepare_workdir"]

log = logging.getLogger("capsjax")


class NonFiniteLossError(RuntimeError):
  """The loss became NaN or Inf; the message gives the step and the last good checkpoint."""


# ----------------------------------------------------------------------------
# Workdir.


def prepare_workdir(config: TrainConfig) -> pathlib.Path:
  """Creates the workdir, checks it is writable and belongs to this config.

  Writes ``config.json`` (atomically) only after the checks pass.
  """
  workdir = config.run_dir
  try:
    workdir.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=workdir, prefix=".write_test"):
      pass
  except OSError as e:
    raise ConfigError(
        f"--workdir {workdir} is not writable ({e.strerror or e}); choose another "
        "--workdir.") from None
  saved = workdir / "config.json"
  if saved.exists():
    previous = TrainConfig.load(saved)
    diff = config.mismatches(previous)
    if diff:
      raise ConfigError(
          f"--workdir {workdir} holds a run with a different configuration ("
          + "; ".join(diff) + "); use a new --workdir or the same flags as that run.")
  elif (workdir / "checkpoints").exists() and any((workdir / "checkpoints").iterdir()):
    raise ConfigError(
        f"--workdir {workdir} holds checkpoints but no config.json, so they cannot be "
        "matched to this configuration; use a new --workdir.")
  if jax.process_index() == 0:  # one writer; the other processes check against it
    tmp = saved.with_suffix(".json.tmp")
    tmp.write_text(config.to_json())
    os.replace(tmp, saved)
  return workdir


# ----------------------------------------------------------------------------
# Data.


def evaluate(eval_step, variables, test, mesh, batch_size: int) -> dict[str, float]:
  """Strict and per-digit accuracy on the whole test set."""
  totals = {"count": 0.0, "strict": 0.0, "per_digit": 0.0}
  for batch in padded(test.batches(batch_size), batch_size):
    rows = local_rows(batch, jax.process_index(), jax.process_count())
    sums = jax.device_get(eval_step(variables, shard_batch(rows, mesh)))
    for k in totals:
      totals[k] += float(sums[k])
  return {"accuracy": totals["strict"] / totals["count"],
          "per_digit_accuracy": totals["per_digit"] / totals["count"],
          "test_examples": int(totals["count"])}


# ----------------------------------------------------------------------------
# Training.


class _StopRequest:
  """Turns SIGINT/SIGTERM into a flag the loop checks after each step."""

  def __init__(self):
    self.signum = None

  @contextlib.contextmanager
  def installed(self):
    previous = {}

    def handler(signum, _frame):
      self.signum = signum

    for sig in (signal.SIGINT, signal.SIGTERM):
      previous[sig] = signal.signal(sig, handler)
    try:
      yield self
    finally:
      for sig, old in previous.items():
        signal.signal(sig, old)


def _progress(total: int, initial: int):
  from tqdm.auto import tqdm  # pylint: disable=import-outside-toplevel
  return tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True,
              disable=jax.process_index() != 0, mininterval=1.0)


def _model_and_state(config: TrainConfig, mesh, checkpoints: Checkpointer):
  """The model, optimizer and train state (replicated on ``mesh``), restored from
  the latest checkpoint if there is one."""
  model, tx = make_model(config), make_optimizer(config)
  state = jax.device_put(init_state(model, tx, config.data.image_shape, config.seed),
                         NamedSharding(mesh, P()))
  if checkpoints.latest_step() is not None:
    state = checkpoints.restore(state)
  return model, tx, state


def _agreed(flag: bool, at_log_step: bool) -> bool:
  """``flag`` as process 0 sees it, so that every process of a multi-host run stops
  at the same step; with several processes asked at log steps only (a broadcast)."""
  if jax.process_count() == 1:
    return flag
  return at_log_step and bool(multihost_utils.broadcast_one_to_all(np.int32(flag)))


def _evaluation_due(step: int, total_steps: int, eval_every: int, out_of_time: bool) -> bool:
  """Whether ``step`` is evaluated: every ``eval_every`` steps and where the run ends."""
  return (bool(eval_every) and step % eval_every == 0) or step == total_steps or out_of_time


def train_and_evaluate(config: TrainConfig) -> dict[str, Any]:
  """Trains (or resumes) according to ``config``; returns the summary record."""
  config.initialize_distributed()
  mesh = make_mesh()
  config.validate(num_devices=mesh.size)
  train_data, test_data = config.data.build(config)  # before the workdir: a data error writes nothing
  total_steps = config.total_steps(len(train_data))
  if total_steps > STEP_LIMIT:
    raise ConfigError(
        f"the run would take {total_steps:,} steps, more than the step counter holds "
        f"({STEP_LIMIT:,}); lower --epochs or --steps.")
  workdir = prepare_workdir(config)

  checkpoints = Checkpointer(workdir / "checkpoints", config.keep_checkpoints)
  model, tx, state = _model_and_state(config, mesh, checkpoints)
  start = int(state.step)
  if checkpoints.latest_step() is not None:
    log.info("resumed from %s at step %d", checkpoints.directory, start)

  train_step = make_train_step(model, tx, mesh, config)
  per_call = config.steps_per_call
  train_steps = (make_train_step(model, tx, mesh, config, steps_per_call=per_call)
                 if per_call > 1 else None)
  eval_step = make_eval_step(config.model_spec.eval_module(model), mesh)
  run_log = RunLog(workdir, config.tensorboard, resume_step=start)
  schedule = make_schedule(config)
  target = config.stop_at_accuracy

  def reached(result: dict[str, Any] | None) -> bool:
    return bool(target and result and result["accuracy"] >= target)

  def evaluate_and_log(step_done: int) -> dict[str, float]:
    result = evaluate(eval_step, variables_of(state), test_data, mesh, config.eval_batch_size)
    run_log.write({"step": step_done, "split": "test", **result})
    return result

  # --train_minutes: the wall-clock time of the runs before this one, from their train records.
  limit_s = 60.0 * config.train_minutes
  spent_before = max((r.get("train_seconds", 0.0) for s, r in run_log.logged("train").items()
                      if s <= start), default=0.0)
  out_of_time = bool(limit_s) and spent_before >= limit_s
  train_seconds = spent_before
  # A step's checkpoint is saved before its evaluation: a run stopped in between
  # (killed, or out of memory in the evaluation) has that step evaluated here.
  due = start > 0 and _evaluation_due(start, total_steps, config.eval_every, out_of_time)
  start_eval = run_log.logged("test").get(start)
  if _agreed(due and start_eval is None, due):
    log.info("evaluating step %d, which the stopped run saved but did not evaluate", start)
    start_eval = evaluate_and_log(start)
  stopped_at_accuracy = reached(start_eval)
  if stopped_at_accuracy or out_of_time:  # stopped there by a target: nothing left to train
    total_steps = start

  chunks = Chunks(start, total_steps, per_call)
  make_chunk = TrainBatches(train_data, config.batch_size, jax.process_index(),
                            jax.process_count())
  block_bytes = 0  # the workers' slots hold a block of per_call batches
  if config.data_workers and len(chunks):
    block_bytes = per_call * sum(v.nbytes for v in make_chunk((start, 1)).values())
  batches = batch_stream(make_chunk, chunks, config.data_workers, slot_bytes=block_bytes)

  window: list[dict] = []
  window_start = clock_start = time.perf_counter()
  last_eval: dict[str, float] = {}
  last_good = checkpoints.latest_step()
  stop = _StopRequest()
  step = start
  images_per_sec = 0.0

  def kept() -> str:
    return (f"the last good checkpoint (step {last_good}) is kept in {checkpoints.directory}"
            if last_good is not None else "no checkpoint was saved")

  def check(step_done: int, metrics, count: int = 1) -> None:
    """Raises unless the loss, the gradients, the new parameters and the new
    model state of step ``step_done`` (of the ``count`` steps ending there)
    are finite; only a checked state is saved or reported."""
    metrics = jax.device_get(metrics)
    if count > 1:
      for i in range(count):
        check(step_done - count + 1 + i, {name: v[i] for name, v in metrics.items()})
      return
    metrics = {name: float(v) for name, v in metrics.items()}
    bad = [f"{name} is {metrics[name]}" for name in ("loss", "grad_norm")
           if not math.isfinite(metrics[name])]
    if metrics.pop("params_finite") != 1.0:
      bad.append("the parameters are not finite")
    if metrics.pop("model_state_finite") != 1.0:
      bad.append("the model state (e.g. BatchNorm statistics) is not finite")
    if bad:
      advice = "Lower --lr" + (", or use --precision fp32." if config.precision != "fp32"
                               else ".")
      raise NonFiniteLossError(f"{'; '.join(bad)} at step {step_done}; stopped, {kept()}. "
                               + advice)
    window.append(metrics)

  def save(step_done: int) -> None:
    nonlocal last_good
    checkpoints.save(step_done, state)
    last_good = step_done

  # closing: stops grain's thread or worker processes, however the loop ends.
  with stop.installed(), _progress(total_steps, start) as bar, contextlib.closing(batches):
    pending = None
    try:
      for (_, count), batch in zip(chunks, batches):
        if count == 1:
          state, metrics = train_step(state, shard_batch(batch, mesh))
        else:
          state, metrics = train_steps(state, shard_batch(batch, mesh, block=True))
        step += count
        train_seconds = spent_before + time.perf_counter() - clock_start
        out_of_time = bool(limit_s) and step < total_steps and _agreed(
            train_seconds >= limit_s, step % config.log_every == 0)
        if pending is not None:
          check(*pending)  # one call behind, so the device never waits for the host
        pending = (step, metrics, count)
        at_end = step == total_steps or out_of_time
        # Read the flag once: a signal arriving later in this iteration is acted
        # on (saved, then stopped) after the next step, never stopped unsaved.
        stopping = stop.signum is not None
        do_eval = _evaluation_due(step, total_steps, config.eval_every, out_of_time)
        do_save = step % config.checkpoint_every == 0 or at_end or stopping
        if do_eval or do_save or step % config.log_every == 0:
          check(*pending)  # never save or report a state whose loss was not checked
          pending = None
        if step % config.log_every == 0 or at_end or stopping:
          elapsed = time.perf_counter() - window_start
          images_per_sec = len(window) * config.batch_size / max(elapsed, 1e-9)
          mean = {k: float(np.mean([m[k] for m in window])) for k in window[0]}
          # The learning rate of this step's update (optax counts updates from 0).
          run_log.write({"step": step, "split": "train", **mean,
                         "lr": float(schedule(step - 1)), "images_per_sec": images_per_sec,
                         "train_seconds": train_seconds})
          bar.set_postfix(loss=f"{mean['loss']:.4f}", acc=f"{100 * mean['accuracy']:.1f}%",
                          img_s=f"{images_per_sec:.0f}", refresh=False)
          window.clear()
          window_start = time.perf_counter()
        if do_save:  # before the evaluation, so that it cannot cost the steps trained
          save(step)
        if do_eval:
          last_eval = evaluate_and_log(step)
          stopped_at_accuracy = reached(last_eval)
          bar.write(f"step {step}: test accuracy {100 * last_eval['accuracy']:.2f}%"
                    + (f" (per digit {100 * last_eval['per_digit_accuracy']:.2f}%)"
                       if config.data.labels_per_example > 1 else "")
                    + (f", --stop_at_accuracy {target:g} reached: stopping"
                       if stopped_at_accuracy else ""))
          window_start = time.perf_counter()
        if stopped_at_accuracy and not do_save:
          save(step)
        bar.update(count)
        if out_of_time:
          bar.write(f"step {step}: --train_minutes {config.train_minutes:g} used: stopping")
        if stopping or stopped_at_accuracy or out_of_time:
          break
    except DataWorkerError as e:
      raise DataWorkerError(f"{e}; stopped, {kept()}. Rerun the same command to resume.") from e

  summary = {"step": step, "total_steps": total_steps, "workdir": str(workdir),
             "images_per_sec": images_per_sec, "train_seconds": round(train_seconds, 1),
             **last_eval}
  if stopped_at_accuracy:
    summary["stopped_at_accuracy"] = target
  if out_of_time:
    summary["stopped_at_train_minutes"] = config.train_minutes
  if stop.signum and step < total_steps:  # a signal during the last step ends a finished run
    summary["interrupted"] = signal.Signals(stop.signum).name
    run_log.close()
    checkpoints.close()
    return summary
  if start == total_steps:  # nothing left to train: report the evaluation of what is there
    summary.update({k: v for k, v in (start_eval or {}).items() if k not in ("step", "split")})
  pictures = write_pictures(model, variables_of(state), test_data, workdir)
  run_log.pictures(pictures, step)
  run_log.close()
  summary["pictures"] = [str(p) for p in pictures]
  checkpoints.close()
  return summary


def _eval_batch_for(config: TrainConfig, num_devices: int) -> TrainConfig:
  """``config`` with ``eval_batch_size`` rounded up to a multiple of ``num_devices``: a
  model trained on one machine is evaluated on another (the accuracy does not depend on
  the evaluation batch; the last one is padded)."""
  size = -(-config.eval_batch_size // num_devices) * num_devices
  return dataclasses.replace(config, eval_batch_size=size)


def latest_variables(workdir: str | os.PathLike, **overrides):
  """``(config, model, step, variables)`` of the latest checkpoint in a run's workdir;
  ``overrides`` replace fields of its config that do not change the model (where
  the data comes from)."""
  workdir = pathlib.Path(workdir)
  if not (workdir / "config.json").exists():
    raise ConfigError(f"{workdir} has no config.json; pass the --workdir of a training run.")
  config = TrainConfig.load(workdir / "config.json")
  overrides = {name: value for name, value in overrides.items() if value}
  config = TrainConfig.from_dict({**json.loads(config.to_json()), **overrides})
  mesh = make_mesh()
  # Checked as evaluate_model will use it (its batch fitted to this machine's devices);
  # the run's own config is what is returned.
  _eval_batch_for(config, mesh.size).validate(num_devices=mesh.size)
  checkpoints = Checkpointer(workdir / "checkpoints", config.keep_checkpoints)
  if checkpoints.latest_step() is None:
    raise ConfigError(f"{workdir / 'checkpoints'} holds no checkpoint to evaluate.")
  model, _, state = _model_and_state(config, mesh, checkpoints)
  checkpoints.close()
  return config, model, int(state.step), variables_of(state)


def evaluate_workdir(workdir: str | os.PathLike, data_source: str | None = None,
                     mnist_dir: str | None = None, dataset: str | None = None,
                     affnist_dir: str | None = None) -> dict[str, Any]:
  """Evaluates the latest checkpoint of a workdir and (re)writes its pictures.

  With ``dataset`` the test split of another dataset of the same image shape,
  classes and labels per example is evaluated (e.g. ``affnist`` for a run
  trained on ``mnist40``); its pictures go to ``workdir/<dataset>/``.
  """
  workdir = pathlib.Path(workdir)
  config, model, step, variables = latest_variables(
      workdir, data_source=data_source, mnist_dir=mnist_dir, affnist_dir=affnist_dir)
  pictures_dir = workdir if not dataset or dataset == config.dataset else (
      workdir / dataset.replace(":", "_"))
  return {"step": step, **evaluate_model(config, model, variables, dataset, pictures_dir,
                                         trained=f"the run in {workdir}")}


def evaluate_model(config: TrainConfig, model, variables: dict[str, Any],
                   dataset: str | None = None, pictures_dir: str | os.PathLike | None = None,
                   trained: str = "the model") -> dict[str, Any]:
  """Test accuracy of ``model`` with ``variables``, trained as ``config`` says.

  On the test split of ``config.dataset``, or of ``dataset``: another dataset of
  the same image shape, classes and labels per example (``trained`` names the
  model in the message when it is not). With ``pictures_dir`` the pictures of
  the first test examples are written there.
  """
  mesh = make_mesh()
  config = _eval_batch_for(config, mesh.size)
  eval_config = config
  if dataset and dataset != config.dataset:
    eval_config = dataclasses.replace(config, dataset=dataset)
    try:
      other = eval_config.data
    except UnknownNameError as e:
      raise ConfigError(f"--dataset: {e}") from None
    if not config.data.same_task(other):
      raise ConfigError(
          f"--dataset {dataset} has {other.image_shape} images, {other.num_classes} classes and "
          f"{other.labels_per_example} label(s) per example; {trained} was trained "
          f"on {config.dataset} ({config.data.image_shape}, {config.data.num_classes}, "
          f"{config.data.labels_per_example}). Evaluate on a dataset of the same shape and "
          "classes (e.g. affnist or affnist_synthetic for mnist40).")
  _, test_data = eval_config.data.build(eval_config)
  variables = jax.device_put(variables, NamedSharding(mesh, P()))
  eval_step = make_eval_step(config.model_spec.eval_module(model), mesh)
  result = {"dataset": eval_config.dataset,
            **evaluate(eval_step, variables, test_data, mesh, config.eval_batch_size)}
  if pictures_dir is not None:
    pictures_dir = pathlib.Path(pictures_dir)
    pictures_dir.mkdir(parents=True, exist_ok=True)
    result["pictures"] = [str(p) for p in write_pictures(model, variables, test_data,
                                                         pictures_dir)]
  return result
