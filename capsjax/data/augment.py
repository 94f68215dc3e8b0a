"""Efficient-CapsNet's MNIST augmentation, in vectorised NumPy.

Read from the official pre-processing (EscVM/Efficient-CapsNet,
``utils/pre_process_mnist.py``), applied in its order to every training image:

1. rotation, half of the time, by ``int(30 * clip(N(0, 0.33), +-0.9999))`` degrees
   about the centre (bilinear, zero fill);
2. a shift within the digit's margins: per axis a direction and a fraction
   ``min(|N(0, 0.33)|, 0.9999)`` of the empty margin on that side;
3. a width squish: resized to ``28 - w`` columns, ``w = 1 + floor(7 a)``, then
   placed ``w // 2 + floor(2 b)`` columns from the left, ``a`` and ``b`` each
   ``min(|N(0, 0.33)|, 0.9999)`` (so the extra column with probability
   ``P(|N(0, 0.33)| >= 0.5)`` = 0.13); linear interpolation here, the official
   code uses antialiased Lanczos-3;
4. an erasure of a 4x4 patch whose corner is uniform in ``[4, 22]^2``.

Every random number is a pure function of ``(seed, example index)``
(:mod:`capsjax.data.random`), so a batch is the same on any machine.
"""
from __future__ import annotations

import numpy as np

from capsjax.data.images import sample_bilinear
from capsjax.data.random import normal, uniform

__all__ = ["efficient_capsnet_augment"]

_SIZE = 28


def _clip_normal(seed, index, stream):
  return np.clip(0.33 * normal(seed, index, stream), -0.9999, 0.9999)


def _rotate(images, seed, index):
  angle = np.trunc(30 * _clip_normal(seed, index, 0))          # whole degrees, as int()
  keep = _clip_normal(seed, index, 1) > 0                      # half are left as they are
  theta = np.where(keep, 0.0, np.deg2rad(angle))[:, None, None]
  c = (_SIZE / 2)  # cv2.getRotationMatrix2D((14, 14), ...): about pixel coordinate 14
  y, x = np.mgrid[0:_SIZE, 0:_SIZE].astype(np.float64)
  cos, sin = np.cos(theta), np.sin(theta)
  src_x = cos * (x - c) - sin * (y - c) + c
  src_y = sin * (x - c) + cos * (y - c) + c
  return sample_bilinear(images, src_y, src_x)


def _shift(images, seed, index):
  n = len(images)
  ink = images > 0
  cols, rows = ink.any(axis=1), ink.any(axis=2)                # (N, W), (N, H)
  empty = ~cols.any(axis=1)
  first_col = np.where(empty, 0, cols.argmax(axis=1))
  last_col = np.where(empty, _SIZE - 1, _SIZE - 1 - cols[:, ::-1].argmax(axis=1))
  first_row = np.where(empty, 0, rows.argmax(axis=1))
  last_row = np.where(empty, _SIZE - 1, _SIZE - 1 - rows[:, ::-1].argmax(axis=1))
  amount_x = np.minimum(np.abs(0.33 * normal(seed, index, 2)), 0.9999)
  amount_y = np.minimum(np.abs(0.33 * normal(seed, index, 3)), 0.9999)
  right_x = uniform(seed, index, 4) < 0.5
  down_y = uniform(seed, index, 5) < 0.5
  dx = np.where(right_x, np.floor(amount_x * (_SIZE - last_col)),
                np.floor(-amount_x * first_col)).astype(np.int64)
  dy = np.where(down_y, np.floor(amount_y * (_SIZE - last_row)),
                np.floor(-amount_y * first_row)).astype(np.int64)
  y, x = np.mgrid[0:_SIZE, 0:_SIZE]
  src_y = (y[None] - dy[:, None, None]) % _SIZE                # a roll, as the official code
  src_x = (x[None] - dx[:, None, None]) % _SIZE
  return images[np.arange(n)[:, None, None], src_y, src_x]


def _squish(images, seed, index):
  width_cut = np.floor(np.minimum(np.abs(0.33 * normal(seed, index, 6)), 0.9999)
                       * (_SIZE / 4) + 1).astype(np.int64)     # 1..7 columns narrower
  extra = np.floor(2 * np.minimum(np.abs(0.33 * normal(seed, index, 7)), 0.9999))
  offset = width_cut // 2 + extra.astype(np.int64)
  width = _SIZE - width_cut
  x = np.arange(_SIZE)[None, :]
  j = x - offset[:, None]                                      # column of the narrow image
  src_x = (j + 0.5) * (_SIZE / width[:, None]) - 0.5
  inside = (j >= 0) & (j < width[:, None])
  src_x = np.where(inside, np.clip(src_x, 0, _SIZE - 1), -10.0)  # outside: zero
  y = np.arange(_SIZE)[None, :, None].astype(np.float64)
  return sample_bilinear(images, np.broadcast_to(y, images.shape),
                   np.broadcast_to(src_x[:, None, :], images.shape))


def _erase(images, seed, index):
  top = (np.floor(uniform(seed, index, 8) * 19) + 4).astype(np.int64)
  left = (np.floor(uniform(seed, index, 9) * 19) + 4).astype(np.int64)
  y, x = np.mgrid[0:_SIZE, 0:_SIZE]
  patch = ((y[None] >= top[:, None, None]) & (y[None] < top[:, None, None] + 4)
           & (x[None] >= left[:, None, None]) & (x[None] < left[:, None, None] + 4))
  return np.where(patch, 0, images).astype(np.float32)


def efficient_capsnet_augment(images: np.ndarray, seed: int, index: np.ndarray) -> np.ndarray:
  """Augments float images ``(N, 28, 28)`` in [0, 1]; ``index (N,)`` int64 counters.

  Returns float32 ``(N, 28, 28)`` in [0, 1].
  """
  if images.shape[1:] != (_SIZE, _SIZE):
    raise ValueError(f"images must be (N, 28, 28); got {images.shape}.")
  x = _rotate(images.astype(np.float32), seed, index)
  x = _shift(x, seed, index)
  x = _squish(x, seed, index)
  return np.clip(_erase(x, seed, index), 0, 1)
