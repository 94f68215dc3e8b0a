"""The training configuration: one typed object, the single source of truth.

The CLI flags are generated from its fields (each field's help stands beside
it), it is validated in one place and written to ``workdir/config.json``; a
rerun in the same workdir must match it. Named presets of it live in
:mod:`capsjax.presets`.
"""
from __future__ import annotations

import dataclasses
import functools
import importlib.util
import json
import math
import os
import pathlib
from typing import Any

import jax.numpy as jnp

from capsjax.data import get_dataset
from capsjax.data.mnist import SOURCES as DATA_SOURCES
from capsjax.layers import DIGIT_CAPS_INIT
from capsjax.models import MODELS
from capsjax.registry import UnknownNameError
from capsjax.routing import MATRIX_ROUTERS, ROUTERS

__all__ = ["TrainConfig", "ConfigError", "IDENTITY_FIELDS"]

PRECISIONS = ("fp32", "bf16")

# Fields that change the trained parameters: a workdir's checkpoints belong to
# exactly one value of each. The others (how long, how often, where from) may
# change between runs in the same workdir.
IDENTITY_FIELDS = (
    "model", "dataset", "routing", "routing_iters", "batch_size", "lr", "lr_decay_rate",
    "lr_decay_steps", "lr_staircase", "lr_min", "recon_weight", "seed", "precision",
    "stop_gradient_inner", "digit_caps_init", "primary_caps_scale", "model_size",
    "margin_ramp_steps", "assignments_per_parent_type", "adam_eps",
    "scaled_inverse_temperature",
)

# What a config.json written before a field existed was trained with; used
# when such a file lacks the field, so an old run resumes and evaluates as it
# was trained, and a new default cannot silently change it.
VALUES_BEFORE_THE_FIELD = {"digit_caps_init": 0.1, "primary_caps_scale": 1.0,
                           "model": "capsnet", "routing": "dynamic", "model_size": "small",
                           "margin_ramp_steps": 20_000, "lr_staircase": False,
                           "assignments_per_parent_type": False, "adam_eps": 1e-8,
                           "scaled_inverse_temperature": True}


class ConfigError(ValueError):
  """A bad setting; the message names the flag and the fix."""


