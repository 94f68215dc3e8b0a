"""Single-label training splits: the paper's shifted examples, or any augmentation."""
from __future__ import annotations

from typing import Callable

import numpy as np

from capsjax.data.images import as_nhwc, labelled_batch, place, to_float
from capsjax.data.random import epoch_order, global_indices, randint

__all__ = ["TrainingImages", "ShiftedImages", "AugmentedImages"]


class TrainingImages:
  """A single-label training split visited in a seeded order, once per epoch;
  each example goes through :meth:`transform`, a pure function of
  ``(seed, stream index)``, and is its own reconstruction target.

  Args:
    images: uint8 ``(N, H, W)`` or ``(N, H, W, C)``.
    labels: int ``(N,)`` in ``[0, num_classes)``.
    seed: the randomness of order and transform.
    num_classes: the number of classes (the width of ``multi_hot``).
  """

  def __init__(self, images: np.ndarray, labels: np.ndarray, *, seed: int,
               num_classes: int = 10):
    self.images, self.labels = as_nhwc(images, labels)
    self.seed = int(seed)
    self.num_classes = num_classes

  def __len__(self) -> int:
    return len(self.labels)

  def transform(self, images: np.ndarray, index: np.ndarray) -> np.ndarray:
    """uint8 ``(B, H', W', C)`` at stream indices ``index`` -> float ``(B, H, W, C)``
    in [0, 1]; the identity (scaled to [0, 1]) here."""
    del index
    return to_float(images)

  def batch(self, step: int, batch_size: int, *, process_index: int = 0,
            process_count: int = 1) -> dict[str, np.ndarray]:
    """Training batch ``step`` (global size ``batch_size``), or this process's rows."""
    index = global_indices(step, batch_size, process_index, process_count)
    chosen = epoch_order(self.seed, len(self), index)
    image = self.transform(self.images[chosen], index)
    return labelled_batch(image, self.labels[chosen], self.num_classes)


class ShiftedImages(TrainingImages):
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
    super().__init__(images, labels, seed=seed, num_classes=num_classes)
    self.max_shift = max_shift

  def transform(self, images: np.ndarray, index: np.ndarray) -> np.ndarray:
    """Each image moved by ``(dy, dx)``, each uniform in ``[-max_shift, max_shift]``."""
    m = self.max_shift
    span = 2 * m + 1
    dy, dx = (randint(self.seed, index, k, span) for k in (0, 1))
    # Paste at offset (dy, dx) on a canvas padded by m, crop the centre:
    # the image moves by (dy - m, dx - m), zeros fill in.
    h, w = images.shape[1:3]
    padded = place(images, dy, dx, h + 2 * m, w + 2 * m)
    return to_float(padded[:, m:m + h, m:m + w])


class AugmentedImages(TrainingImages):
  """A grey training split through an augmentation ``augment(images, seed, index)``
  of float ``(N, H, W)`` images, the uint8 pixels times ``pixel_scale`` (e.g.
  :func:`capsjax.data.augment.efficient_capsnet_augment`); the reconstruction
  target is the augmented image."""

  def __init__(self, images: np.ndarray, labels: np.ndarray, *, seed: int,
               augment: Callable[[np.ndarray, int, np.ndarray], np.ndarray],
               num_classes: int = 10, pixel_scale: float = 1 / 255):
    super().__init__(images, labels, seed=seed, num_classes=num_classes)
    if self.images.shape[-1] != 1:
      raise ValueError(f"AugmentedImages takes grey images; got {self.images.shape[1:]}.")
    self.augment = augment
    self.pixel_scale = pixel_scale

  def transform(self, images: np.ndarray, index: np.ndarray) -> np.ndarray:
    """``augment`` of the grey images, with a channel axis."""
    return self.augment(to_float(images[..., 0], self.pixel_scale), self.seed,
                        index)[..., None]
