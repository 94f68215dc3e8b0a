"""Loss functions of the capsule papers as pure ``jax.numpy`` functions (no Flax).

  margin_loss, reconstruction_loss   Sabour, Frosst & Hinton (2017), Eq. 4 and section 4.1
  spread_loss, spread_margin         Hinton, Sabour & Frosst (2018), section 3.1
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["margin_loss", "reconstruction_loss", "spread_loss", "spread_margin"]


def margin_loss(
    lengths: jax.Array,
    targets: jax.Array,
    m_plus: float = 0.9,
    m_minus: float = 0.1,
    lam: float = 0.5,
) -> jax.Array:
  """Margin loss, Eq. 4, summed over classes.

  ``L_k = T_k max(0, m+ - |v_k|)^2 + lam (1 - T_k) max(0, |v_k| - m-)^2``

  Args:
    lengths: capsule lengths ``(batch, num_classes)``.
    targets: multi-hot ``(batch, num_classes)``; one-hot for MNIST, two-hot
      for MultiMNIST.
    m_plus, m_minus, lam: the paper's constants (0.9, 0.1, 0.5).

  Returns:
    Per-example loss ``(batch,)``.
  """
  if lengths.shape != targets.shape:
    raise ValueError(
        f"lengths {lengths.shape} and targets {targets.shape} must have the same "
        "shape (batch, num_classes); pass multi-hot targets, e.g. "
        "jax.nn.one_hot(labels, num_classes).")
  targets = targets.astype(lengths.dtype)
  present = targets * jnp.square(jnp.maximum(0.0, m_plus - lengths))
  absent = lam * (1.0 - targets) * jnp.square(jnp.maximum(0.0, lengths - m_minus))
  return jnp.sum(present + absent, axis=-1)


def reconstruction_loss(recon: jax.Array, target: jax.Array) -> jax.Array:
  """Sum of squared errors per example.

  Args:
    recon: reconstructions ``(batch, ...)``, e.g. ``(batch, H, W, 1)``.
    target: images with the same number of elements per example.

  Returns:
    Per-example SSE ``(batch,)``.
  """
  recon = recon.reshape(recon.shape[0], -1)
  target = target.reshape(target.shape[0], -1).astype(recon.dtype)
  if recon.shape != target.shape:
    raise ValueError(
        f"recon has {recon.shape[1]} values per example but target has "
        f"{target.shape[1]}; reconstruct at the input resolution.")
  return jnp.sum(jnp.square(recon - target), axis=-1)


def spread_loss(activations: jax.Array, labels: jax.Array, margin) -> jax.Array:
  """Spread loss: ``L = sum_{i != t} max(0, m - (a_t - a_i))^2``, per example.

  Args:
    activations: class activations ``(batch, num_classes)``.
    labels: int ``(batch,)``, the target class t.
    margin: ``m``, a float or a scalar array (see :func:`spread_margin`).

  Returns:
    Per-example loss ``(batch,)``.
  """
  if activations.ndim != 2 or labels.shape != activations.shape[:1]:
    raise ValueError(
        f"activations must be (batch, num_classes) and labels (batch,) ints; got "
        f"{activations.shape} and {labels.shape}.")
  target = jnp.take_along_axis(activations, labels[:, None].astype(jnp.int32), axis=-1)
  hinge = jnp.square(jnp.maximum(0.0, margin - (target - activations)))
  wrong = 1.0 - jax.nn.one_hot(labels, activations.shape[-1], dtype=activations.dtype)
  return jnp.sum(wrong * hinge, axis=-1)


def spread_margin(step, ramp_steps: int, start: float = 0.2, end: float = 0.9) -> jax.Array:
  """The paper's margin schedule: ``start`` at step 0, rising linearly to ``end``
  at ``ramp_steps``, then constant. (The official code's rise is a sigmoid of
  ``step / 50000 - 4``, from 0.2 to 0.99.)"""
  progress = jnp.clip(jnp.asarray(step, jnp.float32) / max(ramp_steps, 1), 0.0, 1.0)
  return start + (end - start) * progress
