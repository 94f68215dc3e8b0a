"""Feeding batches: grain's thread and worker processes give the batches in
order, a dying worker is a one-line error, nothing is left in /dev/shm; the
device calls of the training loop."""
import os
import signal
import time

import numpy as np
import pytest

from capsjax.data import DataWorkerError, batch_stream
from capsjax.data.pipeline import Chunks

SHM = "/dev/shm"


class Filled:
  """Picklable ``item -> batch``: an image filled with the item, and its label."""

  def __call__(self, item):
    return {"image": np.full((3, 40, 40), item, np.float32), "labels": np.array([item, -item])}


class DiesAt:
  """A worker that dies outright (SIGKILL) when it reaches item ``n``."""

  def __init__(self, n):
    self.n = n

  def __call__(self, item):
    if item == self.n:
      os.kill(os.getpid(), signal.SIGKILL)
    return {"x": np.full((1000,), item, np.int64)}


def shm_entries() -> set[str]:
  return set(os.listdir(SHM)) if os.path.isdir(SHM) else set()


@pytest.mark.parametrize("workers", [0, 1, 2])
def test_batches_come_in_order_and_leave_nothing_behind(workers):
  before = shm_entries()
  got = list(batch_stream(Filled(), range(7, 20), workers=workers))
  assert [b["image"][0, 0, 0] for b in got] == list(range(7, 20))
  for item, b in zip(range(7, 20), got):
    np.testing.assert_array_equal(b["image"], np.full((3, 40, 40), item, np.float32))
    np.testing.assert_array_equal(b["labels"], [item, -item])
    assert type(b["image"]) is np.ndarray  # a plain copy, not a view of shared memory
  assert shm_entries() <= before


def test_a_stream_closed_early_stops_its_workers_and_frees_their_memory():
  import multiprocessing
  before = shm_entries()
  stream = batch_stream(Filled(), range(10 ** 6), workers=2)
  assert [next(stream)["labels"][0] for _ in range(5)] == [0, 1, 2, 3, 4]
  assert len(multiprocessing.active_children()) >= 2
  stream.close()
  assert shm_entries() <= before
  assert not [p for p in multiprocessing.active_children() if "grain" in p.name]


def test_errors_of_the_batch_function_reach_the_consumer():
  def boom(item):
    if item == 3:
      raise ValueError("bad item 3")
    return {"x": np.array([item])}

  stream = batch_stream(boom, range(5))
  assert [int(next(stream)["x"][0]) for _ in range(3)] == [0, 1, 2]
  with pytest.raises(ValueError, match="bad item 3"):
    next(stream)


def test_a_worker_killed_outright_is_a_data_worker_error():
  # (The batch it held in shared memory is unlinked by Python's resource
  # tracker when the process exits: the end-to-end test checks /dev/shm.)
  import multiprocessing
  stream = batch_stream(DiesAt(6), range(100), workers=2)
  with pytest.raises(DataWorkerError, match=r"a data worker process died \(Worker process was "
                     "terminated unexpectedly with exit code -9\\)"):
    for _ in stream:
      pass
  assert not [p for p in multiprocessing.active_children() if "grain" in p.name]


def test_bad_worker_counts_are_refused():
  with pytest.raises(ValueError, match="workers >= 0"):
    next(batch_stream(Filled(), range(3), workers=-1))


def reference_chunks(start, total, k):
  """The device calls as the loop defined them, one at a time: a block of ``k``
  from every multiple of ``k`` that fits, single steps elsewhere."""
  out, first = [], start
  while first < total:
    count = k if first % k == 0 and first + k <= total else 1
    out.append((first, count))
    first += count
  return out


@pytest.mark.parametrize("start,total,k", [(0, 10, 1), (0, 10, 3), (4, 23, 5), (7, 9, 5),
                                           (10, 10, 2), (0, 4, 8), (6, 30, 3)])
def test_chunks_are_the_blocks_and_single_steps_of_the_loop(start, total, k):
  chunks = Chunks(start, total, k)
  assert list(chunks) == reference_chunks(start, total, k)
  assert len(chunks) == len(reference_chunks(start, total, k))
  with pytest.raises(IndexError):
    chunks[len(chunks)]


def test_chunks_of_a_long_run_are_computed_not_stored():
  chunks = Chunks(3, 10 ** 12, 10)
  assert chunks[0] == (3, 1) and chunks[7] == (10, 10)
  assert chunks[len(chunks) - 1] == (10 ** 12 - 10, 10)


def test_workers_build_the_batches_and_blocks_of_the_training_loop():
  from capsjax.data import MultiMNIST, TrainBatches, load_mnist
  images, labels = load_mnist("test", source="bundled")
  make = TrainBatches(MultiMNIST(images[:500], labels[:500], seed=3), 16)
  chunks = [(0, 1), (1, 1), (2, 3), (5, 1), (6, 2)]
  got = list(batch_stream(make, chunks, workers=2))
  assert len(got) == len(chunks)
  for (first, count), batch in zip(chunks, got):
    want = make((first, count))
    if count > 1:  # a block is the single batches stacked
      for i in range(count):
        np.testing.assert_array_equal(want["image"][i], make((first + i, 1))["image"])
    assert batch.keys() == want.keys()
    for key in want:
      assert batch[key].dtype == want[key].dtype
      np.testing.assert_array_equal(batch[key], want[key])


def test_slot_ring_never_overwrites_a_slot_before_it_is_read():
  import threading
  from capsjax.data.slot_ring import InSlot, SlotRing
  ring = SlotRing.create(slots=2, slot_bytes=8 * 4)
  written = []

  def writer():
    for i in range(6):
      written.append(ring.write(i, {"x": np.full(4, i, np.int64)}))

  thread = threading.Thread(target=writer)
  thread.start()
  try:
    thread.join(0.3)
    assert len(written) == 2  # both slots full: item 2 waits for item 0 to be read
    for i in range(6):
      while len(written) <= i:
        time.sleep(0.01)
      assert isinstance(written[i], InSlot) and written[i].index == i
      np.testing.assert_array_equal(ring.read(written[i], i)["x"], np.full(4, i))
      time.sleep(0.05)
      assert len(written) <= i + 3  # at most the two slots ahead of the reader
    assert ring.write(6, {"x": np.zeros(5, np.int64)})["x"].shape == (5,)  # too large: as is
    with pytest.raises(RuntimeError, match="got item 7, expected 6"):
      ring.read(InSlot(7, written[0].layout), 6)
  finally:
    thread.join()
    ring.close()
    ring.unlink()


def test_closing_a_slot_ring_releases_a_waiting_writer():
  import threading
  from capsjax.data.slot_ring import SlotRing
  ring = SlotRing.create(slots=1, slot_bytes=8)
  ring.write(0, {"x": np.zeros(1)})
  result = []
  thread = threading.Thread(target=lambda: result.append(ring.write(1, {"x": np.ones(1)})))
  thread.start()
  thread.join(0.2)
  assert thread.is_alive()  # slot 0 is unread
  ring.close()
  thread.join(5)
  assert result == [{}]
  ring.unlink()
