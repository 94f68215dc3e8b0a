"""Where a run's numbers go: ``metrics.jsonl`` always, TensorBoard when asked.

Only process 0 writes. The TensorBoard log (``--tensorboard true``) uses
tensorboardX, which needs no TensorFlow: scalars ``<split>/<name>`` for every
numeric field of a record, and the pictures of the run as images.
"""
from __future__ import annotations

import json
import os
import pathlib
from typing import Any

import jax

__all__ = ["RunLog"]


class RunLog:
  """Appends records to ``workdir/metrics.jsonl`` (and a TensorBoard log).

  A run resumed from the checkpoint of step ``resume_step`` first drops what a
  killed run wrote after that step (and a line torn by the kill), atomically,
  so that after any sequence of kills and resumes each step is logged once.
  """

  def __init__(self, workdir: pathlib.Path, tensorboard: bool = False, resume_step: int = 0):
    self.path = workdir / "metrics.jsonl"
    self.enabled = jax.process_index() == 0
    self._writer = None
    if not self.enabled:
      return
    _truncate(self.path, resume_step)
    if tensorboard:
      from tensorboardX import SummaryWriter  # pylint: disable=import-outside-toplevel
      # purge_step hides the events a killed run wrote past the checkpoint.
      self._writer = SummaryWriter(str(workdir / "tensorboard"),
                                   purge_step=resume_step or None)

  def write(self, record: dict[str, Any]) -> None:
    """One record ``{"step": int, "split": "train" | "test", name: value, ...}``."""
    if not self.enabled:
      return
    with self.path.open("a") as f:
      f.write(json.dumps(record) + "\n")
    if self._writer is not None:
      for name, value in record.items():
        if name not in ("step", "split") and isinstance(value, (int, float)):
          self._writer.add_scalar(f"{record['split']}/{name}", value, record["step"])

  def logged(self, split: str) -> dict[int, dict[str, Any]]:
    """The whole ``split`` records in ``metrics.jsonl``, by step."""
    return {record["step"]: record for _, record in _records(self.path)
            if record is not None and record.get("split") == split}

  def logged_steps(self, split: str) -> set[int]:
    """The steps with a whole ``split`` record in ``metrics.jsonl``."""
    return set(self.logged(split))

  def pictures(self, paths: list[pathlib.Path], step: int) -> None:
    """Adds the PNG files ``paths`` to the TensorBoard log as images at ``step``."""
    if self._writer is None:
      return
    import matplotlib.image  # pylint: disable=import-outside-toplevel
    for path in paths:
      self._writer.add_image(path.stem, matplotlib.image.imread(path)[..., :3], step,
                             dataformats="HWC")

  def close(self) -> None:
    if self._writer is not None:
      self._writer.close()


def _records(path: pathlib.Path):
  """``(line, record)`` for each line of ``path``; record None for a torn line."""
  if not path.exists():
    return
  for line in path.read_text().splitlines(keepends=True):
    try:
      record = json.loads(line) if line.endswith("\n") else None
    except json.JSONDecodeError:
      record = None
    yield line, record


def _truncate(path: pathlib.Path, last_step: int) -> None:
  """Keeps the whole records of ``path`` up to ``last_step``; atomic (tmp, rename)."""
  kept, changed = [], False
  for line, record in _records(path):
    if record is not None and record.get("step", 0) <= last_step:
      kept.append(line)
    else:
      changed = True
  if changed:
    tmp = path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(kept))
    os.replace(tmp, path)
