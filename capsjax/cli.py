"""Shared command-line plumbing for ``experiments/*.py``: flags from the config
dataclass, presets, logging, the persistent compilation cache, and one-line errors."""
from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
from typing import Callable, Sequence

from capsjax.presets import PRESETS
from capsjax.training.config import TrainConfig


def _parse_bool(text: str) -> bool:
  if text.lower() in ("1", "true", "yes"):
    return True
  if text.lower() in ("0", "false", "no"):
    return False
  raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


class Parser(argparse.ArgumentParser):
  """Reports a bad flag as one line, ``error: ...``, and exit code 2."""

  def error(self, message: str):
    print(f"error: {message}; see --help.", file=sys.stderr)
    sys.exit(2)


def config_parser(description: str) -> argparse.ArgumentParser:
  """``--config NAME`` and ``--<field>`` for every :class:`TrainConfig` field, typed, with help."""
  parser = Parser(
      description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--config", default=None, choices=PRESETS.names(), metavar="NAME",
                      help="a preset of capsjax.presets.PRESETS, whose fields the other "
                           f"flags override: {', '.join(PRESETS.names())}")
  for field in dataclasses.fields(TrainConfig):
    kind = {"bool": _parse_bool, "int": int, "float": float, "str": str}[field.type]
    parser.add_argument(f"--{field.name}", type=kind, default=field.default,
                        help=f"{field.metadata['help']} (default: {field.default!r})")
  return parser


def parse_config(description: str, argv: Sequence[str] | None = None) -> TrainConfig:
  """The :class:`TrainConfig` of the command line: defaults, then the preset, then flags."""
  parser = config_parser(description)
  preset, _ = parser.parse_known_args(argv)
  if preset.config is not None:
    parser.set_defaults(**PRESETS.get(preset.config).values)
  values = vars(parser.parse_args(argv))
  values.pop("config")
  return TrainConfig(**values)


def setup(cache_dir: str | None = None) -> None:
  """INFO logging for capsjax, and JAX's persistent compilation cache."""
  logging.basicConfig(level=logging.WARNING, format="%(message)s")
  logging.getLogger("capsjax").setLevel(logging.INFO)
  logging.getLogger("absl").setLevel(logging.ERROR)
  import jax  # pylint: disable=import-outside-toplevel
  cache_dir = cache_dir or os.environ.get(
      "CAPSJAX_CACHE_DIR", os.path.join(os.path.expanduser("~"), ".cache", "capsjax", "xla"))
  jax.config.update("jax_compilation_cache_dir", cache_dir)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


def run(main: Callable[[], int]) -> None:
  """Runs ``main``; expected failures become one line on stderr and exit code 2."""
  from capsjax.data import DataError, DataWorkerError  # pylint: disable=import-outside-toplevel
  from capsjax.models import PretrainedFileError  # pylint: disable=import-outside-toplevel
  from capsjax.registry import UnknownNameError  # pylint: disable=import-outside-toplevel
  from capsjax.training import CheckpointError, ConfigError, NonFiniteLossError  # pylint: disable=import-outside-toplevel
  try:
    sys.exit(main())
  except (ConfigError, CheckpointError, NonFiniteLossError, DataError,
          DataWorkerError, PretrainedFileError, UnknownNameError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
