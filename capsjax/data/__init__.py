"""Data, in plain NumPy (nothing here imports JAX).

  registry.py     DATASETS: named dataset specs and their builders; tfds:NAME
  mnist.py        MNIST / Fashion-MNIST from tfds, IDX files, or the bundled copy
  tfds_images.py  any prepared tfds image-classification dataset
  multimnist.py   the paper's MultiMNIST pairs
  shifted.py      single-label datasets: shifted training examples, test split
  smallnorb.py    smallNORB as the EM-routing paper uses it
  images.py       the batch layout and image helpers
  random.py       counter-based randomness and epoch order
  pipeline.py     prefetching (thread or worker processes), blocks, padding, per-process rows
"""
from capsjax.data.errors import DataError, MnistFileError
from capsjax.data.mnist import load_idx_dataset, load_mnist, read_idx
from capsjax.data.multimnist import MultiMNIST, MultiMNISTTest
from capsjax.data.pipeline import TrainBatches, local_rows, padded, prefetch, worker_prefetch
from capsjax.data.registry import DATASETS, DatasetSpec, get_dataset
from capsjax.data.shifted import ClassificationTest, ShiftedImages

__all__ = ["DATASETS", "ClassificationTest", "DataError", "DatasetSpec", "MnistFileError",
           "MultiMNIST", "MultiMNISTTest", "ShiftedImages", "get_dataset", "load_idx_dataset",
           "load_mnist", "local_rows", "padded", "prefetch", "read_idx", "TrainBatches",
           "worker_prefetch"]
