"""Any prepared tensorflow-datasets image-classification dataset, through ``tfds.data_source``.

``tfds.data_source`` reads prepared (array_record) datasets without
TensorFlow. Preparing one mostly needs TensorFlow, once, on any machine:
``tfds build NAME`` (or ``tfds.builder(NAME).download_and_prepare()``), then
point ``TFDS_DATA_DIR`` at the result.
"""
from __future__ import annotations

import logging
import os

import numpy as np

from capsjax.data.errors import DataError

__all__ = ["tfds_info", "load_tfds_split"]

log = logging.getLogger("capsjax")


def _source(name: str, split: str, data_dir: str | None):
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  try:
    return tfds.data_source(name, split=split, data_dir=data_dir, download=False)
  except Exception as e:  # noqa: BLE001 - tfds raises several types for "not prepared"
    where = data_dir or os.environ.get("TFDS_DATA_DIR", "~/tensorflow_datasets")
    reason = str(e).splitlines()[0][:160] if str(e) else type(e).__name__
    raise DataError(
        f"tensorflow-datasets '{name}' split '{split}' is not prepared in {where} "
        f"({reason}). Prepare it once with `tfds build {name}` (needs TensorFlow; on any "
        "machine, then copy the directory) and set TFDS_DATA_DIR to it.") from None


def tfds_info(name: str, data_dir: str | None = None) -> dict:
  """``{"image_shape": (H, W, C), "num_classes": int}`` of a prepared dataset."""
  info = _source(name, "train", data_dir).dataset_info
  features = info.features
  if "image" not in features or "label" not in features:
    raise DataError(
        f"tensorflow-datasets '{name}' has features {sorted(features)}; capsjax needs "
        "'image' and 'label' (an image-classification dataset).")
  shape = tuple(features["image"].shape)
  if len(shape) != 3 or None in shape:
    raise DataError(
        f"tensorflow-datasets '{name}' has images of shape {shape}; capsjax needs one "
        "fixed (H, W, C).")
  return {"image_shape": shape, "num_classes": int(features["label"].num_classes)}


def load_tfds_split(name: str, split: str, data_dir: str | None = None, *,
                    image_key: str = "image",
                    label_key: str = "label") -> tuple[np.ndarray, np.ndarray]:
  """``(images uint8 (N, H, W, C), labels int32 (N,))`` of one prepared split,
  from the features ``image_key`` and ``label_key``."""
  source = _source(name, split, data_dir)
  n = len(source)
  first = np.asarray(source[0][image_key]) if n else np.zeros((0, 0, 0), np.uint8)
  images = np.empty((n,) + first.shape, np.uint8)
  labels = np.empty((n,), np.int32)
  for i in range(n):  # one element at a time: batched __getitems__ is broken in mocks
    example = source[i]
    images[i] = np.asarray(example[image_key])
    labels[i] = int(example[label_key])
  log.info("%s %s: prepared tensorflow-datasets, %d examples", name, split, n)
  return images, labels
