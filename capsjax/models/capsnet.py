"""CapsNet of Sabour, Frosst & Hinton (2017), Fig. 1 and 2, from :mod:`capsjax.layers`.

Shapes (28x28 MNIST; 36x36 MultiMNIST in brackets):

  image (B, 28, 28, C)
  -> Conv1 256@9x9, ReLU               (B, 20, 20, 256)   [(B, 28, 28, 256)]
  -> PrimaryCaps 32 x 8D, 9x9 stride 2 (B, 1152, 8)       [(B, 3200, 8)]
  -> DenseCaps u_hat = W_ij u_i        (B, 1152, 10, 16)
  -> routing (dynamic by default)      v (B, 10, 16), c (B, 1152, 10)
  -> lengths |v_j|                     (B, 10)
  -> decoder on v masked by a label    (B, K, 28, 28, C)  one pass per label

Registered as ``"capsnet"``: margin loss + ``recon_weight`` x reconstruction SSE.
"""
from __future__ import annotations

import functools
from typing import Any, Callable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from capsjax.layers import DIGIT_CAPS_INIT, Conv, Decoder, DenseCaps, PrimaryCaps, mask_capsules
from capsjax.losses import margin_loss, reconstruction_loss
from capsjax.models.registry import MODELS, ModelSpec, router_of
from capsjax.routing import dynamic_routing, safe_norm

__all__ = ["CapsNet", "CapsNetOutput", "capsule_loss"]

Dtype = Any


@flax.struct.dataclass
class CapsNetOutput:
  """What :class:`CapsNet` returns.

  Attributes:
    lengths: class-capsule lengths ``(B, num_classes)``, the class scores.
    digit_caps: class capsules ``v`` ``(B, num_classes, 16)``.
    coupling: routing coupling coefficients ``c`` ``(B, n_primary, num_classes)``.
    reconstructions: ``(B, K, H, W, C)`` in [0, 1], one per masking label, or
      ``None`` when the model has no decoder.
    masked_labels: ``(B, K)`` int32, the labels that masked each reconstruction
      (given labels in training, predictions in evaluation).
  """
  lengths: jax.Array
  digit_caps: jax.Array
  coupling: jax.Array
  reconstructions: jax.Array | None
  masked_labels: jax.Array | None

  @property
  def scores(self) -> jax.Array:
    """The class scores ``(B, num_classes)``: the capsule lengths."""
    return self.lengths


class CapsNet(nn.Module):
  """CapsNet of Sabour et al. (2017), Fig. 1 and 2.

  Attributes:
    num_classes: number of class capsules.
    routing_iters: routing iterations (static; the paper uses 3).
    routing: the router of the class capsules (see :mod:`capsjax.routing`).
    num_reconstructions: how many predicted classes to reconstruct when no
      labels are given (1 for MNIST, 2 for MultiMNIST).
    use_decoder: include the reconstruction decoder.
    stop_gradient_inner: passed to the router (an option of
      :func:`capsjax.routing.dynamic_routing`) when True.
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
  routing: Callable[..., tuple[jax.Array, jax.Array]] = dynamic_routing

  @nn.compact
  def __call__(self, images: jax.Array, labels: jax.Array | None = None, *,
               train: bool = False) -> CapsNetOutput:
    """Runs the network.

    Args:
      images: ``(B, H, W, C)`` floats in [0, 1].
      labels: optional int ``(B,)`` or ``(B, K)``: the classes whose capsules
        mask the decoder input (training). If ``None``, the
        ``num_reconstructions`` longest capsules are used (evaluation).
      train: unused (CapsNet has no dropout or BatchNorm); part of the
        model calling convention.

    Returns:
      A :class:`CapsNetOutput`.
    """
    del train
    if images.ndim != 4:
      raise ValueError(
          f"images must be (batch, H, W, C); got {images.shape}. Add a channel "
          "axis with images[..., None].")
    _, height, width, channels = images.shape
    router = self.routing
    if self.stop_gradient_inner:
      router = functools.partial(router, stop_gradient_inner=True)
    x = nn.relu(Conv(256, 9, 1, self.dtype, self.conv_impl, name="conv1")(images))
    u = PrimaryCaps(dtype=self.dtype, conv_impl=self.conv_impl,
                    scale=self.primary_caps_scale, name="primary_caps")(x)
    v, c = DenseCaps(num_caps=self.num_classes, caps_dim=16, routing=router,
                     routing_iters=self.routing_iters, dtype=self.dtype,
                     init_stddev=self.digit_caps_init, name="digit_caps")(u)
    lengths = safe_norm(v, axis=-1)
    if not self.use_decoder:
      return CapsNetOutput(lengths, v, c, None, None)

    masked, labels = mask_capsules(v, lengths, labels, self.num_reconstructions)
    recon = self.make_decoder(height, width, channels)(masked)
    return CapsNetOutput(lengths, v, c, recon, labels)

  @nn.nowrap
  def make_decoder(self, height: int, width: int, channels: int = 1) -> Decoder:
    """The decoder module; its parameters are ``params["decoder"]``. Outside
    :meth:`__call__` it is a stand-alone module to apply to them."""
    return Decoder(height, width, channels, self.dtype, name="decoder")


def capsule_loss(out: CapsNetOutput, batch, config, step=None) -> tuple[jax.Array, dict]:
  """Margin loss + ``config.recon_weight`` x reconstruction SSE, per example.

  The decoder is masked by the true labels; with two labels (MultiMNIST) each
  digit is reconstructed by its own masked pass and compared with its
  component image.
  """
  margin = margin_loss(out.lengths, batch["multi_hot"])
  recon = sum(reconstruction_loss(out.reconstructions[:, i], batch["components"][:, i])
              for i in range(batch["labels"].shape[1]))
  return margin + config.recon_weight * recon, {"margin_loss": margin, "recon_loss": recon}


def build_capsnet(config, dataset) -> CapsNet:
  return CapsNet(
      num_classes=dataset.num_classes, routing_iters=config.routing_iters,
      routing=router_of(config), num_reconstructions=dataset.labels_per_example,
      digit_caps_init=config.digit_caps_init, primary_caps_scale=config.primary_caps_scale,
      dtype=config.compute_dtype)


MODELS.register("capsnet", ModelSpec(
    build=build_capsnet, loss=capsule_loss,
    eval_module=lambda module: module.clone(use_decoder=False),
    description="CapsNet with dynamic routing (Sabour, Frosst & Hinton, NIPS 2017)"))
