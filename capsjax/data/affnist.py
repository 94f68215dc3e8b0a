"""affNIST (Tieleman, 2013): MNIST digits under affine transformations on 40x40,
the test set of the paper's generalisation experiment (§5.2).

  load_affnist        the real test set, read from its official .mat files
  affnist_synthetic   an approximation generated from the MNIST test digits

The real set (https://www.cs.toronto.edu/~tijmen/affNIST/): 32 transformed
versions of each of the 10,000 MNIST test digits, 320,000 images of 40x40,
made by "applying various reasonable affine transformations" to the digits
centred on 40x40 (an edge of 6 background pixels). Its files, from
``32x/transformed/``: ``test.mat.zip`` (one ``test.mat``) or ``test_batches.zip``
(``test_batches/1.mat`` .. ``32.mat``, 10,000 each). Each holds a MATLAB
struct ``affNISTdata`` with ``image`` uint8 ``(1600, N)`` (one row-major 40x40
image per column) and ``label_int`` ``(1, N)``.

The synthetic set draws, for each MNIST test digit, one transformation from
the ranges reported for affNIST: rotation uniform in +-20 degrees, shear
uniform in +-0.2 (``x += shear * y``), horizontal and vertical scale each
uniform in [0.8, 1.2], then a translation uniform over the positions that keep
the whole transformed digit inside the 40x40 image. The page's own statement
of the ranges could not be checked offline; figures on this set are on an
approximation, not on affNIST.
"""
from __future__ import annotations

import os
import pathlib
import re

import numpy as np

from capsjax.data.errors import DataError
from capsjax.data.images import sample_bilinear
from capsjax.data.random import uniform

__all__ = ["load_affnist", "affnist_synthetic", "affine_parameters", "affine_place",
           "default_affnist_dir",
           "AFFNIST_URL", "ROTATION_DEGREES", "SHEAR", "SCALE", "CANVAS"]

AFFNIST_URL = "https://www.cs.toronto.edu/~tijmen/affNIST/32x/transformed/"
CANVAS = 40
ROTATION_DEGREES = 20.0   # uniform in [-20, 20]
SHEAR = 0.2               # uniform in [-0.2, 0.2]
SCALE = (0.8, 1.2)        # each axis, independently


def default_affnist_dir() -> pathlib.Path:
  """tensorflow-datasets' manual directory for affNIST: ``$TFDS_DATA_DIR`` (or
  ``~/tensorflow_datasets``) ``/downloads/manual/affnist``."""
  root = os.environ.get("TFDS_DATA_DIR") or os.path.expanduser("~/tensorflow_datasets")
  return pathlib.Path(root) / "downloads" / "manual" / "affnist"


def _mat_files(directory: pathlib.Path) -> list[pathlib.Path]:
  if (directory / "test.mat").is_file():
    return [directory / "test.mat"]
  batches = directory / "test_batches"
  found = [p for p in batches.glob("*.mat") if re.fullmatch(r"\d+\.mat", p.name)]
  return sorted(found, key=lambda p: int(p.stem))


def load_affnist(directory: str | os.PathLike | None = None) -> tuple[np.ndarray, np.ndarray]:
  """The real affNIST test set.

  Args:
    directory: holds ``test.mat`` or ``test_batches/<n>.mat``; None for
      :func:`default_affnist_dir`.

  Returns:
    uint8 images ``(N, 40, 40)`` upright, int64 labels ``(N,)``; N = 320,000
    for the whole set.
  """
  directory = pathlib.Path(directory) if directory else default_affnist_dir()
  files = _mat_files(directory)
  if not files:
    raise DataError(
        f"affNIST's test set is not in {directory} (no test.mat, no test_batches/*.mat). "
        f"Download test.mat.zip or test_batches.zip from {AFFNIST_URL}, unzip it there or "
        "pass its directory with --affnist_dir.")
  import scipy.io  # pylint: disable=import-outside-toplevel

  images, labels = [], []
  for path in files:
    try:
      data = scipy.io.loadmat(path)["affNISTdata"]
      pixels, label = data["image"][0, 0], data["label_int"][0, 0]
    except (KeyError, ValueError, IndexError, TypeError, OSError) as e:
      raise DataError(f"{path} is not an affNIST .mat file (a struct affNISTdata with image "
                      f"and label_int): {e}. Download it again from {AFFNIST_URL}.") from None
    if pixels.shape[0] != CANVAS * CANVAS or pixels.shape[1] != label.size:
      raise DataError(f"{path}: image is {pixels.shape} for {label.size} labels; affNIST's "
                      f"is (1600, N). Download it again from {AFFNIST_URL}.")
    # One column per image, its 1600 pixels row-major.
    images.append(np.ascontiguousarray(pixels.T).reshape(-1, CANVAS, CANVAS).astype(np.uint8))
    labels.append(label.ravel().astype(np.int64))
  return np.concatenate(images), np.concatenate(labels)


