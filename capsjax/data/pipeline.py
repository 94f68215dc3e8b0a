"""Feeding batches: grain builds them ahead (a thread or worker processes);
blocks of batches, padding the last test batch, a process's rows."""
from __future__ import annotations

import contextlib
import gc
import os
import signal
import threading
import time
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np

from capsjax.data import slot_ring

__all__ = ["batch_stream", "Chunks", "DataWorkerError", "TrainBatches", "padded", "local_rows"]


class TrainBatches:
  """``(first step, count) -> batch``: training batch ``first`` of ``source``, or
  for ``count > 1`` the block of batches ``first .. first + count - 1`` stacked
  on a new leading axis. Plain data, so it can be sent to worker processes.
  """

  def __init__(self, source: Any, batch_size: int, process_index: int = 0,
               process_count: int = 1):
    self.source = source
    self.batch_size = batch_size
    self.process_index = process_index
    self.process_count = process_count

  def batch(self, step: int) -> dict[str, np.ndarray]:
    return self.source.batch(step, self.batch_size, process_index=self.process_index,
                             process_count=self.process_count)

  def __call__(self, chunk: tuple[int, int]) -> dict[str, np.ndarray]:
    first, count = chunk
    if count == 1:
      return self.batch(first)
    batches = [self.batch(first + i) for i in range(count)]
    return {key: np.stack([b[key] for b in batches]) for key in batches[0]}


