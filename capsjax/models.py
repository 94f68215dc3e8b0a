"""The paper's CapsNet as thin Flax (Linen) modules over the pure core.

Shapes (28x28 MNIST; 36x36 MultiMNIST in brackets):

  image (B, 28, 28, 1)
  -> Conv1 256@9x9, ReLU               (B, 20, 20, 256)   [(B, 28, 28, 256)]
  -> PrimaryCaps 32 x 8D, 9x9 stride 2 (B, 1152, 8)       [(B, 3200, 8)]
  -> DigitCaps u_hat = W_ij u_i        (B, 1152, 10, 16)
  -> dynamic_routing                   v (B, 10, 16), c (B, 1152, 10)
  -> lengths |v_j|                     (B, 10)
  -> decoder on v masked by a label    (B, K, 28, 28, 1)  one pass per label
"""
from __future__ import annotations

from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from capsjax.conv import conv2d
from capsjax.routing import dynamic_routing, safe_norm, squash

__all__ = ["CapsNet", "CapsNetOutput", "Conv", "PrimaryCaps", "DigitCaps", "Decoder"]

Dtype = Any

# Initialisers of the official code: weights from truncated normals (stddev
# 0.05 for Conv1, 0.1 for PrimaryCaps; for DigitCaps see
# CapsNet.digit_caps_init), biases 0.1. Flax's truncated_normal, like TF's,
# takes the stddev of the normal before it is cut at two sigma.
_BIAS_INIT = nn.initializers.constant(0.1)
DIGIT_CAPS_INIT = 0.01  # the official 0.1 needs the official PrimaryCaps scale, below
# The paper's PrimaryCaps is a plain convolution. The official code builds it
# as a capsule layer with one routing iteration whose zero logits are
# soft-maxed over the 32 capsule types, which multiplies the convolution by
# 1/32 before the bias: CapsNet(primary_caps_scale=OFFICIAL_PRIMARY_CAPS_SCALE).
OFFICIAL_PRIMARY_CAPS_SCALE = 1 / 32


@flax.struct.dataclass
class CapsNetOutput:
  """What :class:`CapsNet` returns.

  Attributes:
    lengths: class-capsule lengths ``(B, num_classes)``, the class scores.
    digit_caps: class capsules ``v`` ``(B, num_classes, 16)``.
    coupling: routing coupling coefficients ``c`` ``(B, n_primary, num_classes)``.
    reconstructions: ``(B, K, H, W, 1)`` in [0, 1], one per masking label, or
      ``None`` when the model has no decoder.
    masked_labels: ``(B, K)`` int32, the labels that masked each reconstruction
      (given labels in training, predictions in evaluation).
  """
  lengths: jax.Array
  digit_caps: jax.Array
  coupling: jax.Array
  reconstructions: jax.Array | None
  masked_labels: jax.Array | None


