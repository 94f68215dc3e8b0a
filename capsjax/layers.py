"""Capsule layers as thin Flax (Linen) modules over the pure core.

The pieces a researcher composes into their own network:

  Conv         VALID convolution through :func:`capsjax.conv.conv2d`
  DepthwiseConv  VALID depthwise convolution through :func:`capsjax.conv.depthwise_conv2d`
  PrimaryCaps  convolution -> squashed capsules   (B, H, W, C) -> (B, n, d)
  DenseCaps    fully connected capsules, routed   (B, n_in, d_in) -> v (B, n_out, d_out), c
  Decoder      masked class capsules -> image      (..., n_classes, d) -> (..., H, W, C)

Matrix capsules (a 4x4 pose, flattened to 16, and an activation per capsule):

  PrimaryMatrixCaps  1x1 convolution -> poses, activations   (B, H, W, C) -> (B, H, W, T, 16), (B, H, W, T)
  ConvMatrixCaps     KxK window, stride, routed               -> (B, H', W', T', 16), (B, H', W', T')
  ClassMatrixCaps    shared over positions, coordinates added -> (B, classes, 16), (B, classes)

``DenseCaps`` takes its router as a parameter (any function of the
:mod:`capsjax.routing` convention); it never imports one algorithm. The
initialisers are the official code's; their constants live here.
"""
from __future__ import annotations

import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from capsjax.conv import conv2d, depthwise_conv2d, windows
from capsjax.routing import dynamic_routing, em_routing, squash, window_softmax

__all__ = ["Conv", "DepthwiseConv", "PrimaryCaps", "DenseCaps", "Decoder", "mask_capsules",
           "PrimaryMatrixCaps", "ConvMatrixCaps", "ClassMatrixCaps", "DIGIT_CAPS_INIT",
           "OFFICIAL_PRIMARY_CAPS_SCALE", "POSE_INIT"]

Dtype = Any
Initializer = Callable[..., jax.Array]
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

# Transformation matrices of matrix capsules: truncated normal, stddev 1.0.
# A parent's pose is the mean of its children's votes, which at initialisation
# disagree, so poses shrink layer by layer; with 1.0 a vote M W (a sum of four
# products) is about twice its pose M, which offsets that (0.5 trained slower).
POSE_INIT = 1.0


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


@jax.custom_vjp
def _dense_votes(u: jax.Array, w: jax.Array) -> jax.Array:
  """``u_hat = W_ij u_i``: ``u (B, n_in, d_in)``, ``w (n_in, n_out, d_out, d_in)`` ->
  ``(B, n_in, n_out, d_out)``.

  The gradients are written out so that ``du_hat`` is only regrouped child-major
  ``(n_in, B, n_out * d_out)`` (rows stay contiguous). Left to autodiff, XLA:CPU
  computes ``dW`` from ``du_hat`` transposed batch-minor, in one fusion that
  took 63 ms of a 160 ms backward pass (batch 32, 3 iterations).
  """
  return jnp.einsum("bik,ijdk->bijd", u, w)


def _dense_votes_fwd(u, w):
  return _dense_votes(u, w), (u, w)


def _dense_votes_bwd(residuals, du_hat):
  u, w = residuals
  n_in, n_out, d_out, d_in = w.shape
  du_hat = jnp.swapaxes(du_hat, 0, 1).reshape(n_in, -1, n_out * d_out)  # (i, b, jd)
  # Per child i two plain row-major GEMMs; only u and the small results move.
  dw = jnp.einsum("ikb,ibf->ikf", jnp.transpose(u, (1, 2, 0)), du_hat)   # (i, k, jd)
  du = jnp.einsum("ibf,ifk->ibk", du_hat, w.reshape(n_in, n_out * d_out, d_in))
  return jnp.swapaxes(du, 0, 1), jnp.swapaxes(dw, 1, 2).reshape(w.shape)


_dense_votes.defvjp(_dense_votes_fwd, _dense_votes_bwd)


