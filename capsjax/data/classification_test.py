"""The test split of a single-label dataset: every example, unshifted, in order."""
from __future__ import annotations

from typing import Callable, Iterator

import numpy as np

from capsjax.data.images import as_nhwc, classification_batch, labelled_batch

__all__ = ["ClassificationTest"]


class ClassificationTest:
  """A test split, unshifted, in order.

  Args:
    images: uint8 ``(N, H, W)`` or ``(N, H, W, C)``.
    labels: int ``(N,)`` in ``[0, num_classes)``.
    num_classes: the number of classes (the width of ``multi_hot``).
    pixel_scale: uint8 pixels are multiplied by it (1/255: [0, 1]).
    transform: applied to each batch's float images ``(B, H, W, C)`` after the
      scaling (e.g. :func:`capsjax.data.images.standardise`); None: none.
  """

  def __init__(self, images: np.ndarray, labels: np.ndarray, *, num_classes: int = 10,
               pixel_scale: float = 1 / 255,
               transform: Callable[[np.ndarray], np.ndarray] | None = None):
    self.images, self.labels = as_nhwc(images, labels)
    self.num_classes = num_classes
    self.pixel_scale = pixel_scale
    self.transform = transform

  def __len__(self) -> int:
    return len(self.labels)

  def batches(self, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
    """All examples in order; the last batch may be short."""
    for start in range(0, len(self), batch_size):
      sl = slice(start, start + batch_size)
      batch = classification_batch(self.images[sl], self.labels[sl], self.num_classes,
                                   self.pixel_scale)
      if self.transform is not None:
        batch = labelled_batch(self.transform(batch["image"]), self.labels[sl], self.num_classes)
      yield batch
