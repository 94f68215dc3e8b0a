"""Classification metrics on capsule lengths, as pure ``jax.numpy`` functions."""
from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["label_hits", "strict_correct", "per_digit_correct"]


def label_hits(lengths: jax.Array, labels: jax.Array) -> jax.Array:
  """Which true labels are among the ``K`` longest capsules.

  Args:
    lengths: capsule lengths ``(batch, num_classes)``.
    labels: int ``(batch, K)``, the true classes (distinct within a row).

  Returns:
    bool ``(batch, K)``.
  """
  _, top = jax.lax.top_k(lengths, labels.shape[-1])
  return jnp.any(labels[:, :, None] == top[:, None, :], axis=-1)


def strict_correct(lengths: jax.Array, labels: jax.Array) -> jax.Array:
  """1.0 where the ``K`` longest capsules are exactly the ``K`` labels (as a set).

  For ``K = 1`` this is ordinary accuracy; for MultiMNIST (``K = 2``) it is the
  official metric. Returns float32 ``(batch,)``.
  """
  return jnp.all(label_hits(lengths, labels), axis=-1).astype(jnp.float32)


def per_digit_correct(lengths: jax.Array, labels: jax.Array) -> jax.Array:
  """Fraction of the ``K`` labels found among the ``K`` longest capsules, ``(batch,)``."""
  return jnp.mean(label_hits(lengths, labels).astype(jnp.float32), axis=-1)