class Conv(nn.Module):
  """VALID convolution through :func:`capsjax.conv.conv2d` (HWIO kernel, bias)."""
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
  """Convolutional capsules: ``(B, H, W, C)`` -> squashed ``(B, H' * W' * types, dim)``.

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


class DigitCaps(nn.Module):
  """Fully connected capsules with a weight matrix W_ij per (child i, parent j).

  ``(B, n_in, d_in)`` -> ``v (B, n_out, d_out)``, ``c (B, n_in, n_out)``.
  The routing logits are not parameters: they restart at zero on every call.
  """
  num_caps: int = 10
  caps_dim: int = 16
  routing_iters: int = 3
  stop_gradient_inner: bool = False
  dtype: Dtype = jnp.float32
  init_stddev: float = DIGIT_CAPS_INIT

  @nn.compact
  def __call__(self, u: jax.Array) -> tuple[jax.Array, jax.Array]:
    _, n_in, d_in = u.shape
    w = self.param("W", nn.initializers.truncated_normal(self.init_stddev),
                   (n_in, self.num_caps, self.caps_dim, d_in), jnp.float32)
    u_hat = jnp.einsum("bik,ijdk->bijd", u.astype(self.dtype), w.astype(self.dtype))
    return dynamic_routing(u_hat.astype(jnp.float32), self.routing_iters,
                           stop_gradient_inner=self.stop_gradient_inner)


class Decoder(nn.Module):
  """FC 512 ReLU -> 1024 ReLU -> H*W sigmoid, on masked class capsules."""
  height: int
  width: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, masked_caps: jax.Array) -> jax.Array:
    x = masked_caps.reshape(*masked_caps.shape[:-2], -1)
    x = nn.relu(nn.Dense(512, dtype=self.dtype, name="fc1")(x))
    x = nn.relu(nn.Dense(1024, dtype=self.dtype, name="fc2")(x))
    x = nn.sigmoid(nn.Dense(self.height * self.width, dtype=self.dtype, name="fc3")(x))
    return x.reshape(*x.shape[:-1], self.height, self.width, 1).astype(jnp.float32)


class CapsNet(nn.Module):
  """CapsNet of Sabour et al. (2017), Fig. 1 and 2.

  Attributes:
    num_classes: number of class capsules.
    routing_iters: routing iterations (static; the paper uses 3).
    num_reconstructions: how many predicted classes to reconstruct when no
      labels are given (1 for MNIST, 2 for MultiMNIST).
    use_decoder: include the reconstruction decoder.
    stop_gradient_inner: see :func:`capsjax.routing.dynamic_routing`.
    primary_caps_scale: the factor on the PrimaryCaps convolution before its
      bias: 1.0 (default) is the paper's plain convolution, 1/32
      (``OFFICIAL_PRIMARY_CAPS_SCALE``) the official code's. With 1.0 the
      primary capsules start saturated (mean length ~0.98 on MNIST, ~0.12
      with 1/32) and the official DigitCaps init 0.1 is too large.
    digit_caps_init: stddev of the initial W_ij. The official code uses 0.1
      with its 1/32 PrimaryCaps scale. With the plain convolution, 0.1 makes
      every class capsule long from the first steps and MultiMNIST with 3
      routing iterations stalls (margin loss stuck near 3.2), so the default
      is 0.01.
    dtype: compute dtype of convolutions, capsule transforms and decoder
      (parameters are always float32; routing runs in float32).
    conv_impl: see :func:`capsjax.conv.conv2d`.
  """
  num_classes: int = 10
  routing_iters: int = 3
  num_reconstructions: int = 1
  use_decoder: bool = True
  stop_gradient_inner: bool = False
  digit_caps_init: float = DIGIT_CAPS_INIT
  primary_caps_scale: float = 1.0
  dtype: Dtype = jnp.float32
  conv_impl: str = "auto"

  @nn.compact
  def __call__(self, images: jax.Array, labels: jax.Array | None = None) -> CapsNetOutput:
    """Runs the network.

    Args:
      images: ``(B, H, W, 1)`` floats in [0, 1].
      labels: optional int ``(B,)`` or ``(B, K)``: the classes whose capsules
        mask the decoder input (training). If ``None``, the
        ``num_reconstructions`` longest capsules are used (evaluation).

    Returns:
      A :class:`CapsNetOutput`.
    """
    if images.ndim != 4 or images.shape[-1] != 1:
      raise ValueError(
          f"images must be (batch, H, W, 1); got {images.shape}. Add a channel "
          "axis with images[..., None].")
    _, height, width, _ = images.shape
    x = nn.relu(Conv(256, 9, 1, self.dtype, self.conv_impl, name="conv1")(images))
    u = PrimaryCaps(dtype=self.dtype, conv_impl=self.conv_impl,
                    scale=self.primary_caps_scale, name="primary_caps")(x)
    v, c = DigitCaps(self.num_classes, 16, self.routing_iters, self.stop_gradient_inner,
                     self.dtype, self.digit_caps_init, name="digit_caps")(u)
    lengths = safe_norm(v, axis=-1)
    if not self.use_decoder:
      return CapsNetOutput(lengths, v, c, None, None)

    if labels is None:
      _, labels = jax.lax.top_k(lengths, self.num_reconstructions)
    elif labels.ndim == 1:
      labels = labels[:, None]
    labels = labels.astype(jnp.int32)
    masks = jax.nn.one_hot(labels, self.num_classes, dtype=v.dtype)  # (B, K, classes)
    masked = masks[..., None] * v[:, None]                              # (B, K, classes, 16)
    recon = Decoder(height, width, self.dtype, name="decoder")(masked)
    return CapsNetOutput(lengths, v, c, recon, labels)
