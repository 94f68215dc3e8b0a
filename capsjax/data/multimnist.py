"""The paper's MultiMNIST (section 6) and shifted single-digit MNIST, in NumPy.

Every example is a pure function of ``(dataset, seed, global example index)``:
randomness comes from a counter-based hash, not from a stateful generator, so a
batch is the same on any machine and device count, and each host of a
multi-host run can build just its own slice of the global batch.

Batches are dicts of NumPy arrays, the same keys for both datasets:

  image       (B, H, W, 1) float32 in [0, 1]
  labels      (B, K) int32   K = 1 (MNIST) or 2 (MultiMNIST, always different)
  multi_hot   (B, 10) float32
  components  (B, K, H, W, 1) float32: each digit alone (reconstruction targets)
"""
from __future__ import annotations

import functools
import queue
import threading
from typing import Callable, Iterator

import numpy as np

__all__ = ["MultiMNIST", "ShiftedMNIST", "MNISTTest", "prefetch", "MERGES"]

MERGES = ("clip_sum", "max")
NUM_CLASSES = 10
_DIGIT = 28


# ----------------------------------------------------------------------------
# Counter-based randomness.


def _mix(x: np.ndarray) -> np.ndarray:
  """splitmix64 finaliser, elementwise on uint64 (wrapping arithmetic)."""
  with np.errstate(over="ignore"):
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _hash(seed: int, index: np.ndarray, stream: int) -> np.ndarray:
  """Independent uint64 random words for each ``index`` in ``stream``."""
  mask = 0xFFFFFFFFFFFFFFFF
  key = _mix(np.uint64((seed + 0x9E3779B97F4A7C15 * (stream + 1)) & mask))
  with np.errstate(over="ignore"):
    return _mix(index.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15) ^ key)


def _randint(seed: int, index: np.ndarray, stream: int, n: int | np.ndarray) -> np.ndarray:
  """Uniform integers in ``[0, n)`` (``n`` may vary per index)."""
  return (_hash(seed, index, stream) % np.asarray(n, np.uint64)).astype(np.int64)


@functools.lru_cache(maxsize=4)
def _epoch_permutation(seed: int, epoch: int, n: int) -> np.ndarray:
  return np.random.default_rng([seed, epoch, 0x6361_7073]).permutation(n)


def _epoch_order(seed: int, n: int, index: np.ndarray) -> np.ndarray:
  """Example ``index`` of an endless stream that visits all ``n`` once per epoch."""
  epochs, positions = np.divmod(index, n)
  out = np.empty_like(index)
  for epoch in np.unique(epochs):
    sel = epochs == epoch
    out[sel] = _epoch_permutation(seed, int(epoch), n)[positions[sel]]
  return out


# ----------------------------------------------------------------------------
# Placing digits.


def _place(digits: np.ndarray, offsets_y: np.ndarray, offsets_x: np.ndarray,
           size: int) -> np.ndarray:
  """Pastes 28x28 ``digits (N, 28, 28)`` on zero ``size x size`` canvases."""
  n = digits.shape[0]
  canvas = np.zeros((n, size, size), digits.dtype)
  rows = offsets_y[:, None] + np.arange(_DIGIT)
  cols = offsets_x[:, None] + np.arange(_DIGIT)
  canvas[np.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]] = digits
  return canvas


def _check_split(images: np.ndarray, labels: np.ndarray) -> None:
  if images.ndim != 3 or images.shape[1:] != (_DIGIT, _DIGIT) or images.dtype != np.uint8:
    raise ValueError(
        f"images must be uint8 (N, 28, 28) as returned by load_mnist; got "
        f"{images.dtype} {images.shape}.")
  if labels.shape != images.shape[:1]:
    raise ValueError(f"labels {labels.shape} must be (N,) for {images.shape[0]} images.")


def _to_float(x: np.ndarray) -> np.ndarray:
  return (x.astype(np.float32) * np.float32(1 / 255))[..., None]


def _global_indices(step: int, batch_size: int, process_index: int,
                    process_count: int) -> np.ndarray:
  if step < 0 or batch_size < 1:
    raise ValueError(f"need step >= 0 and batch_size >= 1, got {step}, {batch_size}.")
  if batch_size % process_count:
    raise ValueError(
        f"global batch_size {batch_size} is not divisible by process_count {process_count}.")
  local = batch_size // process_count
  start = step * batch_size + process_index * local
  return np.arange(start, start + local, dtype=np.int64)


# ----------------------------------------------------------------------------


