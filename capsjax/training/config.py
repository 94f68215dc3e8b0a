"""The training configuration: one typed object, the single source of truth.

The CLI flags are generated from its fields, it is validated in one place and
written to ``workdir/config.json``; a rerun in the same workdir must match it.
"""
from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from typing import Any

from capsjax.models import DIGIT_CAPS_INIT

DATASETS = ("multimnist", "mnist")
PRECISIONS = ("fp32", "bf16")
DATA_SOURCES = ("auto", "tfds", "idx", "bundled")

# Fields that change the trained parameters: a workdir's checkpoints belong to
# exactly one value of each. The others (how long, how often, where from) may
# change between runs in the same workdir.
IDENTITY_FIELDS = (
    "dataset", "routing_iters", "batch_size", "lr", "lr_decay_rate", "lr_decay_steps",
    "lr_min", "recon_weight", "seed", "precision", "stop_gradient_inner",
    "digit_caps_init", "primary_caps_scale",
)

# What a config.json written before a field existed was trained with; used
# when such a file lacks the field, so an old run resumes and evaluates as it
# was trained, and a new default cannot silently change it.
VALUES_BEFORE_THE_FIELD = {"digit_caps_init": 0.1, "primary_caps_scale": 1.0}


class ConfigError(ValueError):
  """A bad setting; the message names the flag and the fix."""


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """Everything a training run depends on. Flags are ``--<field>``."""
  dataset: str = "multimnist"
  routing_iters: int = 3
  batch_size: int = 128
  epochs: float = 50.0
  steps: int = 0
  lr: float = 1e-3
  lr_decay_rate: float = 0.96
  lr_decay_steps: int = 0
  lr_min: float = 1e-6
  recon_weight: float = 0.0005
  seed: int = 0
  workdir: str = ""
  data_source: str = "auto"
  mnist_dir: str = ""
  eval_every: int = 1000
  checkpoint_every: int = 1000
  keep_checkpoints: int = 3
  log_every: int = 50
  precision: str = "fp32"
  test_pairs_per_digit: int = 1
  test_subset: int = 0
  eval_batch_size: int = 500
  stop_gradient_inner: bool = False
  digit_caps_init: float = DIGIT_CAPS_INIT
  primary_caps_scale: float = 1.0
  distributed: bool = False

  HELP = {
      "dataset": "multimnist (36x36 overlapping pairs, the default) or mnist",
      "routing_iters": "routing iterations (>= 1; the paper uses 3)",
      "batch_size": "global batch size, split over all devices",
      "epochs": "training length in epochs of the train split (ignored if --steps > 0)",
      "steps": "training length in optimizer steps (0: use --epochs)",
      "lr": "initial Adam learning rate",
      "lr_decay_rate": "exponential learning-rate decay factor",
      "lr_decay_steps": "decay period in steps (0: 2000 for mnist, 20000 for multimnist)",
      "lr_min": "floor of the learning rate",
      "recon_weight": "weight of the reconstruction SSE in the loss",
      "seed": "seed of initialisation and data order",
      "workdir": "directory for checkpoints, metrics and pictures "
                 "(default: runs/<dataset>_r<routing_iters>)",
      "data_source": "where MNIST comes from: auto, tfds, idx or bundled",
      "mnist_dir": "directory with the four IDX files (for --data_source idx)",
      "eval_every": "evaluate on the test set every this many steps (0: only at the end)",
      "checkpoint_every": "save a checkpoint every this many steps",
      "keep_checkpoints": "how many recent checkpoints to keep",
      "log_every": "append training metrics to metrics.jsonl every this many steps",
      "precision": "fp32, or bf16 (bf16 compute; fp32 parameters and optimizer state)",
      "test_pairs_per_digit": "MultiMNIST test pairs per test digit (the paper uses 1000)",
      "test_subset": "evaluate on the first N digits of the test split (0: all 10,000)",
      "eval_batch_size": "batch size for evaluation",
      "stop_gradient_inner": "stop gradients through the inner routing iterations",
      "digit_caps_init": ("stddev of the initial DigitCaps weights W_ij (the official "
                          "0.1 goes with --primary_caps_scale 0.03125; with the plain "
                          "convolution it stalls MultiMNIST with 3 routing iterations)"),
      "primary_caps_scale": ("factor on the PrimaryCaps convolution before its bias "
                             "(1.0: the paper's plain convolution; the official code's "
                             "is 0.03125 = 1/32, used with --digit_caps_init 0.1)"),
      "distributed": "call jax.distributed.initialize() first (multi-host runs)",
  }

  # --------------------------------------------------------------------------

  @property
  def image_size(self) -> int:
    return 36 if self.dataset == "multimnist" else 28

  @property
  def num_digits(self) -> int:
    return 2 if self.dataset == "multimnist" else 1

  @property
  def decay_steps(self) -> int:
    if self.lr_decay_steps:
      return self.lr_decay_steps
    return 2000 * (10 if self.dataset == "multimnist" else 1)

  @property
  def run_dir(self) -> pathlib.Path:
    return pathlib.Path(self.workdir or f"runs/{self.dataset}_r{self.routing_iters}")

  def total_steps(self, train_size: int = 60_000) -> int:
    if self.steps > 0:
      return self.steps
    return max(1, round(self.epochs * train_size / self.batch_size))

  def validate(self, num_devices: int = 1) -> "TrainConfig":
    """Checks every field; raises :class:`ConfigError` naming the flag and the fix."""
    def need(ok, message):
      if not ok:
        raise ConfigError(message)
    need(self.dataset in DATASETS,
         f"--dataset {self.dataset!r} is unknown; use one of {', '.join(DATASETS)}.")
    need(self.precision in PRECISIONS,
         f"--precision {self.precision!r} is unknown; use one of {', '.join(PRECISIONS)}.")
    need(self.data_source in DATA_SOURCES,
         f"--data_source {self.data_source!r} is unknown; use one of {', '.join(DATA_SOURCES)}.")
    need(self.data_source != "idx" or self.mnist_dir,
         "--data_source idx needs --mnist_dir, the directory of the four IDX files.")
    need(self.routing_iters >= 1,
         f"--routing_iters must be >= 1 (got {self.routing_iters}); the paper uses 3.")
    need(self.batch_size >= 1, f"--batch_size must be >= 1 (got {self.batch_size}).")
    need(self.batch_size % num_devices == 0,
         f"--batch_size {self.batch_size} is not divisible by the {num_devices} devices; "
         f"use a multiple of {num_devices}, e.g. {num_devices * max(1, self.batch_size // num_devices)}.")
    need(self.eval_batch_size >= 1 and self.eval_batch_size % num_devices == 0,
         f"--eval_batch_size {self.eval_batch_size} must be a positive multiple of the "
         f"{num_devices} devices.")
    need(self.steps > 0 or self.epochs > 0, "give --steps > 0 or --epochs > 0.")
    need(self.lr > 0 and self.lr_min >= 0, "--lr must be > 0 and --lr_min >= 0.")
    need(self.recon_weight >= 0, "--recon_weight must be >= 0.")
    need(self.digit_caps_init > 0,
         f"--digit_caps_init must be > 0 (got {self.digit_caps_init}); try 0.1 or 0.01.")
    need(self.primary_caps_scale > 0,
         f"--primary_caps_scale must be > 0 (got {self.primary_caps_scale}); use 1.0 "
         "(the paper) or 0.03125 (the official code).")
    need(self.checkpoint_every >= 1 and self.keep_checkpoints >= 1 and self.log_every >= 1,
         "--checkpoint_every, --keep_checkpoints and --log_every must be >= 1.")
    need(self.eval_every >= 0, "--eval_every must be >= 0.")
    need(self.test_pairs_per_digit >= 1, "--test_pairs_per_digit must be >= 1.")
    need(self.test_subset >= 0, "--test_subset must be >= 0 (0: the whole test split).")
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
