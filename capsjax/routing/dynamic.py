"""Squash and routing-by-agreement (dynamic routing) as pure ``jax.numpy`` functions.

Everything here is a plain function of arrays (no Flax, no state), so it can be
used inside any JAX code and composes with ``jit``, ``vmap`` and ``grad``.

Reference: Sabour, Frosst & Hinton, "Dynamic Routing Between Capsules" (2017),
Eq. 1-3 and Procedure 1.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["safe_norm", "squash", "dynamic_routing"]


def safe_norm(s: jax.Array, axis: int = -1, keepdims: bool = False) -> jax.Array:
  """Euclidean length of capsule vectors, with a finite gradient at ``s = 0``.

  ``jnp.linalg.norm`` has an infinite derivative at the origin, which turns into
  NaN as soon as it is multiplied by zero. Here the square root is only evaluated
  where the squared norm is positive; at exactly zero the value is 0 and the
  gradient is 0 (a valid subgradient).

  Args:
    s: array of capsule vectors, e.g. ``(batch, n_caps, dim)``.
    axis: the capsule-dimension axis.
    keepdims: keep the reduced axis with size 1.

  Returns:
    The lengths, ``s.shape`` without ``axis`` (or with size 1 if ``keepdims``).
  """
  squared = jnp.sum(jnp.square(s), axis=axis, keepdims=keepdims)
  is_zero = squared == 0
  safe_squared = jnp.where(is_zero, jnp.ones_like(squared), squared)
  return jnp.where(is_zero, jnp.zeros_like(squared), jnp.sqrt(safe_squared))


def squash(s: jax.Array, axis: int = -1) -> jax.Array:
  """The capsule non-linearity, Eq. 1: ``v = |s|^2 / (1 + |s|^2) * s / |s|``.

  Keeps the direction of ``s`` and maps its length ``n`` to ``n^2 / (1 + n^2)``,
  which lies in ``[0, 1)``. Written as ``s * |s| / (1 + |s|^2)`` with
  :func:`safe_norm`, so ``squash(0) == 0`` exactly and the gradient is finite
  everywhere (it is exactly 0 at ``s = 0``).

  Args:
    s: capsule inputs, any shape; ``axis`` holds the capsule vector.
    axis: the capsule-dimension axis.

  Returns:
    ``v`` with the shape and dtype of ``s``.
  """
  norm = safe_norm(s, axis=axis, keepdims=True)
  return s * (norm / (1.0 + jnp.square(norm))).astype(s.dtype)


def dynamic_routing(
    u_hat: jax.Array,
    num_iters: int,
    *,
    stop_gradient_inner: bool = False,
) -> tuple[jax.Array, jax.Array]:
  """Routing by agreement, Procedure 1 of the paper.

  The routing logits ``b`` start at zero for every example on every call; they
  are neither parameters nor shared across the batch. Each iteration computes

    c_ij = softmax_j(b_ij)                (over the *parent* capsules j)
    s_j  = sum_i c_ij * u_hat_j|i
    v_j  = squash(s_j)
    b_ij = b_ij + <u_hat_j|i, v_j>

  The first iteration has ``c = 1/n_out`` exactly and is written out; the
  logit update after the last iteration is never used. So ``jax.lax.fori_loop``
  runs the ``num_iters - 2`` middle iterations (unrolled), then the final ``c`` and ``v``
  are formed.

  Args:
    u_hat: predictions ``(..., n_in, n_out, d_out)`` of each child capsule i for
      each parent capsule j; any number of leading batch dims.
    num_iters: number of routing iterations (a static Python int >= 1; the
      paper uses 3, and 1 means uniform coupling).
    stop_gradient_inner: if True, gradients do not flow through the logit
      updates of the inner iterations (only through the final weighted sum).
      The default (False) follows the official implementation.

  Returns:
    ``(v, c)``: the parent capsules ``(..., n_out, d_out)`` and the coupling
    coefficients ``(..., n_in, n_out)`` that produced them.

  Raises:
    ValueError: if ``num_iters`` is not an int >= 1 or ``u_hat`` has fewer than
      three dims.
  """
  if isinstance(num_iters, bool) or not isinstance(num_iters, int) or num_iters < 1:
    raise ValueError(
        f"num_iters must be a Python int >= 1 (got {num_iters!r}); "
        "use 3 as in the paper, or 1 for uniform coupling.")
  if u_hat.ndim < 3:
    raise ValueError(
        "u_hat must have shape (..., n_in, n_out, d_out); got shape "
        f"{u_hat.shape}.")

  # Inside, u_hat is parent-major (..., j, i, d): both contractions below are
  # then batched over (..., j) with no transposes of u_hat.
  def weighted_sum(c, predictions):
    return squash(jnp.einsum("...ji,...jid->...jd", c, predictions))

  def agreement(predictions, v):
    return jnp.einsum("...jid,...jd->...ji", predictions, v)

  n_out = u_hat.shape[-2]
  # Iteration 1: b = 0, so c = softmax(0) = 1/n_out exactly; written out,
  # which also spares XLA constant-folding a softmax of zeros.
  if num_iters == 1:
    c = jnp.full(u_hat.shape[:-1], 1.0 / n_out, u_hat.dtype)
    return squash(jnp.sum(u_hat, axis=-3) / n_out), c
  by_parent = jnp.swapaxes(u_hat, -3, -2)
  inner = jax.lax.stop_gradient(by_parent) if stop_gradient_inner else by_parent
  v = squash(jnp.sum(inner, axis=-2) / n_out)
  logits = agreement(inner, v)

  def update_logits(_, logits):
    v = weighted_sum(jax.nn.softmax(logits, axis=-2), inner)
    return logits + agreement(inner, v)

  # Unrolled: XLA:CPU runs a rolled loop's body without fusing it with its
  # surroundings (3 iterations, batch 32: 113 ms forward rolled, 60 ms unrolled).
  logits = jax.lax.fori_loop(0, num_iters - 2, update_logits, logits, unroll=True)
  c = jax.nn.softmax(logits, axis=-2)
  return weighted_sum(c, by_parent), jnp.swapaxes(c, -1, -2)
