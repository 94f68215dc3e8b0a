"""Matrix capsules with EM routing (Hinton, Sabour & Frosst, ICLR 2018), from
:mod:`capsjax.layers`. Registered as ``"matrix_capsnet"``.

Shapes for MNIST (28x28x1), the small configuration A=64, B=8, C=D=16:

  image (N, 28, 28, 1)
  -> ReLU conv A@5x5 stride 2                (N, 12, 12, 64)
     (``matrix_capsnet_bn``: BatchNorm between the conv and its ReLU)
  -> PrimaryMatrixCaps, B types, 1x1         poses (N, 12, 12, 8, 16), activations (N, 12, 12, 8)
  -> ConvMatrixCaps C, 3x3 stride 2, EM      (N, 5, 5, 16, 16), (N, 5, 5, 16)
  -> ConvMatrixCaps D, 3x3 stride 1, EM      (N, 3, 3, 16, 16), (N, 3, 3, 16)
  -> ClassMatrixCaps E, coordinate addition  poses (N, 10, 16), activations (N, 10) = scores

(smallNORB's 32x32 crops give 14x14, 6x6 and 4x4, as in the paper.)

Parameters, with image channels I and E classes:

  conv1           5*5*I*A + A
  primary         A*B*16 + B*16 (poses) + A*B + B (activations) = (A + 1) * 17B
  ConvCaps1       3*3*B*C*16 (one 4x4 per window position, child and parent type) + 2C (betas)
  ConvCaps2       3*3*C*D*16 + 2D
  class capsules  D*E*16 + 2E

  small (A=64, B=8, C=D=16):
    smallNORB (I=1, one view; E=5): 1,664 + 8,840 + 18,464 + 36,896 + 1,290 = 67,154,
      the paper's "68K" (its smallNORB network)
    MNIST (I=1, E=10): 1,664 + 8,840 + 18,464 + 36,896 + 2,580 = 68,444
  large (A=B=C=D=32):
    smallNORB (E=5): 832 + 17,952 + 147,520 + 147,520 + 2,570 = 316,394, the paper's "310K"
    MNIST (E=10): 832 + 17,952 + 147,520 + 147,520 + 5,140 = 318,964
"""
from __future__ import annotations

import functools
from typing import Any, Callable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from capsjax.layers import BatchNorm, ClassMatrixCaps, Conv, ConvMatrixCaps, PrimaryMatrixCaps
from capsjax.losses import spread_loss, spread_margin
from capsjax.mesh import DATA_AXIS
from capsjax.models.registry import MODELS, ModelSpec, router_of
from capsjax.routing import MATRIX_ROUTERS, em_routing

__all__ = ["MatrixCapsNet", "MatrixCapsOutput", "matrix_capsule_loss", "SIZES"]

Dtype = Any

# (A, B, C, D): conv1 channels, primary, ConvCaps1 and ConvCaps2 capsule types.
SIZES = {"small": (64, 8, 16, 16), "large": (32, 32, 32, 32)}
# (kernel, stride) of conv1, the primary capsules, ConvCaps1, ConvCaps2.
GEOMETRY = ((5, 2), (1, 1), (3, 2), (3, 1))
MIN_SIZE = 17  # the smallest image side that leaves ConvCaps2 a 3x3 input


@flax.struct.dataclass
class MatrixCapsOutput:
  """``scores``: class activations ``(B, classes)``; ``poses``: ``(B, classes, 16)``."""
  scores: jax.Array
  poses: jax.Array


