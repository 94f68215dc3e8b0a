"""Self-attention routing and the exponential squash of Efficient-CapsNet, as pure
``jax.numpy`` functions.

Reference: Mazzia, Salvetti & Chiaberge, "Efficient-CapsNet: capsule network with
self-attention routing", Scientific Reports 11 (2021), Eq. 3-6.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from capsjax.routing.dynamic import safe_norm

__all__ = ["exp_squash", "self_attention_routing"]


def exp_squash(s: jax.Array, axis: int = -1) -> jax.Array:
  """Efficient-CapsNet's squash: ``v = (1 - exp(-|s|)) s / |s|``.

  Maps a length ``n`` to ``1 - exp(-n)`` in ``[0, 1)``, keeping the direction.
  ``exp_squash(0) == 0`` exactly; near 0 it is ``s (1 - |s|/2 + ...)``, so the
  gradient is finite everywhere (the identity at ``s = 0``).

  Args:
    s: capsule inputs, any shape; ``axis`` holds the capsule vector.
    axis: the capsule-dimension axis.

  Returns:
    ``v`` with the shape and dtype of ``s``.
  """
  norm = safe_norm(s, axis=axis, keepdims=True)
  positive = norm > 0
  safe = jnp.where(positive, norm, jnp.ones_like(norm))
  factor = jnp.where(positive, -jnp.expm1(-safe) / safe, jnp.ones_like(norm))
  return s * factor.astype(s.dtype)


def self_attention_routing(
    u_hat: jax.Array,
    num_iters: int = 1,
    *,
    bias: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
  """Self-attention routing, one pass (Efficient-CapsNet, Eq. 4-6).

  For every parent j the agreement of child i with all children is

    A_ij = <u_hat_ij, sum_k u_hat_kj> / sqrt(d_out)

  written in O(n_in d_out) per parent (the sum over k first), not as an
  ``n_in x n_in`` matrix. Then

    c_ij = softmax_j(A_ij)                 (over the *parents*)
    s_j  = sum_i (c_ij + bias_ij) u_hat_ij
    v_j  = exp_squash(s_j)

  Args:
    u_hat: predictions ``(..., n_in, n_out, d_out)``.
    num_iters: ignored (one pass); part of the router convention.
    bias: learned prior ``b_ij`` broadcastable to ``(..., n_in, n_out)``, or
      None for 0.

  Returns:
    ``(v, c)``: ``(..., n_out, d_out)`` and ``(..., n_in, n_out)``.
  """
  if isinstance(num_iters, bool) or not isinstance(num_iters, int):
    raise TypeError(
        f"num_iters must be a Python int (it is ignored; got {type(num_iters).__name__}); "
        "pass the prior by keyword: self_attention_routing(u_hat, bias=b).")
  if u_hat.ndim < 3:
    raise ValueError(
        f"u_hat must have shape (..., n_in, n_out, d_out); got shape {u_hat.shape}.")
  d_out = u_hat.shape[-1]
  total = jnp.sum(u_hat, axis=-3, keepdims=True)                  # (..., 1, n_out, d)
  agreement = jnp.sum(u_hat * total, axis=-1) / jnp.sqrt(jnp.asarray(d_out, u_hat.dtype))
  c = jax.nn.softmax(agreement, axis=-1)                            # (..., n_in, n_out)
  weights = c if bias is None else c + bias
  s = jnp.einsum("...ij,...ijd->...jd", weights, u_hat)
  return exp_squash(s), c
