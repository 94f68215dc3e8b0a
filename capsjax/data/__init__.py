"""Data: MNIST sources and the MultiMNIST generator (plain NumPy, no JAX)."""
from capsjax.data.mnist import MnistFileError, load_mnist, read_idx
from capsjax.data.multimnist import MNISTTest, MultiMNIST, ShiftedMNIST, prefetch

__all__ = ["MnistFileError", "MNISTTest", "MultiMNIST", "ShiftedMNIST", "load_mnist",
           "prefetch", "read_idx"]