def affine_parameters(seed: int, index: np.ndarray) -> dict[str, np.ndarray]:
  """The transformation of each example: ``rotation`` (radians), ``shear``,
  ``scale_x``, ``scale_y`` and the translation fractions ``ty, tx`` in [0, 1),
  each ``(N,)``, pure functions of ``(seed, index)``."""
  u = [uniform(seed, index, stream) for stream in range(6)]
  low, high = SCALE
  return {
      "rotation": np.deg2rad(ROTATION_DEGREES * (2 * u[0] - 1)),
      "shear": SHEAR * (2 * u[1] - 1),
      "scale_x": low + (high - low) * u[2],
      "scale_y": low + (high - low) * u[3],
      "ty": u[4], "tx": u[5],
  }


def _linear_maps(p: dict[str, np.ndarray]) -> np.ndarray:
  """``(N, 2, 2)`` maps of ``(y, x)`` offsets from the digit's centre:
  scale, then shear, then rotation."""
  n = p["rotation"].shape[0]
  scale = np.zeros((n, 2, 2))
  scale[:, 0, 0], scale[:, 1, 1] = p["scale_y"], p["scale_x"]
  shear = np.tile(np.eye(2), (n, 1, 1))
  shear[:, 1, 0] = p["shear"]                     # x += shear * y
  c, s = np.cos(p["rotation"]), np.sin(p["rotation"])
  rotation = np.stack([np.stack([c, -s], -1), np.stack([s, c], -1)], -2)  # (y, x) rows
  return rotation @ shear @ scale


def affnist_synthetic(images: np.ndarray, seed: int, index: np.ndarray | None = None
                      ) -> np.ndarray:
  """Each digit transformed once, as described above, on a 40x40 canvas.

  Args:
    images: uint8 ``(N, h, w)`` digits (the MNIST test split).
    seed: the randomness of the transformations.
    index: ``(N,)`` stream indices (default ``0 .. N-1``).

  Returns:
    uint8 ``(N, 40, 40)``, bilinear resampling.
  """
  images = np.asarray(images)
  index = np.arange(len(images)) if index is None else np.asarray(index)
  # In chunks: the coordinates of a whole split would take gigabytes.
  return np.concatenate(
      [affine_place(images[i:i + 1000], affine_parameters(seed, index[i:i + 1000]))
       for i in range(0, len(images), 1000)] or [np.zeros((0, CANVAS, CANVAS), np.uint8)])


def affine_place(images: np.ndarray, params: dict[str, np.ndarray]) -> np.ndarray:
  """uint8 ``(N, h, w)`` digits transformed by ``params`` (as
  :func:`affine_parameters` gives) about their centre and placed on the canvas:
  the transformed ink's bounding box at fractions ``ty, tx`` of the free room
  (0: touching the top / left edge). uint8 ``(N, 40, 40)``."""
  _, h, w = images.shape
  maps = _linear_maps(params)                                        # (N, 2, 2)
  centre = np.array([(h - 1) / 2, (w - 1) / 2])
  # The transformed digit's extent: the corners of its ink's pixel squares.
  ink = images > 0
  rows, cols = ink.any(2), ink.any(1)
  top = np.where(rows.any(1), rows.argmax(1), 0)
  bottom = np.where(rows.any(1), h - 1 - rows[:, ::-1].argmax(1), h - 1)
  left = np.where(cols.any(1), cols.argmax(1), 0)
  right = np.where(cols.any(1), w - 1 - cols[:, ::-1].argmax(1), w - 1)
  corners = np.stack([np.stack([y, x], -1) for y in (top - 0.5, bottom + 0.5)
                      for x in (left - 0.5, right + 0.5)], 1) - centre   # (N, 4, 2)
  moved = np.einsum("nij,nkj->nki", maps, corners)
  lo, hi = moved.min(1), moved.max(1)                                # (N, 2) offsets
  # Place the digit's centre so that [lo, hi] lies in [-0.5, 39.5]; too large: centred.
  first, last = -0.5 - lo, CANVAS - 0.5 - hi
  fraction = np.stack([params["ty"], params["tx"]], -1)
  position = np.where(last >= first, first + fraction * (last - first), (first + last) / 2)
  # Inverse map: every canvas pixel to its point in the digit.
  grid = np.stack(np.mgrid[0:CANVAS, 0:CANVAS], -1).astype(np.float64)      # (40, 40, 2)
  offset = grid[None] - position[:, None, None]                            # (N, 40, 40, 2)
  source = np.einsum("nij,nyxj->nyxi", np.linalg.inv(maps), offset) + centre
  out = sample_bilinear(images.astype(np.float32), source[..., 0], source[..., 1])
  return np.clip(np.rint(out), 0, 255).astype(np.uint8)