class MultiMNIST:
  """Pairs of overlapping digits of different classes, 36x36 (the paper, section 6).

  Each digit is padded by 4 px onto a 36x36 canvas and shifted independently
  by integers uniform in ``[-max_shift, max_shift]`` in each direction. The
  first digit runs through the split in a seeded order, once per epoch; its
  partner is a uniformly drawn digit of a uniformly drawn *other* class.

  Args:
    images: uint8 ``(N, 28, 28)``, one split of MNIST.
    labels: int ``(N,)``.
    seed: the randomness of everything this object produces.
    max_shift: maximum shift in pixels (4 in the paper); at most 4.
    merge: ``"clip_sum"`` (official code: ``min(a + b, 255)``) or ``"max"``.
  """

  def __init__(self, images: np.ndarray, labels: np.ndarray, *, seed: int,
               max_shift: int = 4, merge: str = "clip_sum"):
    _check_split(images, labels)
    if merge not in MERGES:
      raise ValueError(f"merge must be one of {MERGES}, got {merge!r}.")
    if not 0 <= max_shift <= 4:
      raise ValueError(f"max_shift must be in 0..4 (digits never wrap), got {max_shift}.")
    self.images = images
    self.labels = np.asarray(labels, np.int64)
    self.seed = int(seed)
    self.max_shift = max_shift
    self.merge = merge
    self.size = _DIGIT + 8
    order = np.argsort(self.labels, kind="stable")
    self._class_counts = np.bincount(self.labels, minlength=NUM_CLASSES)
    if np.any(self._class_counts == 0):
      raise ValueError("every class 0..9 needs at least one image to draw partners from.")
    self._class_starts = np.concatenate([[0], np.cumsum(self._class_counts)[:-1]])
    self._by_class = order

  def __len__(self) -> int:
    return len(self.labels)

  def pairs(self, first: np.ndarray, index: np.ndarray) -> dict[str, np.ndarray]:
    """The pairs whose first digits are ``first``, drawn with counters ``index``."""
    seed = self.seed
    label_a = self.labels[first]
    label_b = (label_a + 1 + _randint(seed, index, 0, NUM_CLASSES - 1)) % NUM_CLASSES
    within = _randint(seed, index, 1, self._class_counts[label_b])
    second = self._by_class[self._class_starts[label_b] + within]
    span = 2 * self.max_shift + 1
    offset = 4 - self.max_shift
    shifts = [offset + _randint(seed, index, 2 + k, span) for k in range(4)]
    n = len(first)
    digits = np.concatenate([self.images[first], self.images[second]])
    placed = _place(digits, np.concatenate(shifts[0::2]), np.concatenate(shifts[1::2]),
                    self.size)
    a, b = placed[:n], placed[n:]
    if self.merge == "clip_sum":
      merged = np.minimum(a.astype(np.uint16) + b, 255).astype(np.uint8)
    else:
      merged = np.maximum(a, b)
    labels = np.stack([label_a, label_b], axis=1).astype(np.int32)
    multi_hot = np.zeros((n, NUM_CLASSES), np.float32)
    np.put_along_axis(multi_hot, labels, 1.0, axis=1)
    return {
        "image": _to_float(merged),
        "labels": labels,
        "multi_hot": multi_hot,
        "components": _to_float(np.stack([a, b], axis=1)),
    }

  def batch(self, step: int, batch_size: int, *, process_index: int = 0,
            process_count: int = 1) -> dict[str, np.ndarray]:
    """Training batch ``step`` (global size ``batch_size``), or this process's slice."""
    index = _global_indices(step, batch_size, process_index, process_count)
    return self.pairs(_epoch_order(self.seed, len(self), index), index)

  def test_set(self, pairs_per_digit: int = 1000) -> "MultiMNISTTest":
    """The fixed test set: ``pairs_per_digit`` pairs with each digit as the first."""
    return MultiMNISTTest(self, pairs_per_digit)


class MultiMNISTTest:
  """A fixed, seeded MultiMNIST test set, ``len(split) * pairs_per_digit`` pairs."""

  def __init__(self, source: MultiMNIST, pairs_per_digit: int):
    if pairs_per_digit < 1:
      raise ValueError(f"pairs_per_digit must be >= 1, got {pairs_per_digit}.")
    self.source = source
    self.pairs_per_digit = pairs_per_digit

  def __len__(self) -> int:
    return len(self.source) * self.pairs_per_digit

  def batches(self, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
    """All pairs in order; the last batch may be short."""
    for start in range(0, len(self), batch_size):
      index = np.arange(start, min(start + batch_size, len(self)), dtype=np.int64)
      # Counters offset so test pairs never share randomness with training.
      yield self.source.pairs(index // self.pairs_per_digit, index + (1 << 62))


class ShiftedMNIST:
  """Single-digit MNIST with the paper's augmentation: shifts of up to 2 px, zero padded."""

  def __init__(self, images: np.ndarray, labels: np.ndarray, *, seed: int, max_shift: int = 2):
    _check_split(images, labels)
    self.images = images
    self.labels = np.asarray(labels, np.int64)
    self.seed = int(seed)
    self.max_shift = max_shift

  def __len__(self) -> int:
    return len(self.labels)

  def batch(self, step: int, batch_size: int, *, process_index: int = 0,
            process_count: int = 1) -> dict[str, np.ndarray]:
    index = _global_indices(step, batch_size, process_index, process_count)
    chosen = _epoch_order(self.seed, len(self), index)
    m = self.max_shift
    span = 2 * m + 1
    dy, dx = (_randint(self.seed, index, k, span) for k in (0, 1))
    # Paste at offset (dy, dx) on a canvas padded by m, crop the centre:
    # the digit moves by (dy - m, dx - m), zeros fill in.
    padded = _place(self.images[chosen], dy, dx, _DIGIT + 2 * m)
    image = padded[:, m:m + _DIGIT, m:m + _DIGIT]
    return _single_digit_batch(image, self.labels[chosen])


class MNISTTest:
  """The MNIST test split, unshifted, in order."""

  def __init__(self, images: np.ndarray, labels: np.ndarray):
    _check_split(images, labels)
    self.images, self.labels = images, np.asarray(labels, np.int64)

  def __len__(self) -> int:
    return len(self.labels)

  def batches(self, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
    for start in range(0, len(self), batch_size):
      sl = slice(start, start + batch_size)
      yield _single_digit_batch(self.images[sl], self.labels[sl])


def _single_digit_batch(images: np.ndarray, labels: np.ndarray) -> dict[str, np.ndarray]:
  image = _to_float(images)
  labels = labels.astype(np.int32)
  return {
      "image": image,
      "labels": labels[:, None],
      "multi_hot": np.eye(NUM_CLASSES, dtype=np.float32)[labels],
      "components": image[:, None],
  }


def prefetch(make_batch: Callable[[int], dict], steps: range, size: int = 2) -> Iterator[dict]:
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
