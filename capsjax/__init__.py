"""capsjax: capsule networks in JAX/Flax.

  capsjax.routing   squash, safe_norm, routers (ROUTERS, MATRIX_ROUTERS)  pure jax.numpy
  capsjax.losses    margin, reconstruction and spread losses   pure jax.numpy
  capsjax.layers    PrimaryCaps, DenseCaps, matrix capsules    Flax
  capsjax.models    CapsNet, ... (MODELS)                      Flax
  capsjax.data      MNIST, MultiMNIST, tfds (DATASETS)         NumPy
  capsjax.training  config, data-parallel steps, the loop
  capsjax.presets   named configurations (PRESETS)
"""
from capsjax.losses import margin_loss, reconstruction_loss
from capsjax.models import CapsNet, CapsNetOutput
from capsjax.routing import dynamic_routing, safe_norm, squash

__version__ = "0.6.1"

__all__ = [
    "CapsNet", "CapsNetOutput", "dynamic_routing", "margin_loss",
    "reconstruction_loss", "safe_norm", "squash",
]