class DenseCaps(nn.Module):
  """Fully connected capsules: a weight matrix W_ij per (child i, parent j), then routing.

  ``u (B, n_in, d_in)`` -> ``u_hat = W_ij u_i (B, n_in, num_caps, caps_dim)`` ->
  ``routing(u_hat, routing_iters) = (v (B, num_caps, caps_dim), c (B, n_in, num_caps))``.
  The router is a parameter (default :func:`capsjax.routing.dynamic_routing`);
  routing runs in float32. The routing logits are not parameters: they
  restart on every call. With ``routing_bias`` the layer learns a prior
  ``b (n_in, num_caps)``, zero at init, passed to the router as ``bias=``
  (as :func:`capsjax.routing.self_attention_routing` takes it).
  """
  num_caps: int = 10
  caps_dim: int = 16
  routing: Router = dynamic_routing
  routing_iters: int = 3
  dtype: Dtype = jnp.float32
  init_stddev: float = DIGIT_CAPS_INIT
  kernel_init: Initializer | None = None  # None: truncated normal of init_stddev
  routing_bias: bool = False

  @nn.compact
  def __call__(self, u: jax.Array) -> tuple[jax.Array, jax.Array]:
    _, n_in, d_in = u.shape
    w = self.param("W", self.kernel_init or nn.initializers.truncated_normal(self.init_stddev),
                   (n_in, self.num_caps, self.caps_dim, d_in), jnp.float32)
    u_hat = _dense_votes(u.astype(self.dtype), w.astype(self.dtype))
    options = {}
    if self.routing_bias:
      options["bias"] = self.param("b", nn.initializers.zeros, (n_in, self.num_caps),
                                   jnp.float32)
    return self.routing(u_hat.astype(jnp.float32), self.routing_iters, **options)


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


# ----------------------------------------------------------------------------
# Matrix capsules (Hinton, Sabour & Frosst, 2018). Poses are 4x4 matrices
# flattened row-major to 16; a vote is the pose times a learned 4x4 matrix.

def _votes(poses: jax.Array, w: jax.Array) -> jax.Array:
  """``poses (..., n_in, 16)``, ``w (n_in, n_out, 4, 4)`` -> votes ``(..., n_in, n_out, 16)``."""
  m = poses.reshape(*poses.shape[:-1], 1, 4, 4, 1)                # (..., i, 1, r, q, 1)
  w = w.astype(poses.dtype)[:, :, None]                            # (i, j, 1, q, c)
  # V_rc = sum_q M_rq W_qc as four broadcast multiply-adds, written straight in
  # the routing's layout (as an einsum, XLA:CPU transposes the votes; measured
  # 1.27 s against 1.54 s for a train step of batch 32).
  v = sum(m[..., q, :] * w[..., q, :] for q in range(4))           # (..., i, j, r, c)
  return v.reshape(*v.shape[:-2], 16)


def _matrix_params(module: nn.Module, w_shape: tuple[int, ...], n_out: int, stddev: float):
  """The transformations ``W`` (truncated normal) and the costs ``beta_u``, ``beta_a``
  (zeros, one per parent type) of a routed matrix-capsule layer."""
  w = module.param("W", nn.initializers.truncated_normal(stddev), w_shape, jnp.float32)
  beta_u = module.param("beta_u", nn.initializers.zeros, (n_out,), jnp.float32)
  beta_a = module.param("beta_a", nn.initializers.zeros, (n_out,), jnp.float32)
  return w, beta_u, beta_a


class PrimaryMatrixCaps(nn.Module):
  """1x1 convolutions to ``num_types`` capsules per position: 16 pose entries
  and a sigmoid activation each. ``(B, H, W, C)`` -> ``(B, H, W, T, 16), (B, H, W, T)``."""
  num_types: int = 8
  dtype: Dtype = jnp.float32
  conv_impl: str = "auto"

  @nn.compact
  def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    init = dict(kernel_init=nn.initializers.lecun_normal(), bias_init=nn.initializers.zeros)
    pose = Conv(self.num_types * 16, 1, 1, self.dtype, self.conv_impl, name="pose", **init)(x)
    logit = Conv(self.num_types, 1, 1, self.dtype, self.conv_impl, name="activation", **init)(x)
    poses = pose.reshape(*pose.shape[:3], self.num_types, 16).astype(jnp.float32)
    return poses, nn.sigmoid(logit.astype(jnp.float32))


