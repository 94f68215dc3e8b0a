"""Feeding batches: prefetching (a thread or worker processes), blocks of
batches, padding the last test batch, a process's rows."""
from __future__ import annotations

import collections
import multiprocessing
import queue
import threading
from typing import Any, Callable, Iterable, Iterator

import numpy as np

__all__ = ["prefetch", "worker_prefetch", "TrainBatches", "padded", "local_rows"]


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


_worker: dict = {}


def _init_worker(make, slot_names) -> None:
  from multiprocessing import shared_memory  # pylint: disable=import-outside-toplevel
  _worker["make"] = make
  _worker["slots"] = [shared_memory.SharedMemory(name=name) for name in slot_names]


def _layout(batch: dict) -> list:
  return [(key, np.shape(v), np.asarray(v).dtype) for key, v in batch.items()]


def _nbytes(layout) -> int:
  return sum(int(np.prod(shape)) * np.dtype(dtype).itemsize for _, shape, dtype in layout)


def _slot_arrays(buffer, layout) -> dict[str, np.ndarray]:
  arrays, offset = {}, 0
  for key, shape, dtype in layout:
    array = np.ndarray(shape, dtype, buffer=buffer, offset=offset)
    arrays[key] = array
    offset += array.nbytes
  return arrays


def _run_worker(item, slot: int):
  """Writes the batch into shared-memory ``slot`` and returns its layout; a batch
  too large for the slot comes back pickled instead."""
  batch = _worker["make"](item)
  layout = _layout(batch)
  buffer = _worker["slots"][slot].buf
  if _nbytes(layout) > len(buffer):
    return batch
  for key, out in _slot_arrays(buffer, layout).items():
    out[...] = batch[key]
  return layout


def worker_prefetch(make_batch: Callable[[Any], dict], items: Iterable, workers: int,
                    ahead: int = 2, slot_bytes: int = 0) -> Iterator[dict]:
  """Yields ``make_batch(item)`` for ``items`` in order, built by ``workers`` processes.

  For generators that are pure functions of the step (all of capsjax's): the
  batches equal those of :func:`prefetch`, but the host's work scales over
  cores. ``make_batch`` must be picklable (e.g. a :class:`TrainBatches`).
  Workers are spawned (never forked: the parent runs JAX's threads) and write
  into shared-memory slots of ``slot_bytes`` (default: the size of the first
  batch, which is built here), ``ahead`` batches each in flight; a larger batch
  comes back pickled, slower. Each yielded batch is a copy the caller owns.
  """
  from multiprocessing import shared_memory  # pylint: disable=import-outside-toplevel
  if workers < 1:
    raise ValueError(f"workers must be >= 1, got {workers}.")
  items = iter(items)
  end = object()
  first = next(items, end)
  if first is end:
    return
  batch = make_batch(first)
  size = max(slot_bytes or _nbytes(_layout(batch)), 1)
  slots = [shared_memory.SharedMemory(create=True, size=size) for _ in range(workers * ahead)]
  context = multiprocessing.get_context("spawn")
  try:
    with context.Pool(workers, initializer=_init_worker,
                      initargs=(make_batch, [m.name for m in slots])) as pool:
      pending: collections.deque = collections.deque()
      free = collections.deque(range(len(slots)))

      def submit():
        item = next(items, end)
        if item is not end:
          slot = free.popleft()
          pending.append((slot, pool.apply_async(_run_worker, (item, slot))))

      for _ in range(len(slots)):
        submit()
      yield batch
      while pending:
        slot, result = pending.popleft()
        layout = result.get()
        if isinstance(layout, dict):  # did not fit the slot
          batch = layout
        else:
          batch = {k: v.copy() for k, v in _slot_arrays(slots[slot].buf, layout).items()}
        free.append(slot)
        submit()  # the slot goes straight back to work
        yield batch
  finally:
    for m in slots:
      m.close()
      m.unlink()


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
