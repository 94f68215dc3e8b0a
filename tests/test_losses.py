"""Margin and reconstruction losses against hand-computed cases."""
import jax.numpy as jnp
import numpy as np
import pytest

from capsjax.losses import margin_loss, reconstruction_loss


def test_margin_loss_hand_computed():
  lengths = jnp.array([[0.95, 0.05, 0.5], [0.3, 0.8, 0.0]])
  targets = jnp.array([[1.0, 0.0, 0.0], [1.0, 1.0, 0.0]])
  # ex 0: present 0.95 > 0.9 -> 0; absent 0.05 < 0.1 -> 0; absent 0.5 -> 0.5*0.4^2 = 0.08
  # ex 1: present 0.3 -> 0.6^2 = 0.36; present 0.8 -> 0.1^2 = 0.01; absent 0 -> 0
  np.testing.assert_allclose(margin_loss(lengths, targets), [0.08, 0.37], rtol=1e-6)


def test_margin_loss_constants():
  lengths = jnp.array([[0.5, 0.5]])
  targets = jnp.array([[1.0, 0.0]])
  got = margin_loss(lengths, targets, m_plus=0.8, m_minus=0.2, lam=1.0)
  np.testing.assert_allclose(got, [0.3 ** 2 + 0.3 ** 2], rtol=1e-6)


def test_margin_loss_shape_mismatch_is_clear():
  with pytest.raises(ValueError, match="one_hot"):
    margin_loss(jnp.zeros((2, 10)), jnp.zeros((2,)))


def test_reconstruction_loss_is_per_example_sse():
  recon = jnp.array([[[0.5, 1.0]], [[0.0, 0.0]]])
  target = jnp.array([[0.0, 1.0], [1.0, 1.0]])
  np.testing.assert_allclose(reconstruction_loss(recon, target), [0.25, 2.0])