class ConvMatrixCaps(nn.Module):
  """Convolutional matrix capsules, routed.

  ``poses (B, H, W, T, 16)``, ``activations (B, H, W, T)`` ->
  ``(B, H', W', num_types, 16)``, ``(B, H', W', num_types)`` with
  ``H' = (H - kernel_size) // stride + 1``. One 4x4 transformation per (window
  position, child type, parent type), shared over the output positions
  (``W (k, k, T, num_types, 4, 4)``); ``beta_u``, ``beta_a`` per parent type.
  Every output position routes its ``k * k * T`` children; a child in several
  windows splits its assignments over all the parents it reaches
  (:func:`capsjax.routing.window_softmax`; ``per_parent_type``: the official
  code's normalisation). The router follows :data:`capsjax.routing.MATRIX_ROUTERS`'
  convention and takes ``assignments=``.
  """
  num_types: int = 16
  kernel_size: int = 3
  stride: int = 1
  routing: Router = em_routing
  routing_iters: int = 3
  per_parent_type: bool = False
  init_stddev: float = POSE_INIT

  @nn.compact
  def __call__(self, poses: jax.Array, activations: jax.Array) -> tuple[jax.Array, jax.Array]:
    _, h, w, types, _ = poses.shape
    k = self.kernel_size
    weights, beta_u, beta_a = _matrix_params(self, (k, k, types, self.num_types, 4, 4),
                                             self.num_types, self.init_stddev)
    pose_windows = windows(poses, k, self.stride)                 # (B, H', W', k, k, T, 16)
    b, ho, wo = pose_windows.shape[:3]
    children = pose_windows.reshape(b, ho, wo, k * k * types, 16)
    votes = _votes(children, weights.reshape(k * k * types, self.num_types, 4, 4))
    a = windows(activations, k, self.stride).reshape(b, ho, wo, k * k * types)
    assign = functools.partial(window_softmax, input_size=(h, w), kernel_size=k,
                               stride=self.stride, per_parent_type=self.per_parent_type)
    return self.routing(votes, a, beta_u, beta_a, self.routing_iters, assignments=assign)


class ClassMatrixCaps(nn.Module):
  """Class capsules: one 4x4 transformation per (child type, class), shared over
  positions, with coordinate addition.

  ``poses (B, H, W, T, 16)``, ``activations (B, H, W, T)`` ->
  ``(B, num_classes, 16)``, ``(B, num_classes)``. Coordinate addition (the
  paper): the scaled row and column of the centre of each child's receptive
  field are added to the first two entries of the right-hand column of its
  vote matrix (entries (0, 3) and (1, 3)). ``centres`` gives them,
  ``(rows (H,), cols (W,))`` in [0, 1]; None: the grid's own cell centres
  ``(i + 0.5) / H``.
  """
  num_classes: int = 10
  routing: Router = em_routing
  routing_iters: int = 3
  coordinate_addition: bool = True
  init_stddev: float = POSE_INIT

  @nn.compact
  def __call__(self, poses: jax.Array, activations: jax.Array,
               centres: tuple[jax.Array, jax.Array] | None = None
               ) -> tuple[jax.Array, jax.Array]:
    b, h, w, types, _ = poses.shape
    weights, beta_u, beta_a = _matrix_params(self, (types, self.num_classes, 4, 4),
                                             self.num_classes, self.init_stddev)
    votes = _votes(poses, weights)                                # (B, H, W, T, classes, 16)
    if self.coordinate_addition:
      rows, cols = centres if centres is not None else (
          (jnp.arange(h) + 0.5) / h, (jnp.arange(w) + 0.5) / w)
      offset = jnp.zeros((h, w, 16), votes.dtype)
      offset = offset.at[:, :, 3].set(jnp.asarray(rows, votes.dtype)[:, None])
      offset = offset.at[:, :, 7].set(jnp.asarray(cols, votes.dtype)[None, :])
      votes = votes + offset[:, :, None, None, :]
    votes = votes.reshape(b, h * w * types, self.num_classes, 16)
    return self.routing(votes, activations.reshape(b, h * w * types), beta_u, beta_a,
                        self.routing_iters)
