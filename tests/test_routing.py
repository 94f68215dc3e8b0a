"""squash, safe_norm and dynamic_routing against the paper's formulas in NumPy."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from capsjax.routing import dynamic_routing, safe_norm, squash


def np_squash(s):
  n2 = np.sum(s * s, axis=-1, keepdims=True)
  n = np.sqrt(n2)
  with np.errstate(invalid="ignore", divide="ignore"):
    v = n2 / (1 + n2) * s / n
  return np.nan_to_num(v)


def np_procedure1(u_hat, r):
  """Procedure 1 of the paper, literally, for one example u_hat (n_in, n_out, d)."""
  n_in, n_out, _ = u_hat.shape
  b = np.zeros((n_in, n_out))
  for _ in range(r):
    c = np.exp(b) / np.sum(np.exp(b), axis=1, keepdims=True)   # softmax over parents j
    s = np.einsum("ij,ijd->jd", c, u_hat)
    v = np_squash(s)
    b = b + np.einsum("ijd,jd->ij", u_hat, v)
  return v, c


def test_squash_hand_computed():
  # |s| = 5 -> length 25/26, direction (3, 4)/5.
  v = squash(jnp.array([3.0, 4.0]))
  np.testing.assert_allclose(v, np.array([3.0, 4.0]) / 5 * 25 / 26, rtol=1e-6)
  # |s| = 1 -> length 1/2.
  np.testing.assert_allclose(squash(jnp.array([0.0, 0.0, 1.0])), [0, 0, 0.5], rtol=1e-6)


def test_squash_zero_is_exactly_zero_with_finite_gradient():
  z = jnp.zeros((2, 3, 8))
  assert np.all(np.asarray(squash(z)) == 0)
  g = jax.grad(lambda s: jnp.sum(squash(s)))(z)
  assert np.all(np.isfinite(g))
  jac = jax.jacobian(squash)(jnp.zeros(4))
  np.testing.assert_array_equal(jac, np.zeros((4, 4)))  # v ~ s|s| near 0


def test_safe_norm_matches_numpy_and_has_finite_gradient_at_zero():
  s = np.random.default_rng(0).normal(size=(5, 7)).astype(np.float32)
  np.testing.assert_allclose(safe_norm(s), np.linalg.norm(s, axis=-1), rtol=1e-6)
  assert safe_norm(jnp.zeros(3)) == 0
  g = jax.grad(lambda s: safe_norm(s))(jnp.zeros(3))
  assert np.all(np.isfinite(g))
  # Away from zero the gradient is s / |s|.
  x = jnp.array([3.0, 4.0])
  np.testing.assert_allclose(jax.grad(safe_norm)(x), [0.6, 0.8], rtol=1e-6)


def test_squash_properties():
  rng = np.random.default_rng(1)
  s = rng.normal(size=(100, 16)).astype(np.float32) * rng.uniform(0, 10, size=(100, 1))
  v = np.asarray(squash(jnp.asarray(s)))
  np.testing.assert_allclose(v, np_squash(s), rtol=1e-5, atol=1e-7)
  lengths = np.linalg.norm(v, axis=-1)
  assert np.all(lengths < 1)
  cos = np.sum(v * s, -1) / (lengths * np.linalg.norm(s, axis=-1))
  np.testing.assert_allclose(cos, 1, rtol=1e-5)
  # Length is monotone in the input length.
  scales = np.linspace(0, 20, 200, dtype=np.float32)
  lens = np.linalg.norm(np.asarray(squash(scales[:, None] * np.ones((1, 4), np.float32))), axis=-1)
  assert np.all(np.diff(lens) > 0)


@pytest.mark.parametrize("r", [1, 2, 3, 5])
def test_dynamic_routing_matches_numpy_procedure1(r):
  rng = np.random.default_rng(r)
  u_hat = rng.normal(size=(4, 30, 10, 16)).astype(np.float32) * 0.3
  v, c = dynamic_routing(jnp.asarray(u_hat), r)
  chex.assert_shape(v, (4, 10, 16))
  chex.assert_shape(c, (4, 30, 10))
  chex.assert_type([v, c], jnp.float32)
  for b in range(4):
    v_ref, c_ref = np_procedure1(u_hat[b].astype(np.float64), r)
    np.testing.assert_allclose(v[b], v_ref, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(c[b], c_ref, rtol=1e-4, atol=1e-6)


def test_coupling_sums_to_one_over_parents():
  u_hat = jax.random.normal(jax.random.key(0), (2, 50, 10, 8))
  _, c = dynamic_routing(u_hat, 3)
  np.testing.assert_allclose(jnp.sum(c, axis=-1), 1.0, rtol=1e-5)
  assert not np.allclose(jnp.sum(c, axis=-2), 1.0)  # not normalised over children


def test_one_iteration_is_squash_of_uniform_sum():
  u_hat = np.random.default_rng(3).normal(size=(3, 20, 10, 16)).astype(np.float32)
  v, c = dynamic_routing(jnp.asarray(u_hat), 1)
  np.testing.assert_allclose(c, np.full((3, 20, 10), 0.1), rtol=1e-6)
  np.testing.assert_allclose(v, np_squash(u_hat.sum(axis=1) / 10), rtol=1e-5, atol=1e-7)


def test_routing_is_per_example_logits_restart_every_call():
  u_hat = jax.random.normal(jax.random.key(1), (2, 16, 4, 8))
  v_pair, _ = dynamic_routing(u_hat, 3)
  v0, _ = dynamic_routing(u_hat[:1], 3)
  v1, _ = dynamic_routing(u_hat[1:], 3)
  np.testing.assert_allclose(v_pair, jnp.concatenate([v0, v1]), rtol=1e-6)
  v_again, _ = dynamic_routing(u_hat, 3)
  np.testing.assert_array_equal(v_pair, v_again)


@pytest.mark.slow
def test_leading_dims_and_vmap_jit_grad_agree_with_eager():
  u_hat = jax.random.normal(jax.random.key(2), (2, 3, 12, 5, 4)) * 0.5
  v, c = dynamic_routing(u_hat, 3)
  chex.assert_shape(v, (2, 3, 5, 4))
  chex.assert_shape(c, (2, 3, 12, 5))
  v_jit, c_jit = jax.jit(dynamic_routing, static_argnums=1)(u_hat, 3)
  np.testing.assert_allclose(v_jit, v, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(c_jit, c, rtol=1e-5, atol=1e-7)
  v_vmap, _ = jax.vmap(lambda u: dynamic_routing(u, 3))(u_hat)
  np.testing.assert_allclose(v_vmap, v, rtol=1e-5, atol=1e-7)

  loss = lambda u: jnp.sum(dynamic_routing(u, 3)[0] ** 2)
  g = jax.grad(loss)(u_hat)
  g_jit = jax.jit(jax.grad(loss))(u_hat)
  assert np.all(np.isfinite(g))
  np.testing.assert_allclose(g_jit, g, rtol=1e-4, atol=1e-6)
  # Finite differences along a random direction.
  d = jax.random.normal(jax.random.key(3), u_hat.shape)
  eps = 1e-3
  u64 = np.asarray(u_hat, np.float64)
  with jax.enable_x64():
    fd = (loss(jnp.asarray(u64 + eps * np.asarray(d, np.float64)))
          - loss(jnp.asarray(u64 - eps * np.asarray(d, np.float64)))) / (2 * eps)
  np.testing.assert_allclose(jnp.sum(g * d), fd, rtol=2e-3)


def test_gradient_finite_at_zero_predictions():
  g = jax.grad(lambda u: jnp.sum(dynamic_routing(u, 3)[0]))(jnp.zeros((2, 8, 10, 16)))
  assert np.all(np.isfinite(g))


def test_stop_gradient_inner_keeps_values_changes_gradients():
  u_hat = jax.random.normal(jax.random.key(4), (2, 12, 5, 4))
  v_a, c_a = dynamic_routing(u_hat, 3)
  v_b, c_b = dynamic_routing(u_hat, 3, stop_gradient_inner=True)
  np.testing.assert_allclose(v_a, v_b, rtol=1e-6)
  np.testing.assert_allclose(c_a, c_b, rtol=1e-6)
  loss = lambda u, sg: jnp.sum(dynamic_routing(u, 3, stop_gradient_inner=sg)[0] ** 2)
  g_a, g_b = jax.grad(loss)(u_hat, False), jax.grad(loss)(u_hat, True)
  assert not np.allclose(g_a, g_b)
  # With stopped inner gradients, the gradient is that of squash(sum c u_hat)
  # with c held constant.
  c_const = jax.lax.stop_gradient(c_b)
  ref = jax.grad(lambda u: jnp.sum(squash(jnp.einsum("bij,bijd->bjd", c_const, u)) ** 2))(u_hat)
  np.testing.assert_allclose(g_b, ref, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("bad", [0, -1, 2.0, True, "3"])
def test_num_iters_validation(bad):
  with pytest.raises(ValueError, match="num_iters"):
    dynamic_routing(jnp.zeros((2, 3, 4)), bad)
