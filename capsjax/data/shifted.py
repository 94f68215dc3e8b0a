"""Single-label image datasets: shifted or augmented training examples, the fixed test split."""
from __future__ import annotations

from typing import Callable, Iterator

import numpy as np

from capsjax.data.images import as_nhwc, classification_batch, place, to_float
from capsjax.data.random import epoch_order, global_indices, randint

__all__ = ["ShiftedImages", "AugmentedImages", "ClassificationTest"]


class ShiftedImages:
  """A training split with the paper's augmentation: shifts of up to ``max_shift``
  px in each direction, zero padded (2 px for MNIST).

  Args:
    images: uint8 ``(N, H, W)`` or ``(N, H, W, C)``.
    labels: int ``(N,)`` in ``[0, num_classes)``.
    seed: the randomness of order and shifts.
    max_shift: the largest shift, in pixels.
    num_classes: the number of classes (the width of ``multi_hot``).
  """

  def __init__(self, images: np.ndarray, labels: np.ndarray, *, seed: int,
               max_shift: int = 2, num_classes: int = 10):
    self.images, self.labels = as_nhwc(images, labels)
    self.seed = int(seed)
    self.max_shift = max_shift
    self.num_classes = num_classes

  def __len__(self) -> int:
    return len(self.labels)

  def batch(self, step: int, batch_size: int, *, process_index: int = 0,
            process_count: int = 1) -> dict[str, np.ndarray]:
    """Training batch ``step`` (global size ``batch_size``), or this process's rows."""
    index = global_indices(step, batch_size, process_index, process_count)
    chosen = epoch_order(self.seed, len(self), index)
    m = self.max_shift
    span = 2 * m + 1
    dy, dx = (randint(self.seed, index, k, span) for k in (0, 1))
    # Paste at offset (dy, dx) on a canvas padded by m, crop the centre:
    # the image moves by (dy - m, dx - m), zeros fill in.
    h, w = self.images.shape[1:3]
    padded = place(self.images[chosen], dy, dx, h + 2 * m, w + 2 * m)
    image = padded[:, m:m + h, m:m + w]
    return classification_batch(image, self.labels[chosen], self.num_classes)


class AugmentedImages:
  """A grey training split through an augmentation ``augment(images, seed, index)``
  of float ``(N, H, W)`` images in [0, 1] (e.g.
  :func:`capsjax.data.augment.efficient_capsnet_augment`); the reconstruction
  target is the augmented image."""

  def __init__(self, images: np.ndarray, labels: np.ndarray, *, seed: int,
               augment: Callable[[np.ndarray, int, np.ndarray], np.ndarray],
               num_classes: int = 10):
    self.images, self.labels = as_nhwc(images, labels)
    if self.images.shape[-1] != 1:
      raise ValueError(f"AugmentedImages takes grey images; got {self.images.shape[1:]}.")
    self.seed = int(seed)
    self.augment = augment
    self.num_classes = num_classes

  def __len__(self) -> int:
    return len(self.labels)

  def batch(self, step: int, batch_size: int, *, process_index: int = 0,
            process_count: int = 1) -> dict[str, np.ndarray]:
    """Training batch ``step`` (global size ``batch_size``), or this process's rows."""
    index = global_indices(step, batch_size, process_index, process_count)
    chosen = epoch_order(self.seed, len(self), index)
    image = self.augment(to_float(self.images[chosen, ..., 0]), self.seed, index)[..., None]
    labels = self.labels[chosen].astype(np.int32)
    return {"image": image.astype(np.float32), "labels": labels[:, None],
            "multi_hot": np.eye(self.num_classes, dtype=np.float32)[labels],
            "components": image[:, None].astype(np.float32)}


class ClassificationTest:
  """A test split, unshifted, in order."""

  def __init__(self, images: np.ndarray, labels: np.ndarray, *, num_classes: int = 10):
    self.images, self.labels = as_nhwc(images, labels)
    self.num_classes = num_classes

  def __len__(self) -> int:
    return len(self.labels)

  def batches(self, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
    """All examples in order; the last batch may be short."""
    for start in range(0, len(self), batch_size):
      sl = slice(start, start + batch_size)
      yield classification_batch(self.images[sl], self.labels[sl], self.num_classes)
