"""Batch normalisation with the running statistics of Keras 2 (TF's fused batch norm).

  BatchNorm  normalise each channel over the batch  (B, ..., C) -> (B, ..., C)
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

__all__ = ["BatchNorm"]


class BatchNorm(nn.Module):
  """Normalises each channel (the last axis) over all the other axes.

  In training the batch's mean and (biased) variance normalise it, taken over
  the devices of ``axis_name`` too, so the statistics are the global batch's;
  the running ``mean`` and ``var`` (``batch_stats``) move by ``1 - momentum``
  towards them. With ``unbiased_running_var`` the variance they move towards is
  Bessel-corrected, ``m / (m - 1)`` for ``m`` values per channel, as Keras 2
  does (TF's fused batch norm); Flax's ``nn.BatchNorm`` uses the biased one.
  In evaluation the running statistics normalise. The parameters ``scale`` and
  ``bias`` and the statistics have the names and shapes of ``nn.BatchNorm``'s.
  Statistics are computed in float32; the output has ``dtype``.
  """
  momentum: float = 0.99
  epsilon: float = 1e-3
  axis_name: str | None = None
  unbiased_running_var: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    features = x.shape[-1]
    scale = self.param("scale", nn.initializers.ones, (features,), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (features,), jnp.float32)
    running_mean = self.variable("batch_stats", "mean", jnp.zeros, (features,), jnp.float32)
    running_var = self.variable("batch_stats", "var", jnp.ones, (features,), jnp.float32)
    x32 = x.astype(jnp.float32)
    if train:
      axes = tuple(range(x.ndim - 1))
      count = x.size // features
      moments = (jnp.mean(x32, axes), jnp.mean(jnp.square(x32), axes))
      if self.axis_name is not None:
        moments = jax.lax.pmean(moments, self.axis_name)
        count = count * jax.lax.psum(1, self.axis_name)
      mean, mean_square = moments
      var = jnp.maximum(mean_square - jnp.square(mean), 0.0)
      if not self.is_initializing():
        moved = var * count / jnp.maximum(count - 1, 1) if self.unbiased_running_var else var
        running_mean.value = self.momentum * running_mean.value + (1 - self.momentum) * mean
        running_var.value = self.momentum * running_var.value + (1 - self.momentum) * moved
    else:
      mean, var = running_mean.value, running_var.value
    y = (x32 - mean) * (jax.lax.rsqrt(var + self.epsilon) * scale) + bias
    return y.astype(self.dtype)
