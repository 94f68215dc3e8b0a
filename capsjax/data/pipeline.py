"""Feeding batches: prefetching, padding the last test batch, a process's rows."""
from __future__ import annotations

import queue
import threading
from typing import Callable, Iterable, Iterator

import numpy as np

__all__ = ["prefetch", "padded", "local_rows"]


def prefetch(make_batch: Callable[[int], dict], steps: Iterable[int],
             size: int = 2) -> Iterator[dict]:
  """Yields ``make_batch(step)`` for ``steps``, built ahead in a background thread.

  NumPy releases the GIL in its heavy loops, so batch building overlaps the
  accelerator's work. Exceptions in the thread are re-raised in the consumer.
  """
  buffer: queue.Queue = queue.Queue(maxsize=size)
  stop = threading.Event()
  done = object()

  def worker():
    try:
      for step in steps:
        if stop.is_set():
          return
        buffer.put(make_batch(step))
      buffer.put(done)
    except BaseException as e:  # noqa: BLE001 - handed to the consumer
      buffer.put(e)

  thread = threading.Thread(target=worker, daemon=True)
  thread.start()
  try:
    while True:
      item = buffer.get()
      if item is done:
        return
      if isinstance(item, BaseException):
        raise item
      yield item
  finally:
    stop.set()


def padded(batches: Iterable[dict], batch_size: int) -> Iterator[dict]:
  """Pads every batch to ``batch_size`` rows and adds a float32 0/1 ``weight``,
  so every batch has one shape (one compilation)."""
  for batch in batches:
    n = len(batch["labels"])
    pad = batch_size - n
    out = {k: np.concatenate([v, np.zeros((pad,) + v.shape[1:], v.dtype)]) if pad else v
           for k, v in batch.items()}
    out["weight"] = (np.arange(batch_size) < n).astype(np.float32)
    yield out


def local_rows(batch: dict, process_index: int, process_count: int) -> dict:
  """Process ``process_index``'s rows of a batch every process built in full."""
  if process_count == 1:
    return batch
  rows = len(next(iter(batch.values()))) // process_count
  return {k: v[process_index * rows:(process_index + 1) * rows] for k, v in batch.items()}