class Chunks:
  """The ``(first step, count)`` device calls of steps ``start .. total - 1``, as a
  sequence: blocks of ``k`` steps from the multiples of ``k`` (so every log,
  checkpoint and evaluation falls on a block's end), single steps before the
  first and after the last whole block. Plain data, for grain's workers."""

  def __init__(self, start: int, total: int, k: int = 1):
    self.start, self.total, self.k = start, total, k
    self.blocks_from = min(-(-start // k) * k, total)      # first multiple of k
    self.blocks_to = max(total // k * k, self.blocks_from)  # end of the last whole block
    self.num_blocks = (self.blocks_to - self.blocks_from) // k

  def __len__(self) -> int:
    return (self.blocks_from - self.start) + self.num_blocks + (self.total - self.blocks_to)

  def __getitem__(self, i: int) -> tuple[int, int]:
    if not 0 <= i < len(self):
      raise IndexError(i)
    before = self.blocks_from - self.start
    if i < before:
      return self.start + i, 1
    if i < before + self.num_blocks:
      return self.blocks_from + (i - before) * self.k, self.k
    return self.blocks_to + (i - before - self.num_blocks), 1


class DataWorkerError(RuntimeError):
  """A data worker process died; the message names the failure."""


_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _quiet_worker(index: int, count: int) -> None:
  """Runs first in each worker process: the parent alone answers SIGINT and
  SIGTERM (a Ctrl-C reaches the whole process group) and stops the workers;
  a worker whose parent is gone (killed outright) exits."""
  del index, count
  for sig in _STOP_SIGNALS:
    signal.signal(sig, signal.SIG_IGN)
  signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)  # blocked since its start
  parent = os.getppid()

  def watch():
    while os.getppid() == parent:
      time.sleep(1.0)
    os._exit(0)

  threading.Thread(target=watch, daemon=True, name="capsjax-parent-watch").start()


@contextlib.contextmanager
def _stop_signals_blocked():
  """SIGINT and SIGTERM held back in this thread (and the threads and processes
  it starts, which inherit the mask) until the end, then delivered."""
  previous = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
  try:
    yield
  finally:
    signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def batch_stream(make_batch: Callable[[Any], dict], items: Sequence, workers: int = 0,
                 ahead: int = 2, slot_bytes: int = 0) -> Iterator[dict]:
  """``make_batch(item)`` for ``items`` in order, built ahead by grain.

  A :class:`grain.MapDataset` over ``items`` (a sequence: a list, or
  :class:`Chunks`): with ``workers = 0`` one background thread builds
  ``ahead`` batches in advance (NumPy releases the GIL in its heavy loops, so
  this overlaps the device's work); with ``workers = N`` grain's
  ``mp_prefetch`` builds them in N spawned processes (worker ``i`` builds items
  ``i, i + N, ...``, ``ahead`` each in flight), which write them into the
  reused shared-memory slots of a :class:`~capsjax.data.slot_ring.SlotRing`
  of ``slot_bytes`` each (default: the size of the first batch; a larger
  batch goes through grain's own shared memory, slower). capsjax's generators
  are pure functions of the step, so the batches are the same either way.
  ``make_batch`` must be picklable for workers (e.g. a :class:`TrainBatches`);
  each yielded batch is a copy the caller owns. A worker that dies raises
  :class:`DataWorkerError`.

  Close the iterator (``contextlib.closing``) to stop the thread or processes:
  the workers ignore SIGINT and SIGTERM and are stopped by that close, so a
  Ctrl-C sent to the whole process group reaches the training loop alone, and
  leaves no process and no shared memory behind.
  """
  import grain  # pylint: disable=import-outside-toplevel  # imports JAX: only when feeding
  from absl import flags  # pylint: disable=import-outside-toplevel
  if not flags.FLAGS.is_parsed():  # grain reads absl flags; outside an absl app, the defaults
    flags.FLAGS.mark_as_parsed()
  if workers < 0 or ahead < 1:
    raise ValueError(f"need workers >= 0 and ahead >= 1, got {workers}, {ahead}.")
  if workers == 0:
    ring = None
    stream = grain.MapDataset.source(items).map(make_batch).to_iter_dataset(
        grain.ReadOptions(num_threads=1, prefetch_buffer_size=ahead))
  else:
    if not slot_bytes and len(items):
      slot_bytes = slot_ring.nbytes(slot_ring.layout(make_batch(items[0])))
    # Per worker: ahead batches in grain's queue, one being written.
    ring = slot_ring.SlotRing.create(workers * (ahead + 1), max(slot_bytes, 1))
    stream = (grain.MapDataset.source(items).map_with_index(ring.writer(make_batch))
              .to_iter_dataset(grain.ReadOptions(num_threads=0))
              .mp_prefetch(grain.MultiprocessingOptions(num_workers=workers,
                                                        per_worker_buffer_size=ahead),
                           worker_init_fn=_quiet_worker))
  received = 0

  def receive():
    nonlocal received
    try:
      batch = next(iterator)
    except StopIteration:
      return None
    except RuntimeError as e:
      if "Worker process was terminated" not in str(e):
        raise
      raise DataWorkerError(f"a data worker process died ({str(e).split('.')[0]})") from e
    if ring is not None:
      batch = ring.read(batch, received)
    received += 1
    return batch

  # The workers start with the first batch; they inherit the blocked signals,
  # so none dies of a Ctrl-C before it has set SIGINT and SIGTERM to ignored.
  blocked = _stop_signals_blocked if workers else contextlib.nullcontext
  try:
    with blocked():
      iterator = iter(stream)
    try:
      with blocked():
        batch = receive()
      while batch is not None:
        yield batch
        batch = receive()
    finally:
      if ring is not None:
        ring.close()  # writers waiting for a slot return
      iterator.close()
  finally:
    if ring is not None:
      _flush_shared_memory()
      ring.unlink()


def _flush_shared_memory() -> None:
  """Waits until grain has unlinked the shared memory of every batch received.

  grain frees it from a one-thread pool, whose pending work is dropped at
  interpreter exit; a task queued behind the frees returns once they are done.
  """
  gc.collect()  # the received arrays still held by reference cycles
  try:
    from grain._src.python.ipc import shared_memory_array  # pylint: disable=import-outside-toplevel
    pool = shared_memory_array.SharedMemoryArray._del_thread_pool  # pylint: disable=protected-access
  except (ImportError, AttributeError):  # another grain: its own cleanup applies
    return
  if pool is not None:
    pool.apply(int)


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
