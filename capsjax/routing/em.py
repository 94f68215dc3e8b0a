"""EM routing between matrix capsules, as pure ``jax.numpy`` functions.

Reference: Hinton, Sabour & Frosst, "Matrix capsules with EM routing" (ICLR 2018),
Procedure 1. Each child i (a 4x4 pose, flattened to ``pose_dim`` = 16, and an
activation a_i) casts a vote V_ij for every parent j; routing fits one
axis-aligned Gaussian per parent to the votes, weighted by the children's
activations and their assignments R_ij:

  M-step  R'_ij = R_ij a_i
          mu_j^h = sum_i R'_ij V_ij^h / sum_i R'_ij
          (sigma_j^h)^2 = sum_i R'_ij (V_ij^h - mu_j^h)^2 / sum_i R'_ij
          cost_j^h = (beta_u + log sigma_j^h) sum_i R'_ij
          a_j = sigmoid(lambda (beta_a - sum_h cost_j^h))
  E-step  log p_ij = sum_h -(V_ij^h - mu_j^h)^2 / (2 (sigma_j^h)^2) - log(sqrt(2 pi) sigma_j^h)
          R_ij = softmax over the parents j of (log a_j + log p_ij)

Assignments start uniform over the parents; every iteration runs the M-step
and, except after the last, the E-step. Numerical safety, so values and
gradients stay finite when all votes of a parent agree, when a parent has one
child, and when activations are 0: the E-step is in log space (log-sigmoid,
log-softmax), the variance has a floor, and a parent with no mass sum_i R'_ij
gets zero weights (its pose is the mean of its votes). The moments are taken
in one pass over the votes centred on each parent's mean vote, so float32
routing is shift-equivariant to float32 precision.

Matrix-capsule routers share one calling convention (the vector-capsule
``(u_hat, num_iters) -> (v, c)`` does not fit: they take and give activations)::

  poses, activations = router(votes, activations, beta_u, beta_a, num_iters, **options)

  votes        (..., n_in, n_out, pose_dim)
  activations  (..., n_in)            in [0, 1]
  beta_u, beta_a broadcastable to (..., n_out)
  poses        (..., n_out, pose_dim)
  activations  (..., n_out)           in [0, 1]

Convolutional capsule layers route every output position's window at once
(the leading ``...`` holds the positions) and pass ``assignments=``
:func:`window_softmax`, so a child shared by overlapping windows splits its
vote over all parents it reaches, as the paper says.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import jax
import jax.numpy as jnp

from capsjax.conv import fold_windows, windows

__all__ = ["em_routing", "inverse_temperatures", "window_softmax", "VARIANCE_FLOOR"]

VARIANCE_FLOOR = 1e-4   # added to every variance: a parent whose votes agree stays finite
_LOG_2PI = math.log(2 * math.pi)


def inverse_temperatures(num_iters: int, final: float = 0.01, *,
                         scaled: bool = False) -> list[float]:
  """The inverse temperature lambda of each iteration.

  The paper gives no schedule. This is the official code's (google-research
  ``capsule_em``; IBM's reimplementation uses the same), ``final * (1 -
  0.95^(t + 1))``: 0.0005, 0.00098, 0.0014 for 3 iterations. With ``scaled``
  the same shape is scaled so that the last iteration uses exactly ``final``.
  """
  shape = [1 - 0.95 ** (t + 1) for t in range(num_iters)]
  return [final * s / (shape[-1] if scaled else 1.0) for s in shape]


def _softmax_over_parents(logits: jax.Array) -> jax.Array:
  return jax.nn.softmax(logits, axis=-1)


def em_routing(
    votes: jax.Array,
    activations: jax.Array,
    beta_u: jax.Array,
    beta_a: jax.Array,
    num_iters: int,
    *,
    final_inverse_temperature: float = 0.01,
    inverse_temperature: Sequence[float] | None = None,
    scaled_inverse_temperature: bool = False,
    variance_floor: float = VARIANCE_FLOOR,
    assignments: Callable[[jax.Array], jax.Array] | None = None,
) -> tuple[jax.Array, jax.Array]:
  """EM routing, Procedure 1 of the paper (see the module docstring for the equations).

  Args:
    votes: ``(..., n_in, n_out, pose_dim)``, V_ij.
    activations: ``(..., n_in)`` in [0, 1], a_i.
    beta_u, beta_a: learned costs, broadcastable to ``(..., n_out)`` (one per
      parent capsule type in the layers).
    num_iters: a static Python int >= 1.
    final_inverse_temperature: the ``final`` of :func:`inverse_temperatures`.
    inverse_temperature: lambda of every iteration (``num_iters`` floats),
      overriding the schedule.
    scaled_inverse_temperature: the schedule scaled to end at
      ``final_inverse_temperature`` (:func:`inverse_temperatures` with ``scaled``).
    variance_floor: added to every variance.
    assignments: ``logits (..., n_in, n_out) -> R``: how assignments are
      normalised (default: a softmax over the parents of each child;
      :func:`window_softmax` for convolutional capsules). Also applied to
      zero logits for the uniform start.

  Returns:
    ``(poses (..., n_out, pose_dim), activations (..., n_out))``: the parents'
    means mu_j and activations a_j of the last M-step.
  """
  if isinstance(num_iters, bool) or not isinstance(num_iters, int) or num_iters < 1:
    raise ValueError(f"num_iters must be a Python int >= 1, got {num_iters!r}.")
  if votes.ndim < 3 or activations.shape != votes.shape[:-2]:
    raise ValueError(
        f"votes must be (..., n_in, n_out, pose_dim) and activations (..., n_in); got votes "
        f"{votes.shape} and activations {activations.shape}.")
  if inverse_temperature is None:
    inverse_temperature = inverse_temperatures(num_iters, final_inverse_temperature,
                                               scaled=scaled_inverse_temperature)
  if len(inverse_temperature) != num_iters:
    raise ValueError(f"inverse_temperature has {len(inverse_temperature)} values; give one "
                     f"per iteration ({num_iters}).")
  normalise = assignments or _softmax_over_parents
  dtype = votes.dtype
  lambdas = jnp.asarray(inverse_temperature, dtype)
  a_in = activations.astype(dtype)[..., None, :]                  # (..., 1, n_in)
  beta_u = jnp.asarray(beta_u, dtype)[..., None]                  # (..., n_out, 1)
  beta_a = jnp.asarray(beta_a, dtype)

  # Parent-major: each parent's votes are one contiguous (n_in, h) block, so the
  # M-step's sums over the children are matrix-vector products and the E-step
  # sums over h the innermost axis. (XLA folds the transpose into the votes.)
  votes = jnp.swapaxes(votes, -3, -2)                             # (..., n_out, n_in, h)
  # EM is shift-equivariant: routing the votes in the frame of each parent's
  # mean vote gives the same result, and keeps a common offset of the votes out
  # of the float32 moments (whose cancellation grew with it). The frame carries
  # no gradient: the outputs do not depend on it.
  centre = jax.lax.stop_gradient(jnp.mean(votes, axis=-2, keepdims=True))  # (..., n_out, 1, h)
  centred = votes - centre
  squares = jnp.square(centred)

  def normalise_parent_major(logits):                            # (..., n_out, n_in)
    # ``assignments`` takes and gives the children-major (..., n_in, n_out).
    return jnp.swapaxes(normalise(jnp.swapaxes(logits, -1, -2)), -1, -2)

  def m_step(r, lam):                                             # r (..., n_out, n_in)
    weighted = r * a_in                                           # R'_ij
    mass = jnp.sum(weighted, axis=-1)                             # (..., n_out)
    # Exact weights, summing to 1 over i; a parent with no mass gets none.
    share = weighted / jnp.where(mass > 0, mass, 1.0)[..., None]
    # Both moments in one pass over the centred votes: in that frame the mean
    # is of the order of the spread, so E[V^2] - mu^2 does not cancel.
    mu = jnp.einsum("...ji,...jih->...jh", share, centred)        # (..., n_out, h)
    var = jnp.maximum(jnp.einsum("...ji,...jih->...jh", share, squares) - jnp.square(mu), 0.0)
    log_var = jnp.log(var + variance_floor)
    cost = jnp.sum((beta_u + 0.5 * log_var) * mass[..., None], axis=-1)   # (..., n_out)
    logit = lam * (beta_a - cost)
    return mu, log_var, logit

  def e_step(mu, log_var, logit):
    # sum_h (V - mu)^2 / var expanded, as two matrix-vector products over the
    # same centred votes and squares as the M-step (nothing votes-sized is written).
    inv_var = jnp.exp(-log_var)                                   # (..., n_out, h)
    quadratic = (jnp.einsum("...jih,...jh->...ji", squares, inv_var)
                 - 2 * jnp.einsum("...jih,...jh->...ji", centred, mu * inv_var)
                 + jnp.sum(jnp.square(mu) * inv_var, axis=-1)[..., None])
    log_p = -0.5 * (jnp.maximum(quadratic, 0.0)
                    + jnp.sum(log_var + _LOG_2PI, axis=-1)[..., None])    # (..., n_out, n_in)
    return normalise_parent_major(jax.nn.log_sigmoid(logit)[..., None] + log_p)

  def body(t, r):
    return e_step(*m_step(r, lambdas[t]))

  # Zero logits for the uniform start, made from the votes so that XLA does not
  # spend the compilation constant-folding the normalisation.
  r = normalise_parent_major(0.0 * jax.lax.stop_gradient(votes[..., 0]))
  r = jax.lax.fori_loop(0, num_iters - 1, body, r, unroll=True)
  mu, _, logit = m_step(r, lambdas[num_iters - 1])
  return mu + centre[..., 0, :], jax.nn.sigmoid(logit)


# ----------------------------------------------------------------------------
# Convolutional capsules: a child in several windows splits over all of them.

def window_softmax(logits: jax.Array, input_size: tuple[int, int], kernel_size: int,
                   stride: int, *, per_parent_type: bool = False) -> jax.Array:
  """Assignments of the children of a convolutional capsule layer.

  ``logits (B, H', W', k * k * n_types, n_out)``: for every output position,
  its window of ``k x k`` positions times ``n_types`` child types (in that
  order), and the ``n_out`` parent types. A child at an input position is read
  by every window that covers it; the paper normalises its assignments over all
  the parents it reaches, every covering position and every parent type. With
  ``per_parent_type`` they are normalised over the covering positions for each
  parent type separately, as the official code does, then divided by the number
  of parent types, so that they too sum to 1 (each parent type gets an equal
  share of the child).

  Returns:
    ``R`` with the shape of ``logits``, summing to 1 over each child's parents.
  """
  b, ho, wo, n, c = logits.shape
  types = n // (kernel_size * kernel_size)
  x = logits.reshape(b, ho, wo, kernel_size, kernel_size, types, c)
  # Per window entry, the log of its share before normalisation over windows.
  entry = x if per_parent_type else jax.nn.logsumexp(x, axis=-1, keepdims=True)
  peak = fold_windows(jax.lax.stop_gradient(entry), input_size, stride, "max")
  peak = jnp.where(jnp.isfinite(peak), peak, 0.0)              # positions no window reads
  total = fold_windows(jnp.exp(entry - windows(peak, kernel_size, stride)), input_size, stride)
  log_norm = peak + jnp.log(jnp.where(total > 0, total, 1.0))
  r = jnp.exp(x - windows(log_norm, kernel_size, stride))
  if per_parent_type:
    r = r / c
  return r.reshape(logits.shape)
