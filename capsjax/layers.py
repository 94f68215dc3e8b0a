"""Capsule layers as thin Flax (Linen) modules over the pure core.

The pieces a researcher composes into their own network:

  Conv         VALID convolution through :func:`capsjax.conv.conv2d`
  PrimaryCaps  convolution -> squashed capsules   (B, H, W, C) -> (B, n, d)
  DenseCaps    fully connected capsules, routed   (B, n_in, d_in) -> v (B, n_out, d_out), c
  Decoder      masked class capsules -> image      (..., n_classes, d) -> (..., H, W, C)

``DenseCaps`` takes its router as a parameter (any function of the
:mod:`capsjax.routing` convention); it never imports one algorithm. The
initialisers are the official code's; their constants live here.
"""
from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from capsjax.conv import conv2d
from capsjax.routing import dynamic_routing, squash

__all__ = ["Conv", "PrimaryCaps", "DenseCaps", "Decoder", "DIGIT_CAPS_INIT",
           "OFFICIAL_PRIMARY_CAPS_SCALE"]

Dtype = Any
Router = Callable[..., tuple[jax.Array, jax.Array]]

# Initialisers of the official code: weights from truncated normals (stddev
# 0.05 for Conv1, 0.1 for PrimaryCaps; for DenseCaps see DIGIT_CAPS_INIT),
# biases 0.1. Flax's truncated_normal, like TF's, takes the stddev of the
# normal before it is cut at two sigma.
_BIAS_INIT = nn.initializers.constant(0.1)
DIGIT_CAPS_INIT = 0.01  # the official 0.1 needs the official PrimaryCaps scale, below
# The paper's PrimaryCaps is a plain convolution. The official code builds it
# as a capsule layer with one routing iteration whose zero logits are
# soft-maxed over the 32 capsule types, which multiplies the convolution by
# 1/32 before the bias: PrimaryCaps(scale=OFFICIAL_PRIMARY_CAPS_SCALE).
OFFICIAL_PRIMARY_CAPS_SCALE = 1 / 32


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

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = self.param(
        "kernel", nn.initializers.truncated_normal(self.init_stddev),
        (self.kernel_size, self.kernel_size, x.shape[-1], self.features), jnp.float32)
    bias = self.param("bias", _BIAS_INIT, (self.features,), jnp.float32)
    if self.kernel_scale != 1.0:
      kernel = kernel * self.kernel_scale
    y = conv2d(x.astype(self.dtype), kernel.astype(self.dtype), self.stride, self.conv_impl)
    return y + bias.astype(self.dtype)


class PrimaryCaps(nn.Module):
  """Convolutional capsules: ``(B, H, W, C)`` -> squashed ``(B, H' * W' * num_types, caps_dim)``.

  ``u = squash(scale * conv(x, kernel) + bias)``: 1.0 is the paper's plain
  convolution, ``OFFICIAL_PRIMARY_CAPS_SCALE`` (1/32) the official code's.
  """
  num_types: int = 32
  caps_dim: int = 8
  kernel_size: int = 9
  stride: int = 2
  dtype: Dtype = jnp.float32
  conv_impl: str = "auto"
  scale: float = 1.0

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    y = Conv(self.num_types * self.caps_dim, self.kernel_size, self.stride,
             self.dtype, self.conv_impl, init_stddev=0.1, kernel_scale=self.scale)(x)
    # Channels are grouped (type, dim), as in the official code.
    u = y.reshape(y.shape[0], -1, self.caps_dim).astype(jnp.float32)
    return squash(u)


class DenseCaps(nn.Module):
  """Fully connected capsules: a weight matrix W_ij per (child i, parent j), then routing.

  ``u (B, n_in, d_in)`` -> ``u_hat = W_ij u_i (B, n_in, num_caps, caps_dim)`` ->
  ``routing(u_hat, routing_iters) = (v (B, num_caps, caps_dim), c (B, n_in, num_caps))``.
  The router is a parameter (default :func:`capsjax.routing.dynamic_routing`);
  routing runs in float32. Nothing of the routing is a parameter: its logits
  restart on every call.
  """
  num_caps: int = 10
  caps_dim: int = 16
  routing: Router = dynamic_routing
  routing_iters: int = 3
  dtype: Dtype = jnp.float32
  init_stddev: float = DIGIT_CAPS_INIT

  @nn.compact
  def __call__(self, u: jax.Array) -> tuple[jax.Array, jax.Array]:
    _, n_in, d_in = u.shape
    w = self.param("W", nn.initializers.truncated_normal(self.init_stddev),
                   (n_in, self.num_caps, self.caps_dim, d_in), jnp.float32)
    u_hat = jnp.einsum("bik,ijdk->bijd", u.astype(self.dtype), w.astype(self.dtype))
    return self.routing(u_hat.astype(jnp.float32), self.routing_iters)


class Decoder(nn.Module):
  """FC 512 ReLU -> 1024 ReLU -> H*W*C sigmoid, on masked class capsules.

  ``(..., num_classes, caps_dim)`` -> ``(..., height, width, channels)`` in [0, 1].
  """
  height: int
  width: int
  channels: int = 1
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, masked_caps: jax.Array) -> jax.Array:
    x = masked_caps.reshape(*masked_caps.shape[:-2], -1)
    x = nn.relu(nn.Dense(512, dtype=self.dtype, name="fc1")(x))
    x = nn.relu(nn.Dense(1024, dtype=self.dtype, name="fc2")(x))
    x = nn.Dense(self.height * self.width * self.channels, dtype=self.dtype, name="fc3")(x)
    x = nn.sigmoid(x)
    return x.reshape(*x.shape[:-1], self.height, self.width, self.channels).astype(jnp.float32)
