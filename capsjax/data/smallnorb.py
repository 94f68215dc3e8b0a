"""smallNORB (LeCun et al., 2004) as the EM-routing paper trains on it.

5 toy categories under 18 azimuths, 9 elevations and 6 lightings; 24,300
training and 24,300 test pairs of 96x96 grey stereo images (the first view is
used). Read with ``tfds.data_source('smallnorb')`` from a prepared copy: on a
machine with internet and TensorFlow, ``tfds build smallnorb`` once, then set
``TFDS_DATA_DIR``. The paper's protocol (section 5): images downsampled to
48x48 and standardised ("normalized each image to have zero mean and unit
variance"); in training random 32x32 crops with random brightness and contrast
added to the standardised image; at test the centre 32x32 crop of it.
"""
from __future__ import annotations

import numpy as np

from capsjax.data.images import standardise
from capsjax.data.random import randint, uniform
from capsjax.data.tfds_images import load_tfds_split

__all__ = ["load_smallnorb", "smallnorb_augment", "centre_crop", "CROP", "MAX_BRIGHTNESS",
           "CONTRAST_RANGE"]

CROP = 32
MAX_BRIGHTNESS = 32 / 255          # brightness: + uniform(-32, 32) grey levels
CONTRAST_RANGE = (0.5, 1.5)        # contrast: (x - mean) * uniform(0.5, 1.5) + mean


def _halve(images: np.ndarray) -> np.ndarray:
  """uint8 ``(N, H, W, C)`` -> ``(N, H/2, W/2, C)``, the mean of each 2x2 block."""
  n, h, w, c = images.shape
  blocks = images[:, :h // 2 * 2, :w // 2 * 2].reshape(n, h // 2, 2, w // 2, 2, c)
  return np.round(blocks.mean(axis=(2, 4), dtype=np.float32)).astype(np.uint8)


def load_smallnorb(split: str, data_dir: str | None = None,
                   size: int = 48) -> tuple[np.ndarray, np.ndarray]:
  """``(images uint8 (N, size, size, 1), categories int32 (N,))`` of a prepared split.

  ``size`` 48 halves the 96x96 images (2x2 means), as the paper does.
  """
  images, labels = load_tfds_split("smallnorb", split, data_dir, label_key="label_category")
  while images.shape[1] >= 2 * size:
    images = _halve(images)
  if images.shape[1] != size:
    raise ValueError(f"smallNORB images are {images.shape[1]}x{images.shape[2]}; cannot "
                     f"downsample them to {size}x{size} by halving.")
  return images, labels


def centre_crop(images: np.ndarray, size: int = CROP) -> np.ndarray:
  """The centre ``size x size`` of ``(N, H, W, ...)``."""
  top, left = (images.shape[1] - size) // 2, (images.shape[2] - size) // 2
  return images[:, top:top + size, left:left + size]


def smallnorb_augment(images: np.ndarray, seed: int, index: np.ndarray) -> np.ndarray:
  """Float ``(N, 48, 48)`` in [0, 1], each standardised, then a random 32x32 crop with
  random brightness (+- 32/255) and contrast (x0.5 - 1.5 about its mean), a pure
  function of ``(seed, index)``; float32 ``(N, 32, 32)``."""
  images = standardise(images)
  n, h, w = images.shape
  top = randint(seed, index, 20, h - CROP + 1)
  left = randint(seed, index, 21, w - CROP + 1)
  rows = top[:, None] + np.arange(CROP)
  cols = left[:, None] + np.arange(CROP)
  crops = images[np.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]
  brightness = (2 * uniform(seed, index, 22) - 1) * MAX_BRIGHTNESS
  low, high = CONTRAST_RANGE
  contrast = low + (high - low) * uniform(seed, index, 23)
  mean = crops.mean(axis=(1, 2), keepdims=True)
  out = (crops - mean) * contrast[:, None, None] + mean + brightness[:, None, None]
  return out.astype(np.float32)
