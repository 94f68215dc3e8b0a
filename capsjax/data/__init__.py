"""Data, in plain NumPy (nothing here imports JAX; grain, which does, only once
:func:`batch_stream` runs).

  registry.py     DATASETS: named dataset specs and their builders; tfds:NAME
  mnist.py        MNIST / Fashion-MNIST from tfds, IDX files, or the bundled copy
  canonical.py    one order for a split whatever its source (a content-hash sort)
  tfds_images.py  any prepared tfds image-classification dataset
  multimnist.py   the paper's MultiMNIST pairs
  shifted.py      single-label training splits: shifted or augmented examples
  classification_test.py  the test split of single-label datasets, in order
  smallnorb.py    smallNORB as the EM-routing paper uses it
  canvas.py       digits at random positions on a larger canvas (expanded MNIST, 40x40)
  affnist.py      affNIST's test set from its .mat files, and a synthetic approximation
  images.py       the batch layout and image helpers
  random.py       counter-based randomness and epoch order
  pipeline.py     grain feeding (thread or worker processes), blocks, padding, per-process rows
  slot_ring.py    reused shared-memory slots the worker processes write batches into
"""
from capsjax.data.affnist import affnist_synthetic, load_affnist
from capsjax.data.canvas import CanvasImages, place_randomly
from capsjax.data.classification_test import ClassificationTest
from capsjax.data.errors import DataError, MnistFileError
from capsjax.data.mnist import load_idx_dataset, load_mnist, read_idx
from capsjax.data.multimnist import MultiMNIST, MultiMNISTTest
from capsjax.data.pipeline import (
    DataWorkerError, TrainBatches, batch_stream, local_rows, padded)
from capsjax.data.registry import DATASETS, DatasetSpec, get_dataset
from capsjax.data.shifted import ShiftedImages

__all__ = ["DATASETS", "ClassificationTest", "DataError", "DatasetSpec", "MnistFileError",
           "MultiMNIST", "MultiMNISTTest", "ShiftedImages", "get_dataset", "load_idx_dataset",
           "load_mnist", "local_rows", "padded", "read_idx", "TrainBatches",
           "batch_stream", "DataWorkerError", "CanvasImages", "place_randomly", "load_affnist",
           "affnist_synthetic"]
