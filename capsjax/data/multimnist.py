"""The paper's MultiMNIST (section 6): pairs of overlapping digits, in NumPy.

Every pair is a pure function of ``(seed, global example index)`` (see
:mod:`capsjax.data.random`), so a batch is the same on any machine and device
count. Batches follow the layout of :mod:`capsjax.data.images` with
``image (B, 36, 36, 1)`` and ``labels (B, 2)``, two different classes.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np

from capsjax.data.images import as_nhwc, place, to_float
from capsjax.data.random import epoch_order, global_indices, randint

__all__ = ["MultiMNIST", "MultiMNISTTest", "MERGES"]

MERGES = ("clip_sum", "max")
NUM_CLASSES = 10
_DIGIT = 28


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
    images, labels = as_nhwc(images, labels)
    if images.shape[1:] != (_DIGIT, _DIGIT, 1):
      raise ValueError(f"images must be 28x28 grey digits; got {images.shape[1:]}.")
    if merge not in MERGES:
      raise ValueError(f"merge must be one of {MERGES}, got {merge!r}.")
    if not 0 <= max_shift <= 4:
      raise ValueError(f"max_shift must be in 0..4 (digits never wrap), got {max_shift}.")
    self.images = images
    self.labels = labels
    self.seed = int(seed)
    self.max_shift = max_shift
    self.merge = merge
    self.size = _DIGIT + 8
    self._class_counts = np.bincount(self.labels, minlength=NUM_CLASSES)
    if np.any(self._class_counts == 0):
      missing = ", ".join(str(k) for k in np.flatnonzero(self._class_counts == 0))
      raise ValueError(
          f"every class 0..9 needs at least one image to draw partners from; none of "
          f"class {missing}.")
    self._class_starts = np.concatenate([[0], np.cumsum(self._class_counts)[:-1]])
    self._by_class = np.argsort(self.labels, kind="stable")

  def __len__(self) -> int:
    return len(self.labels)

  def pairs(self, first: np.ndarray, index: np.ndarray) -> dict[str, np.ndarray]:
    """The pairs whose first digits are ``first``, drawn with counters ``index``."""
    seed = self.seed
    label_a = self.labels[first]
    label_b = (label_a + 1 + randint(seed, index, 0, NUM_CLASSES - 1)) % NUM_CLASSES
    within = randint(seed, index, 1, self._class_counts[label_b])
    second = self._by_class[self._class_starts[label_b] + within]
    span = 2 * self.max_shift + 1
    offset = 4 - self.max_shift
    shifts = [offset + randint(seed, index, 2 + k, span) for k in range(4)]
    n = len(first)
    digits = np.concatenate([self.images[first], self.images[second]])
    placed = place(digits, np.concatenate(shifts[0::2]), np.concatenate(shifts[1::2]),
                   self.size, self.size)
    a, b = placed[:n], placed[n:]
    if self.merge == "clip_sum":
      merged = np.minimum(a.astype(np.uint16) + b, 255).astype(np.uint8)
    else:
      merged = np.maximum(a, b)
    labels = np.stack([label_a, label_b], axis=1).astype(np.int32)
    multi_hot = np.zeros((n, NUM_CLASSES), np.float32)
    np.put_along_axis(multi_hot, labels, 1.0, axis=1)
    return {
        "image": to_float(merged),
        "labels": labels,
        "multi_hot": multi_hot,
        "components": to_float(np.stack([a, b], axis=1)),
    }

  def batch(self, step: int, batch_size: int, *, process_index: int = 0,
            process_count: int = 1) -> dict[str, np.ndarray]:
    """Training batch ``step`` (global size ``batch_size``), or this process's slice."""
    index = global_indices(step, batch_size, process_index, process_count)
    return self.pairs(epoch_order(self.seed, len(self), index), index)

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