def receptive_field_centres(size: int) -> jax.Array:
  """Centres of the class-capsule inputs' receptive fields along one image axis,
  in pixels of an image of ``size``, scaled to [0, 1]."""
  centres = jnp.arange(size) + 0.5
  for kernel, stride in GEOMETRY:
    out = (centres.shape[0] - kernel) // stride + 1
    centres = centres[(kernel - 1) // 2::stride][:out]  # odd kernels: the middle tap
  return centres / size


class MatrixCapsNet(nn.Module):
  """The paper's network (Fig. 1): ReLU conv, primary, two convolutional and the
  class capsule layers, EM routing between capsule layers.

  Attributes:
    num_classes: E.
    size: ``"small"`` (A=64, B=8, C=D=16, the default) or ``"large"`` (32 each).
    routing: a matrix-capsule router (:data:`capsjax.routing.MATRIX_ROUTERS`).
    routing_iters: EM iterations (the paper: 3).
    per_parent_type: the official code's normalisation of convolutional
      assignments (see :func:`capsjax.routing.window_softmax`).
    dtype: compute dtype of the convolutions; routing runs in float32.
    conv_impl: see :func:`capsjax.conv.conv2d`.
    conv1_batchnorm: BatchNorm between conv1 and its ReLU (not in the paper;
      yl-1993's PyTorch reimplementation has it: +0.2 % on MNIST in its ablation).
      Adds ``2A`` parameters and the ``batch_stats`` collection.
    batch_axis: the mesh axis that BatchNorm averages its batch statistics over in
      training (``"data"``, the train step's), or None for this device's batch.
  """
  num_classes: int = 10
  size: str = "small"
  routing: Callable[..., tuple[jax.Array, jax.Array]] = em_routing
  routing_iters: int = 3
  per_parent_type: bool = False
  dtype: Dtype = jnp.float32
  conv_impl: str = "auto"
  conv1_batchnorm: bool = False
  batch_axis: str | None = None

  @nn.compact
  def __call__(self, images: jax.Array, labels: jax.Array | None = None, *,
               train: bool = False) -> MatrixCapsOutput:
    del labels  # no decoder
    if images.ndim != 4:
      raise ValueError(
          f"images must be (batch, H, W, C); got {images.shape}. Add a channel "
          "axis with images[..., None].")
    if self.size not in SIZES:
      raise ValueError(f"size must be one of {', '.join(SIZES)}; got {self.size!r}.")
    a, b, c, d = SIZES[self.size]
    height, width = images.shape[1:3]
    if min(height, width) < MIN_SIZE:
      raise ValueError(f"MatrixCapsNet needs images of at least {MIN_SIZE}x{MIN_SIZE} (its "
                       f"convolutions leave a 3x3 grid for ConvCaps2); got {height}x{width}.")
    x = Conv(a, 5, 2, self.dtype, self.conv_impl, kernel_init=nn.initializers.he_normal(),
             bias_init=nn.initializers.zeros, name="conv1")(images)
    if self.conv1_batchnorm:  # PyTorch's BatchNorm2d as yl-1993 sets it: eps 1e-3, momentum 0.1
      x = BatchNorm(momentum=0.9, epsilon=1e-3, axis_name=self.batch_axis,
                    unbiased_running_var=True, dtype=self.dtype, name="bn1")(x, train=train)
    x = nn.relu(x)
    poses, act = PrimaryMatrixCaps(b, self.dtype, self.conv_impl, name="primary_caps")(x)
    for name, types, (kernel, stride) in (("conv_caps1", c, GEOMETRY[2]),
                                          ("conv_caps2", d, GEOMETRY[3])):
      poses, act = ConvMatrixCaps(types, kernel, stride, self.routing, self.routing_iters,
                                  self.per_parent_type, name=name)(poses, act)
    centres = receptive_field_centres(height), receptive_field_centres(width)
    poses, act = ClassMatrixCaps(self.num_classes, self.routing, self.routing_iters,
                                 name="class_caps")(poses, act, centres)
    return MatrixCapsOutput(act, poses)


def matrix_capsule_loss(out: MatrixCapsOutput, batch, config, step) -> tuple[jax.Array, dict]:
  """Spread loss with the margin rising from 0.2 to 0.9 over ``config.margin_ramp_steps``."""
  margin = spread_margin(step, config.margin_ramp_steps)
  loss = spread_loss(out.scores, batch["labels"][:, 0], margin)
  return loss, {"spread_loss": loss, "margin": jnp.broadcast_to(margin, loss.shape)}


def build_matrix_capsnet(config, dataset, conv1_batchnorm: bool = False) -> MatrixCapsNet:
  if config.model_size not in SIZES:
    raise ValueError(f"--model_size {config.model_size!r} is unknown; use one of "
                     f"{', '.join(SIZES)}.")
  if min(dataset.image_shape[:2]) < MIN_SIZE:
    raise ValueError(f"--model matrix_capsnet needs images of at least {MIN_SIZE}x{MIN_SIZE}; "
                     f"the dataset has {dataset.image_shape[0]}x{dataset.image_shape[1]}.")
  return MatrixCapsNet(num_classes=dataset.num_classes, size=config.model_size,
                       routing=router_of(config),
                       per_parent_type=config.assignments_per_parent_type,
                       routing_iters=config.routing_iters, dtype=config.compute_dtype,
                       conv1_batchnorm=conv1_batchnorm, batch_axis=DATA_AXIS)


MODELS.register("matrix_capsnet", ModelSpec(
    build=build_matrix_capsnet, loss=matrix_capsule_loss, max_labels=1,
    routers=MATRIX_ROUTERS, default_routing="em",
    description="matrix capsules with EM routing (Hinton, Sabour & Frosst, ICLR 2018)"))
MODELS.register("matrix_capsnet_bn", ModelSpec(
    build=functools.partial(build_matrix_capsnet, conv1_batchnorm=True),
    loss=matrix_capsule_loss, collections=("batch_stats",), max_labels=1,
    routers=MATRIX_ROUTERS, default_routing="em",
    description="matrix_capsnet with BatchNorm after conv1 (yl-1993's PyTorch reimplementation)"))
