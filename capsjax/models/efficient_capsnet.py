"""Efficient-CapsNet (Mazzia, Salvetti & Chiaberge, Scientific Reports 11, 2021),
the MNIST variant, from :mod:`capsjax.layers`. Registered as ``"efficient_capsnet"``.

Shapes (MNIST):

  image (B, 28, 28, 1)
  -> conv 32@5x5, ReLU, BatchNorm        (B, 24, 24, 32)
  -> conv 64@3x3, ReLU, BatchNorm        (B, 22, 22, 64)
  -> conv 64@3x3, ReLU, BatchNorm        (B, 20, 20, 64)
  -> conv 128@3x3 stride 2, ReLU, BN     (B, 9, 9, 128)
  -> depthwise 9x9 -> 16 capsules of 8D  (B, 16, 8), exp-squashed
  -> DenseCaps, self-attention routing   v (B, 10, 16), c (B, 16, 10)
  -> lengths |v_j|                       (B, 10)
  -> decoder on v masked by a label      (B, K, 28, 28, 1)

Parameters without the decoder, 161,824 (BatchNorm's running statistics are
state, not parameters, as in the paper's count):

  conv1 5*5*1*32 + 32 = 832          conv2 3*3*32*64 + 64 = 18,496
  conv3 3*3*64*64 + 64 = 36,928      conv4 3*3*64*128 + 128 = 73,856
  BatchNorm scale and bias 2 * (32 + 64 + 64 + 128) = 576
  primary depthwise 9*9*128 + 128 = 10,496
  class capsules W 16*10*16*8 = 20,480, routing prior b 16*10 = 160

The official code's initialisers: He-normal convolutions and W (W's fan-in is
Keras', 8 * 16 * 10 = 1,280), zero biases, Glorot-uniform depthwise kernel;
Keras' BatchNorm (momentum 0.99, epsilon 1e-3).
"""
from __future__ import annotations

import inspect
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from capsjax.layers import BatchNorm, Conv, Decoder, DenseCaps, DepthwiseConv, mask_capsules
from capsjax.models.capsnet import CapsNetOutput, capsule_loss
from capsjax.mesh import DATA_AXIS
from capsjax.models.registry import MODELS, ModelSpec, router_of
from capsjax.routing import exp_squash, safe_norm, self_attention_routing

__all__ = ["EfficientCapsNet"]

Dtype = Any

# (features, kernel, stride) of the four convolutions.
CONVS = ((32, 5, 1), (64, 3, 1), (64, 3, 1), (128, 3, 2))
_HE_NORMAL = nn.initializers.he_normal()
# Keras computes the fan-in of W (its layout: classes, n_in, d_in, d) as
# d_in * n_in * classes; in ours (n_in, classes, d, d_in) that is in_axis=-1.
_W_INIT = nn.initializers.variance_scaling(2.0, "fan_in", "truncated_normal",
                                           in_axis=-1, out_axis=-2)


class EfficientCapsNet(nn.Module):
  """Efficient-CapsNet, MNIST variant (the paper's Fig. 1, the official code's layers).

  Attributes:
    num_classes: number of class capsules.
    num_primary: number of primary capsules (the depthwise features / primary_dim).
    primary_dim: their dimension.
    routing: the router of the class capsules (self-attention by default).
    routing_iters: passed to the router (self-attention ignores it; one pass).
    num_reconstructions: classes reconstructed when no labels are given.
    use_decoder: include the reconstruction decoder.
    batch_axis: the mesh axis BatchNorm averages its batch statistics over in
      training (``"data"``, the train step's), or None for this device's batch.
    dtype: compute dtype; parameters float32, routing float32.
    conv_impl: see :func:`capsjax.conv.conv2d`.
  """
  num_classes: int = 10
  num_primary: int = 16
  primary_dim: int = 8
  routing: Callable[..., tuple[jax.Array, jax.Array]] = self_attention_routing
  routing_iters: int = 1
  num_reconstructions: int = 1
  use_decoder: bool = True
  batch_axis: str | None = None
  dtype: Dtype = jnp.float32
  conv_impl: str = "auto"

  @nn.compact
  def __call__(self, images: jax.Array, labels: jax.Array | None = None, *,
               train: bool = False) -> CapsNetOutput:
    if images.ndim != 4:
      raise ValueError(
          f"images must be (batch, H, W, C); got {images.shape}. Add a channel "
          "axis with images[..., None].")
    x = images
    for i, (features, kernel, stride) in enumerate(CONVS, start=1):
      x = Conv(features, kernel, stride, self.dtype, self.conv_impl, kernel_init=_HE_NORMAL,
               bias_init=nn.initializers.zeros, name=f"conv{i}")(x)
      x = BatchNorm(momentum=0.99, epsilon=1e-3, axis_name=self.batch_axis, dtype=self.dtype,
                    name=f"bn{i}")(nn.relu(x), train=train)
    # One depthwise filter over the whole feature map: each channel -> a value.
    x = DepthwiseConv(x.shape[1], 1, self.dtype, self.conv_impl, name="primary_caps")(x)
    u = exp_squash(x.reshape(x.shape[0], self.num_primary, self.primary_dim)
                   .astype(jnp.float32))
    takes_bias = "bias" in inspect.signature(self.routing).parameters
    v, c = DenseCaps(num_caps=self.num_classes, caps_dim=16, routing=self.routing,
                     routing_iters=self.routing_iters, dtype=self.dtype, kernel_init=_W_INIT,
                     routing_bias=takes_bias, name="digit_caps")(u)
    lengths = safe_norm(v, axis=-1)
    if not self.use_decoder:
      return CapsNetOutput(lengths, v, c, None, None)
    masked, labels = mask_capsules(v, lengths, labels, self.num_reconstructions)
    recon = self.make_decoder(*images.shape[1:])(masked)
    return CapsNetOutput(lengths, v, c, recon, labels)

  @nn.nowrap
  def make_decoder(self, height: int, width: int, channels: int = 1) -> Decoder:
    """The decoder module; its parameters are ``params["decoder"]``."""
    # The official initialisers: He normal for the hidden layers, Glorot normal out.
    return Decoder(height, width, channels, self.dtype, hidden_init=_HE_NORMAL,
                   output_init=nn.initializers.glorot_normal(), name="decoder")


def build_efficient_capsnet(config, dataset) -> EfficientCapsNet:
  return EfficientCapsNet(
      num_classes=dataset.num_classes, routing=router_of(config),
      routing_iters=config.routing_iters,
      num_reconstructions=dataset.labels_per_example, batch_axis=DATA_AXIS,
      dtype=config.compute_dtype)


MODELS.register("efficient_capsnet", ModelSpec(
    build=build_efficient_capsnet, loss=capsule_loss, collections=("batch_stats",),
    image_shape=(28, 28, 1), eval_module=lambda module: module.clone(use_decoder=False),
    default_routing="self_attention",
    description="Efficient-CapsNet with self-attention routing (Mazzia et al., 2021)"))
