"""Digits on a larger black canvas: the paper's expanded MNIST (§5.2), each
28x28 digit placed at a random position on a 40x40 background.

  place_randomly  uint8 (N, h, w, C) -> uint8 (N, canvas, canvas, C)
  CanvasImages    a training split placed anew each time it is drawn
"""
from __future__ import annotations

import numpy as np

from capsjax.data.images import place, to_float
from capsjax.data.random import randint
from capsjax.data.shifted import TrainingImages

__all__ = ["place_randomly", "CanvasImages"]


def place_randomly(images: np.ndarray, seed: int, index: np.ndarray, canvas: int) -> np.ndarray:
  """Each image at a uniformly random offset on a zero ``canvas x canvas`` image.

  Args:
    images: ``(N, h, w, ...)``, ``h, w <= canvas``.
    seed: the randomness; the offsets are pure functions of ``(seed, index)``.
    index: ``(N,)`` stream indices of the images.
    canvas: the side of the output.

  Returns:
    ``(N, canvas, canvas, ...)`` of ``images``' dtype, the top-left corner of
    image ``i`` at ``(dy_i, dx_i)``, each uniform in ``[0, canvas - h]`` (resp. ``w``).
  """
  h, w = images.shape[1:3]
  if h > canvas or w > canvas:
    raise ValueError(f"images of {h}x{w} do not fit on a {canvas}x{canvas} canvas.")
  dy = randint(seed, index, 0, canvas - h + 1)
  dx = randint(seed, index, 1, canvas - w + 1)
  return place(images, dy, dx, canvas, canvas)


class CanvasImages(TrainingImages):
  """A training split whose digits are placed at random on a ``canvas`` square,
  a new position each time an example is drawn (its stream index)."""

  def __init__(self, images: np.ndarray, labels: np.ndarray, *, seed: int, canvas: int = 40,
               num_classes: int = 10):
    super().__init__(images, labels, seed=seed, num_classes=num_classes)
    self.canvas = canvas

  def transform(self, images: np.ndarray, index: np.ndarray) -> np.ndarray:
    return to_float(place_randomly(images, self.seed, index, self.canvas))
