"""Shared-memory slots that worker processes write batches into, reused in turn.

grain hands each worker's output back through a new shared-memory segment per
element; creating and first touching one costs about 1 ms per MB (page
faults), as much as building a MultiMNIST batch. Here one segment is made
once: item ``i`` is written into slot ``i % slots``, after its writer has
waited for the consumer to copy item ``i - slots`` out, so a slot is never
overwritten while read, whatever the buffering between the two sides. The
consumer publishes its count of copied items in the segment's header; setting
the header's ``closed`` flag releases writers that wait on a consumer that left.
"""
from __future__ import annotations

import time
from multiprocessing import shared_memory
from typing import Any, Callable

import numpy as np

__all__ = ["SlotRing", "InSlot"]

_HEADER = 64            # bytes: [copied items, closed flag], padded to a cache line
_COPIED, _CLOSED = 0, 1


def layout(batch: dict) -> list:
  """``[(key, shape, dtype)]`` of a batch of arrays."""
  return [(key, np.shape(v), np.asarray(v).dtype) for key, v in batch.items()]


def nbytes(batch_layout) -> int:
  return sum(int(np.prod(shape)) * np.dtype(dtype).itemsize for _, shape, dtype in batch_layout)


def _arrays(buffer, batch_layout, offset: int) -> dict[str, np.ndarray]:
  arrays = {}
  for key, shape, dtype in batch_layout:
    arrays[key] = np.ndarray(shape, dtype, buffer=buffer, offset=offset)
    offset += arrays[key].nbytes
  return arrays


class InSlot:
  """What a writer returns for item ``index``: where its batch is, and its layout."""

  def __init__(self, index: int, batch_layout: list):
    self.index = index
    self.layout = batch_layout


class SlotRing:
  """``slots`` slots of ``slot_bytes`` in one shared-memory segment.

  Created by the consumer (:meth:`create`); pickled to the workers, whose
  :meth:`writer` fills the slots. A batch larger than a slot comes back as it
  is (the caller's transport then carries it).
  """

  def __init__(self, name: str, slots: int, slot_bytes: int):
    self.name, self.slots, self.slot_bytes = name, slots, slot_bytes
    self._memory: shared_memory.SharedMemory | None = None

  @classmethod
  def create(cls, slots: int, slot_bytes: int) -> "SlotRing":
    memory = shared_memory.SharedMemory(create=True, size=_HEADER + slots * slot_bytes)
    ring = cls(memory.name, slots, slot_bytes)
    ring._memory = memory
    ring._header[:] = 0
    return ring

  def __getstate__(self):
    return {"name": self.name, "slots": self.slots, "slot_bytes": self.slot_bytes}

  def __setstate__(self, state):
    self.__init__(**state)

  @property
  def _buffer(self):
    if self._memory is None:  # a worker: attach on first use
      self._memory = shared_memory.SharedMemory(name=self.name)
    return self._memory.buf

  @property
  def _header(self) -> np.ndarray:
    return np.ndarray((2,), np.int64, buffer=self._buffer)

  def _offset(self, index: int) -> int:
    return _HEADER + (index % self.slots) * self.slot_bytes

  # Writer side (worker processes).

  def writer(self, make_batch: Callable[[Any], dict]) -> "_Writer":
    """``(index, item) -> InSlot | batch``, for ``grain.MapDataset.map_with_index``."""
    return _Writer(self, make_batch)

  @property
  def closed(self) -> bool:
    return bool(self._header[_CLOSED])

  def write(self, index: int, batch: dict) -> InSlot | dict:
    """Writes item ``index`` into its slot once the slot is free; ``batch``
    itself if it does not fit; ``{}`` if the consumer closed the ring."""
    batch_layout = layout(batch)
    if nbytes(batch_layout) > self.slot_bytes:
      return batch
    header = self._header
    while header[_COPIED] <= index - self.slots:  # item index - slots still unread
      if header[_CLOSED]:
        return {}
      time.sleep(1e-4)
    for key, out in _arrays(self._buffer, batch_layout, self._offset(index)).items():
      out[...] = batch[key]
    return InSlot(index, batch_layout)

  # Consumer side.

  def read(self, received: InSlot | dict, expected_index: int) -> dict[str, np.ndarray]:
    """A copy of the batch of item ``expected_index``; frees its slot."""
    if isinstance(received, InSlot):
      if received.index != expected_index:
        raise RuntimeError(f"slot ring: got item {received.index}, expected "
                           f"{expected_index}; the stream is out of order.")
      batch = {key: array.copy() for key, array in
               _arrays(self._buffer, received.layout, self._offset(received.index)).items()}
    else:
      batch = {key: np.array(value) for key, value in received.items()}
    self._header[_COPIED] = expected_index + 1
    return batch

  def close(self) -> None:
    """Releases waiting writers; call before stopping them."""
    if self._memory is not None:
      self._header[_CLOSED] = 1

  def unlink(self) -> None:
    """Frees the segment (the consumer, once the writers are stopped)."""
    if self._memory is not None:
      self._memory.close()
      self._memory.unlink()
      self._memory = None


class _Writer:
  """Picklable ``(index, item) -> ring.write(index, make_batch(item))``."""

  def __init__(self, ring: SlotRing, make_batch: Callable[[Any], dict]):
    self.ring, self.make_batch = ring, make_batch

  def __call__(self, index: int, item: Any):
    if self.ring.closed:  # the consumer left: no more work
      return {}
    return self.ring.write(index, self.make_batch(item))
