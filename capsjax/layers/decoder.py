"""Reconstruction from class capsules: the masking and the decoder.

  mask_capsules  class capsules -> decoder inputs  (B, n_classes, d) -> (B, K, n_classes, d)
  Decoder        masked class capsules -> image    (..., n_classes, d) -> (..., H, W, C)
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from capsjax.layers.convolution import Dtype, Initializer

__all__ = ["Decoder", "mask_capsules"]


class Decoder(nn.Module):
  """FC 512 ReLU -> 1024 ReLU -> H*W*C sigmoid, on masked class capsules.

  ``(..., num_classes, caps_dim)`` -> ``(..., height, width, channels)`` in [0, 1].
  """
  height: int
  width: int
  channels: int = 1
  dtype: Dtype = jnp.float32
  hidden_init: Initializer = nn.linear.default_kernel_init  # of fc1, fc2 (LeCun normal)
  output_init: Initializer = nn.linear.default_kernel_init  # of fc3

  @nn.compact
  def __call__(self, masked_caps: jax.Array) -> jax.Array:
    x = masked_caps.reshape(*masked_caps.shape[:-2], -1)
    x = nn.relu(nn.Dense(512, dtype=self.dtype, kernel_init=self.hidden_init, name="fc1")(x))
    x = nn.relu(nn.Dense(1024, dtype=self.dtype, kernel_init=self.hidden_init, name="fc2")(x))
    x = nn.Dense(self.height * self.width * self.channels, dtype=self.dtype,
                 kernel_init=self.output_init, name="fc3")(x)
    x = nn.sigmoid(x)
    return x.reshape(*x.shape[:-1], self.height, self.width, self.channels).astype(jnp.float32)


def mask_capsules(v: jax.Array, lengths: jax.Array, labels: jax.Array | None,
                  num_reconstructions: int) -> tuple[jax.Array, jax.Array]:
  """The decoder inputs: class capsules masked by labels, one pass per label.

  Args:
    v: class capsules ``(B, num_classes, d)``.
    lengths: their lengths ``(B, num_classes)``.
    labels: int ``(B,)`` or ``(B, K)`` (training), or None: the
      ``num_reconstructions`` longest capsules (evaluation).
    num_reconstructions: ``K`` when ``labels`` is None.

  Returns:
    ``(masked (B, K, num_classes, d), labels (B, K) int32)``.
  """
  if labels is None:
    _, labels = jax.lax.top_k(lengths, num_reconstructions)
  elif labels.ndim == 1:
    labels = labels[:, None]
  labels = labels.astype(jnp.int32)
  masks = jax.nn.one_hot(labels, v.shape[-2], dtype=v.dtype)  # (B, K, classes)
  return masks[..., None] * v[:, None], labels
