"""Image helpers shared by the generators: checks, canvases, the batch layout.

Every generator yields dicts of NumPy arrays with the same keys:

  image       (B, H, W, C) float32 in [0, 1]
  labels      (B, K) int32   K labels per example (1, or 2 for MultiMNIST)
  multi_hot   (B, num_classes) float32
  components  (B, K, H, W, C) float32: each labelled object alone (reconstruction targets)
"""
from __future__ import annotations

import numpy as np

__all__ = ["as_nhwc", "place", "to_float", "classification_batch", "labelled_batch",
           "sample_bilinear", "standardise"]


def as_nhwc(images: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Checks a split and returns uint8 images ``(N, H, W, C)`` and int64 labels ``(N,)``.

  ``(N, H, W)`` images get a channel axis.
  """
  images = np.asarray(images)
  if images.dtype != np.uint8 or images.ndim not in (3, 4):
    raise ValueError(
        f"images must be uint8 (N, H, W) or (N, H, W, C), as load_mnist returns; got "
        f"{images.dtype} {images.shape}.")
  labels = np.asarray(labels)
  if labels.shape != images.shape[:1]:
    raise ValueError(f"labels {labels.shape} must be (N,) for {images.shape[0]} images.")
  if images.ndim == 3:
    images = images[..., None]
  return images, labels.astype(np.int64)


def place(images: np.ndarray, offsets_y: np.ndarray, offsets_x: np.ndarray,
          height: int, width: int) -> np.ndarray:
  """Pastes ``images (N, h, w, ...)`` on zero ``(N, height, width, ...)`` canvases
  at per-image offsets."""
  n, h, w = images.shape[:3]
  canvas = np.zeros((n, height, width) + images.shape[3:], images.dtype)
  rows = offsets_y[:, None] + np.arange(h)
  cols = offsets_x[:, None] + np.arange(w)
  canvas[np.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]] = images
  return canvas


def to_float(x: np.ndarray, scale: float = 1 / 255) -> np.ndarray:
  """uint8 -> float32 ``x * scale`` (in [0, 1] for the default 1/255)."""
  return x.astype(np.float32) * np.float32(scale)


def classification_batch(images: np.ndarray, labels: np.ndarray, num_classes: int,
                         scale: float = 1 / 255) -> dict[str, np.ndarray]:
  """One label per example: uint8 ``(B, H, W, C)`` and ``(B,)`` -> the batch layout
  (pixels times ``scale``)."""
  return labelled_batch(to_float(images, scale), labels, num_classes)


def labelled_batch(image: np.ndarray, labels: np.ndarray,
                   num_classes: int) -> dict[str, np.ndarray]:
  """One label per example: float ``(B, H, W, C)`` in [0, 1] and ``(B,)`` -> the
  batch layout; the image is its own reconstruction target."""
  image = np.asarray(image, np.float32)
  labels = labels.astype(np.int32)
  return {
      "image": image,
      "labels": labels[:, None],
      "multi_hot": np.eye(num_classes, dtype=np.float32)[labels],
      "components": image[:, None],
  }


def sample_bilinear(images: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
  """Samples ``images (N, H, W)`` at float pixel coordinates ``ys, xs (N, H', W')``
  by bilinear interpolation, zero outside; float32 ``(N, H', W')``."""
  n, h, w = images.shape
  y0, x0 = np.floor(ys).astype(np.int64), np.floor(xs).astype(np.int64)
  out = np.zeros(ys.shape, np.float32)
  rows = np.arange(n)[:, None, None]
  for dy in (0, 1):
    for dx in (0, 1):
      yy, xx = y0 + dy, x0 + dx
      weight = (1 - np.abs(ys - yy)) * (1 - np.abs(xs - xx))
      inside = (yy >= 0) & (yy < h) & (xx >= 0) & (xx < w)
      out += np.where(inside, weight * images[rows, np.clip(yy, 0, h - 1),
                                              np.clip(xx, 0, w - 1)], 0)
  return out


def standardise(images: np.ndarray) -> np.ndarray:
  """Each image to zero mean and unit variance, float32 ``(N, ...)``, the standard
  deviation floored at ``1 / sqrt(pixels)`` (TF's ``per_image_standardization``)."""
  x = np.asarray(images, np.float32)
  axes = tuple(range(1, x.ndim))
  mean = x.mean(axis=axes, keepdims=True)
  floor = np.float32(1 / np.sqrt(np.prod(x.shape[1:])))
  return (x - mean) / np.maximum(x.std(axis=axes, keepdims=True), floor)
