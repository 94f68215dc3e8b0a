"""The canonical order of a split that can come from several sources.

The same MNIST split comes from the IDX files in their order, or from a
prepared tensorflow-datasets copy, which tfds stores shuffled. So that a
config and seed give the same batches, MultiMNIST test pairs and
``--test_subset`` whatever the source, every source's split is put in one
order that depends on its content alone: sorted by a 64-bit hash of each
image's bytes, then by label. Examples equal in both keys are identical, so
their order among themselves does not matter. The hash order is
pseudo-random, so a prefix of it (``--test_subset``) is an unbiased sample.
"""
from __future__ import annotations

import numpy as np

from capsjax.data.random import mix64

__all__ = ["content_hash", "canonical_order"]

_START = np.uint64(0x6361_7073_6A61_7821)


def content_hash(images: np.ndarray) -> np.ndarray:
  """A uint64 hash of each image's bytes ``(N, ...)`` in C order (so an
  ``(N, 28, 28)`` split and its ``(N, 28, 28, 1)`` copy hash alike)."""
  images = np.asarray(images)
  if images.dtype != np.uint8:
    raise ValueError(f"images must be uint8; got {images.dtype}.")
  n = images.shape[0]
  rows = images.reshape(n, -1)
  pad = -rows.shape[1] % 8
  if pad:
    rows = np.concatenate([rows, np.zeros((n, pad), np.uint8)], axis=1)
  # Little-endian 64-bit words, one row per word position, folded in order.
  words = np.ascontiguousarray(rows).view("<u8").astype(np.uint64).T.copy()
  digest = np.full(n, _START, np.uint64)
  for word in words:
    digest = mix64(digest ^ word)
  return digest


def canonical_order(images: np.ndarray,
                    labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """``(images, labels)`` sorted by :func:`content_hash`, then label: the same
  arrays whatever order they came in."""
  labels = np.asarray(labels)
  order = np.lexsort((labels, content_hash(images)))
  return images[order], labels[order]
