"""Convolutions as Flax modules over :mod:`capsjax.conv`, and the types the layers share.

  Conv           VALID convolution        (B, H, W, C_in) -> (B, H', W', features)
  DepthwiseConv  VALID depthwise, biased  (B, H, W, C) -> (B, H', W', C)
"""
from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from capsjax.conv import conv2d, depthwise_conv2d

__all__ = ["Conv", "DepthwiseConv"]

Dtype = Any
Initializer = Callable[..., jax.Array]
Router = Callable[..., tuple[jax.Array, jax.Array]]

# Initialisers of the official code: weights from truncated normals (stddev
# 0.05 for Conv1, 0.1 for PrimaryCaps; for DenseCaps see DIGIT_CAPS_INIT),
# biases 0.1. Flax's truncated_normal, like TF's, takes the stddev of the
# normal before it is cut at two sigma.
_BIAS_INIT = nn.initializers.constant(0.1)


class Conv(nn.Module):
  """VALID convolution through :func:`capsjax.conv.conv2d` (HWIO kernel, bias).

  ``(B, H, W, C_in)`` -> ``(B, (H - k) // stride + 1, (W - k) // stride + 1, features)``.
  """
  features: int
  kernel_size: int
  stride: int = 1
  dtype: Dtype = jnp.float32
  conv_impl: str = "auto"
  init_stddev: float = 0.05
  kernel_scale: float = 1.0  # the convolution uses kernel_scale * kernel
  kernel_init: Initializer | None = None  # None: truncated normal of init_stddev
  bias_init: Initializer = _BIAS_INIT

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = self.param(
        "kernel", self.kernel_init or nn.initializers.truncated_normal(self.init_stddev),
        (self.kernel_size, self.kernel_size, x.shape[-1], self.features), jnp.float32)
    bias = self.param("bias", self.bias_init, (self.features,), jnp.float32)
    if self.kernel_scale != 1.0:
      kernel = kernel * self.kernel_scale
    y = conv2d(x.astype(self.dtype), kernel.astype(self.dtype), self.stride, self.conv_impl)
    return y + bias.astype(self.dtype)


class DepthwiseConv(nn.Module):
  """VALID depthwise convolution, one ``kernel_size`` filter per channel, with bias.

  ``(B, H, W, C)`` -> ``(B, (H - k) // stride + 1, (W - k) // stride + 1, C)``; the
  kernel is ``(k, k, 1, C)`` (Keras' ``groups=C`` layout and Glorot-uniform init).
  """
  kernel_size: int
  stride: int = 1
  dtype: Dtype = jnp.float32
  conv_impl: str = "auto"
  kernel_init: Initializer = nn.initializers.glorot_uniform()
  bias_init: Initializer = nn.initializers.zeros

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    channels = x.shape[-1]
    kernel = self.param("kernel", self.kernel_init,
                        (self.kernel_size, self.kernel_size, 1, channels), jnp.float32)
    bias = self.param("bias", self.bias_init, (channels,), jnp.float32)
    y = depthwise_conv2d(x.astype(self.dtype), kernel.astype(self.dtype), self.stride,
                         self.conv_impl)
    return y + bias.astype(self.dtype)
