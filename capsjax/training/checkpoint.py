"""Checkpoints of the train state with orbax: atomic, the last few kept.

A checkpoint that cannot be read is reported (never overwritten or deleted);
the user decides whether to move it away and resume from an earlier one.
"""
from __future__ import annotations

import logging
import pathlib

import orbax.checkpoint as ocp

__all__ = ["Checkpointer", "CheckpointError"]

log = logging.getLogger("capsjax")


class CheckpointError(RuntimeError):
  """An unreadable checkpoint; the message names it and the way out."""


def _on_disk(state) -> dict:
  """The train state as the checkpoint stores it: its fields, without an empty
  ``model_state`` (so checkpoints of models without one keep their layout)."""
  tree = {name: getattr(state, name) for name in ("step", "params", "opt_state")}
  if state.model_state:
    tree["model_state"] = state.model_state
  return tree


def _is_structure_mismatch(error: Exception) -> bool:
  """Whether orbax refused the restore because the trees differ (not the data)."""
  text = str(error).lower()
  return "tree structures do not match" in text or "not compatible with the stored shape" in text


class Checkpointer:
  """Saves and restores a train-state pytree under ``directory/<step>``."""

  def __init__(self, directory: str | pathlib.Path, keep: int = 3):
    self.directory = pathlib.Path(directory).absolute()
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True, enable_async_checkpointing=False))

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    """The steps of the checkpoints kept, ascending."""
    return sorted(self._manager.all_steps())

  def save(self, step: int, state) -> None:
    """Writes ``state`` as checkpoint ``step`` (atomically: tmp dir, then rename)."""
    if step in self.all_steps():
      return
    self._manager.save(step, args=ocp.args.StandardSave(_on_disk(state)))
    self._manager.wait_until_finished()

  def restore(self, target, step: int | None = None):
    """Restores checkpoint ``step`` (default: latest) into the structure of ``target``.

    Raises :class:`CheckpointError` saying what failed: no such checkpoint, a
    structure that is not this configuration's state, or unreadable data.
    """
    step = self.latest_step() if step is None else step
    path = self.directory / str(step)
    if step is None or not path.is_dir():
      raise CheckpointError(
          f"there is no checkpoint {path}; the checkpoints in {self.directory} are "
          f"{self._manager.all_steps() or 'none'}.")
    try:
      tree = self._manager.restore(step, args=ocp.args.StandardRestore(_on_disk(target)))
      return target.replace(**tree)
    except Exception as e:  # noqa: BLE001 - orbax/tensorstore raise many types
      reason = (f"{type(e).__name__}: {str(e).splitlines()[0][:200]}" if str(e)
                else type(e).__name__)
      if _is_structure_mismatch(e):
        what = ("does not hold the state of this configuration (another model, dataset or "
                "optimizer)")
      else:
        what = "is corrupt or truncated"
      raise CheckpointError(
          f"checkpoint {path} {what} ({reason}). It was left untouched; move it out of "
          f"{self.directory} to resume from an earlier checkpoint, or start in a new "
          "--workdir.") from None

  def close(self) -> None:
    self._manager.close()
