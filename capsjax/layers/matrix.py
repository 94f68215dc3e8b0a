"""Matrix capsules (Hinton, Sabour & Frosst, 2018): a 4x4 pose, flattened
row-major to 16, and an activation per capsule; a vote is the pose times a
learned 4x4 matrix.

  PrimaryMatrixCaps  1x1 convolution -> poses, activations
                     (B, H, W, C) -> (B, H, W, T, 16), (B, H, W, T)
  ConvMatrixCaps     KxK window, stride, routed   -> (B, H', W', T', 16), (B, H', W', T')
  ClassMatrixCaps    shared over positions, coordinates added -> (B, classes, 16), (B, classes)
"""
from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from capsjax.conv import windows
from capsjax.layers.convolution import Conv, Dtype, Router
from capsjax.routing import em_routing, window_softmax

__all__ = ["PrimaryMatrixCaps", "ConvMatrixCaps", "ClassMatrixCaps", "POSE_INIT"]

# Transformation matrices of matrix capsules: truncated normal, stddev 1.0.
# A parent's pose is the mean of its children's votes, which at initialisation
# disagree, so poses shrink layer by layer; with 1.0 a vote M W (a sum of four
# products) is about twice its pose M, which offsets that (0.5 trained slower).
POSE_INIT = 1.0


@jax.custom_jvp
def _votes(poses: jax.Array, w: jax.Array) -> jax.Array:
  """``poses (..., n_in, 16)``, ``w (n_in, n_out, 4, 4)`` -> votes ``(..., n_in, n_out, 16)``."""
  m = poses.reshape(*poses.shape[:-1], 1, 4, 4, 1)                # (..., i, 1, r, q, 1)
  w = w.astype(poses.dtype)[:, :, None]                            # (i, j, 1, q, c)
  # V_rc = sum_q M_rq W_qc as four broadcast multiply-adds, written straight in
  # the routing's layout (as an einsum, XLA:CPU transposes the votes).
  v = sum(m[..., q, :] * w[..., q, :] for q in range(4))           # (..., i, j, r, c)
  return v.reshape(*v.shape[:-2], 16)


def _child_major(x: jax.Array, rows: int) -> jax.Array:
  """``(N, n_in, rows, cols)`` -> ``(n_in, N * rows, cols)``: each child's matrices stacked."""
  n, n_in, _, cols = x.shape
  return jnp.moveaxis(x, 1, 0).reshape(n_in, n * rows, cols)


@_votes.defjvp
def _votes_jvp(primals, tangents):
  # The votes are bilinear in (poses, W): the tangent is the same product of the
  # tangents, written as two products batched over the children i, in one
  # child-major array that is transposed once into the votes' layout. Its
  # transpose (the backward pass) thus transposes the votes' cotangent once and
  # runs two matrix products (against the transposes of the broadcasts, which
  # reduce over broadcast axes: 6x slower on XLA:CPU).
  poses, w = primals
  d_poses, d_w = tangents
  *lead, n_in, _ = poses.shape
  n_out = w.shape[1]
  w, d_w = w.astype(poses.dtype), d_w.astype(poses.dtype)

  def stacked(p):                                                   # (i, N * 4 (r), 4 (q))
    return _child_major(p.reshape(-1, n_in, 4, 4), 4)

  def per_child(x):                                                 # (i, 4 (q), J * 4 (c))
    return jnp.swapaxes(x, 1, 2).reshape(n_in, 4, n_out * 4)

  batched = (((2,), (1,)), ((0,), (0,)))
  t = (jax.lax.dot_general(stacked(d_poses), per_child(w), batched)
       + jax.lax.dot_general(stacked(poses), per_child(d_w), batched))   # (i, N*4, J*4)
  t = jnp.transpose(t.reshape(n_in, -1, 4, n_out, 4), (1, 0, 3, 2, 4))   # (N, i, j, r, c)
  return _votes(poses, w), t.reshape(*lead, n_in, n_out, 16)


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