def flag(default, help: str):  # noqa: A002 - argparse's name
  """A config field with its ``--help`` text."""
  return dataclasses.field(default=default, metadata={"help": help})


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """Everything a training run depends on. Flags are ``--<field>``."""
  model: str = flag("capsnet", "the network, a name in capsjax.models.MODELS")
  dataset: str = flag("multimnist", "a name in capsjax.data.DATASETS (multimnist: 36x36 "
                      "overlapping pairs; mnist; fashion_mnist; smallnorb, prepared in tfds) or "
                      "tfds:NAME, any prepared "
                      "tensorflow-datasets image-classification dataset")
  routing: str = flag("", "the router, a name in capsjax.routing.ROUTERS (MATRIX_ROUTERS for "
                      "matrix_capsnet); default: the model's (dynamic for capsnet, "
                      "self_attention for efficient_capsnet, em for matrix_capsnet)")
  routing_iters: int = flag(3, "routing iterations (>= 1; the paper uses 3)")
  batch_size: int = flag(128, "global batch size, split over all devices")
  epochs: float = flag(50.0, "training length in epochs of the train split (ignored if "
                       "--steps > 0)")
  steps: int = flag(0, "training length in optimizer steps (0: use --epochs)")
  lr: float = flag(1e-3, "initial Adam learning rate")
  lr_decay_rate: float = flag(0.96, "exponential learning-rate decay factor, in (0, 1]")
  lr_decay_steps: int = flag(0, "decay period in steps (0: the dataset's; 2000 for mnist, "
                             "20000 for multimnist)")
  lr_staircase: bool = flag(False, "hold the learning rate for each --lr_decay_steps and "
                            "then multiply it by --lr_decay_rate (a step function, as a "
                            "per-epoch Keras schedule) instead of decaying it continuously")
  lr_min: float = flag(1e-6, "floor of the learning rate")
  adam_eps: float = flag(1e-8, "Adam's epsilon (optax's default; Keras' is 1e-7)")
  recon_weight: float = flag(0.0005, "weight of the reconstruction SSE in the loss")
  seed: int = flag(0, "seed of initialisation and data order")
  workdir: str = flag("", "directory for checkpoints, metrics and pictures (default: "
                      "runs/<dataset>_r<routing_iters>)")
  data_source: str = flag("auto", "where MNIST-format data comes from: auto, tfds, idx or "
                          "bundled (MNIST only)")
  mnist_dir: str = flag("", "directory with the four IDX files (for --data_source idx)")
  affnist_dir: str = flag("", "directory with affNIST's test.mat or test_batches/ (for "
                          "--dataset affnist; default: tensorflow-datasets' manual "
                          "directory, ~/tensorflow_datasets/downloads/manual/affnist)")
  eval_every: int = flag(1000, "evaluate on the test set every this many steps (0: only at "
                         "the end)")
  stop_at_accuracy: float = flag(0.0, "end the run, with its checkpoint, at the first "
                                "evaluation whose test accuracy (strict, on MultiMNIST) "
                                "reaches this, e.g. 0.992 (0: never)")
  train_minutes: float = flag(0.0, "end the run, with its checkpoint and an evaluation, "
                              "once it has run this many minutes of wall-clock time, summed "
                              "over resumed runs (compile and evaluations included), e.g. to "
                              "give two models the same budget (0: no limit)")
  checkpoint_every: int = flag(1000, "save a checkpoint every this many steps")
  keep_checkpoints: int = flag(3, "how many recent checkpoints to keep")
  log_every: int = flag(50, "append training metrics to metrics.jsonl every this many steps")
  data_workers: int = flag(0, "processes that build the training batches (0: one background "
                           "thread; the generators are pure functions of the step, so the "
                           "batches are the same)")
  steps_per_call: int = flag(1, "train steps per device call: k > 1 runs k steps in one "
                             "lax.scan over a block of k batches (same result; pays on "
                             "accelerators, where dispatch is a visible share of a step). "
                             "--log_every, --checkpoint_every and --eval_every must be "
                             "multiples of it")
  precision: str = flag("fp32", "fp32, or bf16 (bf16 compute; fp32 parameters and optimizer "
                        "state)")
  test_pairs_per_digit: int = flag(1, "MultiMNIST test pairs per test digit (the paper uses "
                                   "1000)")
  test_subset: int = flag(0, "evaluate on the first N examples of the test split (0: all)")
  eval_batch_size: int = flag(500, "batch size for evaluation")
  stop_gradient_inner: bool = flag(False, "stop gradients through the inner routing "
                                   "iterations (an option of the dynamic router)")
  scaled_inverse_temperature: bool = flag(
      False, "EM routing's inverse temperature lambda scaled to end at 0.01 (default: the "
      "official code's 0.01 (1 - 0.95^(t+1)), i.e. 0.0005, 0.00098, 0.0014 for 3 "
      "iterations)")
  digit_caps_init: float = flag(DIGIT_CAPS_INIT, (
      "stddev of the initial DigitCaps weights W_ij (the official 0.1 goes with "
      "--primary_caps_scale 0.03125; with the plain convolution it stalls MultiMNIST with 3 "
      "routing iterations)"))
  primary_caps_scale: float = flag(1.0, (
      "factor on the PrimaryCaps convolution before its bias (1.0: the paper's plain "
      "convolution; the official code's is 0.03125 = 1/32, used with --digit_caps_init 0.1)"))
  model_size: str = flag("small", "matrix_capsnet's configuration: small (A=64, B=8, C=D=16) "
                         "or large (A=B=C=D=32)")
  margin_ramp_steps: int = flag(20_000, "steps over which the spread-loss margin of "
                                "matrix_capsnet rises linearly from 0.2 to 0.9")
  assignments_per_parent_type: bool = flag(False, (
      "matrix_capsnet: normalise each child's convolutional assignments over its covering "
      "positions for each parent type, an equal share per type (the official code's), "
      "instead of over all the parents it reaches (the paper's)"))
  tensorboard: bool = flag(False, "also write a TensorBoard log to <workdir>/tensorboard "
                           "(needs tensorboardX: pip install 'capsjax[tensorboard]')")
  distributed: bool = flag(False, "call jax.distributed.initialize() first (multi-host runs; "
                           "on SLURM, Open MPI or Cloud TPU it finds the other processes)")
  coordinator_address: str = flag("", "with --distributed: host:port of process 0, for "
                                   "clusters JAX does not detect (with --num_processes and "
                                   "--process_id)")
  num_processes: int = flag(0, "with --coordinator_address: the number of processes")
  process_id: int = flag(0, "with --coordinator_address: this process's index, from 0")

  def __post_init__(self):
    if not self.routing and self.model in MODELS:  # resolved, so config.json names it
      object.__setattr__(self, "routing", MODELS.get(self.model).default_routing)

  # --------------------------------------------------------------------------

  @functools.cached_property
  def data(self):
    """The :class:`capsjax.data.DatasetSpec` of ``dataset``."""
    return get_dataset(self.dataset)

  @property
  def routers(self):
    """The registry ``routing`` names a router in: the model's (vector capsules by default)."""
    return MODELS.get(self.model).routers if self.model in MODELS else ROUTERS

  @property
  def model_spec(self):
    """The :class:`capsjax.models.ModelSpec` of ``model``."""
    return MODELS.get(self.model)

  @property
  def compute_dtype(self):
    return jnp.bfloat16 if self.precision == "bf16" else jnp.float32

  @property
  def decay_steps(self) -> int:
    return self.lr_decay_steps or self.data.decay_steps

  @property
  def run_dir(self) -> pathlib.Path:
    if self.workdir:
      return pathlib.Path(self.workdir)
    name = f"{self.dataset.replace(':', '_')}_r{self.routing_iters}"
    if self.routing != "dynamic":
      name = f"{name}_{self.routing}"
    if self.model != "capsnet":
      name = f"{self.model}_{name}"
    return pathlib.Path("runs") / name

  def total_steps(self, train_size: int = 60_000) -> int:
    if self.steps > 0:
      return self.steps
    return max(1, round(self.epochs * train_size / self.batch_size))

  def validate(self, num_devices: int = 1) -> "TrainConfig":
    """Checks every field; raises :class:`ConfigError` naming the flag and the fix."""
    def need(ok, message):
      if not ok:
        raise ConfigError(message)
    for name, registry in (("model", MODELS), ("routing", self.routers)):
      value = getattr(self, name)
      need(value in registry, f"--{name} {value!r} is unknown; use one of "
           f"{', '.join(registry.names())} (or register one in {registry.where}).")
    try:
      data = self.data
    except UnknownNameError:
      from capsjax.data import DATASETS  # pylint: disable=import-outside-toplevel
      raise ConfigError(
          f"--dataset {self.dataset!r} is unknown; use one of {', '.join(DATASETS.names())}, "
          "tfds:NAME for a prepared tensorflow-datasets dataset (or register one in "
          "capsjax.data.DATASETS).") from None
    need(not data.evaluates,
         f"--dataset {self.dataset} is a test set only: train on --dataset {data.evaluates}, "
         f"then evaluate with experiments/evaluate.py --workdir DIR --dataset {self.dataset}.")
    need(self.precision in PRECISIONS,
         f"--precision {self.precision!r} is unknown; use one of {', '.join(PRECISIONS)}.")
    need(self.data_source in DATA_SOURCES,
         f"--data_source {self.data_source!r} is unknown; use one of {', '.join(DATA_SOURCES)}.")
    need(self.data_source != "idx" or self.mnist_dir,
         "--data_source idx needs --mnist_dir, the directory of the four IDX files.")
    need(not self.mnist_dir or os.path.isdir(self.mnist_dir),
         f"--mnist_dir {self.mnist_dir} is not a directory; give the directory of the four "
         "IDX files.")
    need(self.routing_iters >= 1,
         f"--routing_iters must be >= 1 (got {self.routing_iters}); the paper uses 3.")
    need(self.batch_size >= 1, f"--batch_size must be >= 1 (got {self.batch_size}).")
    need(self.batch_size % num_devices == 0,
         f"--batch_size {self.batch_size} is not divisible by the {num_devices} devices; "
         f"use a multiple of {num_devices}, e.g. {num_devices * max(1, self.batch_size // num_devices)}.")
    need(self.eval_batch_size >= 1 and self.eval_batch_size % num_devices == 0,
         f"--eval_batch_size {self.eval_batch_size} must be a positive multiple of the "
         f"{num_devices} devices.")
    not_finite = [f"--{f.name} {getattr(self, f.name)}" for f in dataclasses.fields(self)
                  if f.type == "float" and not math.isfinite(getattr(self, f.name))]
    need(not not_finite, f"{', '.join(not_finite)}: give a finite number.")
    need(0 <= self.seed < 2**32,
         f"--seed must be in 0 .. 2**32 - 1 (got {self.seed}); seeds beyond repeat others.")
    need(self.steps > 0 or self.epochs > 0, "give --steps > 0 or --epochs > 0.")
    need(self.steps >= 0, f"--steps must be >= 0 (got {self.steps}; 0: use --epochs).")
    need(self.lr > 0 and self.lr_min >= 0, "--lr must be > 0 and --lr_min >= 0.")
    need(self.lr_min <= self.lr,
         f"--lr {self.lr:g} is below --lr_min {self.lr_min:g}, the floor of the decayed "
         "rate, which would raise it; lower --lr_min too (e.g. --lr_min 0).")
    need(0 < self.lr_decay_rate <= 1,
         f"--lr_decay_rate must be in (0, 1] (got {self.lr_decay_rate}); the paper's is 0.96.")
    need(self.lr_decay_steps >= 0,
         f"--lr_decay_steps must be >= 0 (got {self.lr_decay_steps}; 0: the dataset's).")
    need(self.recon_weight >= 0, "--recon_weight must be >= 0.")
    need(self.adam_eps > 0, f"--adam_eps must be > 0 (got {self.adam_eps}); optax's is 1e-8.")
    need(self.digit_caps_init > 0,
         f"--digit_caps_init must be > 0 (got {self.digit_caps_init}); try 0.1 or 0.01.")
    need(self.primary_caps_scale > 0,
         f"--primary_caps_scale must be > 0 (got {self.primary_caps_scale}); use 1.0 "
         "(the paper) or 0.03125 (the official code).")
    need(self.margin_ramp_steps >= 0,
         f"--margin_ramp_steps must be >= 0 (got {self.margin_ramp_steps}).")
    need(self.checkpoint_every >= 1 and self.keep_checkpoints >= 1 and self.log_every >= 1,
         "--checkpoint_every, --keep_checkpoints and --log_every must be >= 1.")
    need(self.eval_every >= 0, "--eval_every must be >= 0.")
    need(0 <= self.stop_at_accuracy <= 1,
         f"--stop_at_accuracy is a fraction in [0, 1] (got {self.stop_at_accuracy}; e.g. 0.992).")
    need(not self.stop_at_accuracy or self.eval_every,
         "--stop_at_accuracy is checked at each evaluation: give --eval_every > 0.")
    need(self.train_minutes >= 0,
         f"--train_minutes must be >= 0 (got {self.train_minutes}; 0: no limit).")
    need(self.data_workers >= 0, f"--data_workers must be >= 0 (got {self.data_workers}).")
    k = self.steps_per_call
    need(k >= 1, f"--steps_per_call must be >= 1 (got {k}).")
    off = [f"--{name} {getattr(self, name)}" for name in ("log_every", "checkpoint_every",
                                                           "eval_every")
           if getattr(self, name) % k]
    need(not off, f"{', '.join(off)} must be {'a multiple' if len(off) == 1 else 'multiples'} "
         f"of --steps_per_call {k}; use multiples of {k} or a --steps_per_call that divides "
         "them.")
    need(self.test_pairs_per_digit >= 1, "--test_pairs_per_digit must be >= 1.")
    need(self.test_subset >= 0, "--test_subset must be >= 0 (0: the whole test split).")
    need(not self.coordinator_address or (
        self.distributed and self.num_processes >= 1 and 0 <= self.process_id < self.num_processes),
         "--coordinator_address needs --distributed true, --num_processes >= 1 and "
         "0 <= --process_id < --num_processes.")
    need(not self.tensorboard or importlib.util.find_spec("tensorboardX") is not None,
         "--tensorboard true needs tensorboardX; pip install 'capsjax[tensorboard]'.")
    spec = self.model_spec
    need(not self.assignments_per_parent_type or spec.routers is MATRIX_ROUTERS,
         f"--assignments_per_parent_type is an option of matrix capsules; --model "
         f"{self.model} has none (use --model matrix_capsnet).")
    reason = spec.mismatch(data)
    need(reason is None, f"--model {self.model} {reason}; pick another --dataset or --model.")
    try:
      spec.build(self, data)
    except ValueError as e:
      raise ConfigError(str(e)) from None
    return self

  # --------------------------------------------------------------------------

  def to_json(self) -> str:
    return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

  @classmethod
  def from_dict(cls, values: dict[str, Any]) -> "TrainConfig":
    known = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in values.items() if k in known})

  @classmethod
  def load(cls, path: str | os.PathLike) -> "TrainConfig":
    """Reads a ``config.json``; fields it predates get the values of that time."""
    return cls.from_dict({**VALUES_BEFORE_THE_FIELD,
                          **json.loads(pathlib.Path(path).read_text())})

  def mismatches(self, other: "TrainConfig") -> list[str]:
    """The identity fields in which ``other`` differs, as ``--flag old -> new``."""
    return [f"--{name} {getattr(other, name)!r} -> {getattr(self, name)!r}"
            for name in IDENTITY_FIELDS if getattr(self, name) != getattr(other, name)]

  def initialize_distributed(self) -> None:
    """``jax.distributed.initialize`` as the flags say (before any JAX computation)."""
    if not self.distributed:
      return
    import jax  # pylint: disable=import-outside-toplevel
    try:
      if self.coordinator_address:
        jax.distributed.initialize(self.coordinator_address, self.num_processes,
                                   self.process_id)
      else:
        jax.distributed.initialize()
    except (ValueError, RuntimeError) as e:
      reason = str(e).splitlines()[0] if str(e) else type(e).__name__
      raise ConfigError(
          f"--distributed true: jax.distributed.initialize() failed ({reason}); run it inside "
          "a SLURM, Open MPI or Cloud TPU job, or give --coordinator_address HOST:PORT "
          "--num_processes N --process_id I.") from None

  def replace(self, **changes) -> "TrainConfig":
    return dataclasses.replace(self, **changes)

