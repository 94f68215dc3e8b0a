"""CapsNet: exact parameter counts of the paper, shapes, masking, dtypes."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from capsjax import CapsNet
from capsjax.layers import DenseCaps
from capsjax.routing import dynamic_routing


def n_params(model, hw):
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, hw, hw, 1))))
  assert set(variables) == {"params"}  # routing logits are not state
  return sum(x.size for x in jax.tree.leaves(variables["params"]))


def test_parameter_counts_equal_the_paper():
  # Conv1: 9*9*256 + 256; PrimaryCaps: 9*9*256*256 + 256; DigitCaps: 1152*10*8*16.
  assert n_params(CapsNet(use_decoder=False), 28) == 6_804_224
  # + decoder 160*512+512 + 512*1024+1024 + 1024*784+784.
  assert n_params(CapsNet(), 28) == 8_215_568
  assert n_params(CapsNet(num_reconstructions=2), 36) == 11_361_808


@pytest.fixture(scope="module")
def small_run():
  model = CapsNet(routing_iters=3, num_reconstructions=2)
  images = jax.random.uniform(jax.random.key(0), (3, 28, 28, 1))
  params = model.init(jax.random.key(1), images)["params"]
  return model, params, images


def test_output_shapes_and_dtypes(small_run):
  model, params, images = small_run
  out = model.apply({"params": params}, images)
  chex.assert_shape(out.lengths, (3, 10))
  chex.assert_shape(out.digit_caps, (3, 10, 16))
  chex.assert_shape(out.coupling, (3, 1152, 10))
  chex.assert_shape(out.reconstructions, (3, 2, 28, 28, 1))
  chex.assert_type([out.lengths, out.digit_caps, out.reconstructions], jnp.float32)
  np.testing.assert_allclose(out.lengths, jnp.linalg.norm(out.digit_caps, axis=-1), rtol=1e-5)
  assert np.all((out.reconstructions >= 0) & (out.reconstructions <= 1))
  # Evaluation masks with the two longest capsules.
  np.testing.assert_array_equal(
      np.sort(out.masked_labels, -1), np.sort(np.argsort(-out.lengths, -1)[:, :2], -1))


def test_reconstruction_uses_only_the_masked_capsule(small_run):
  model, params, images = small_run
  labels = jnp.array([[1, 7], [0, 3], [9, 9]])
  out = model.apply({"params": params}, images, labels)
  np.testing.assert_array_equal(out.masked_labels, labels)
  dec = {"params": params["decoder"]}
  from capsjax.layers import Decoder
  for b in range(3):
    for k in range(2):
      masked = np.zeros((10, 16), np.float32)
      masked[labels[b, k]] = out.digit_caps[b, labels[b, k]]
      ref = Decoder(28, 28).apply(dec, jnp.asarray(masked)[None])[0]
      np.testing.assert_allclose(out.reconstructions[b, k], ref, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(out.reconstructions[2, 0], out.reconstructions[2, 1])


def test_digit_caps_are_routing_of_the_primary_predictions(small_run):
  model, params, images = small_run
  out, state = model.apply({"params": params}, images, capture_intermediates=True,
                           mutable=["intermediates"])
  u = state["intermediates"]["primary_caps"]["__call__"][0]
  chex.assert_shape(u, (3, 1152, 8))
  u_hat = np.einsum("bik,ijdk->bijd", np.asarray(u), np.asarray(params["digit_caps"]["W"]))
  v, c = dynamic_routing(jnp.asarray(u_hat), 3)
  np.testing.assert_allclose(out.digit_caps, v, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(out.coupling, c, rtol=1e-4, atol=1e-6)


def test_dense_caps_gradients_are_the_transposed_products():
  # A router that passes u_hat through: loss = sum(G * u_hat), so by hand
  # dL/dW_ijdk = sum_b G_bijd u_bik and dL/du_bik = sum_jd G_bijd W_ijdk.
  rng = np.random.default_rng(0)
  u = rng.normal(size=(3, 5, 4)).astype(np.float32)
  g = rng.normal(size=(3, 5, 2, 6)).astype(np.float32)
  layer = DenseCaps(num_caps=2, caps_dim=6, routing=lambda u_hat, n: (u_hat, u_hat[..., 0]))
  params = layer.init(jax.random.key(0), jnp.asarray(u))["params"]
  w = np.asarray(params["W"])
  chex.assert_shape(w, (5, 2, 6, 4))
  loss = lambda p, u: jnp.sum(layer.apply({"params": p}, u)[0] * g)
  dp, du = jax.jit(jax.grad(loss, argnums=(0, 1)))(params, jnp.asarray(u))
  np.testing.assert_allclose(dp["W"], np.einsum("bijd,bik->ijdk", g, u), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(du, np.einsum("bijd,ijdk->bik", g, w), rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_bf16_compute_keeps_float32_params_and_outputs(small_run):
  _, params, images = small_run
  model = CapsNet(dtype=jnp.bfloat16, num_reconstructions=2)
  out = model.apply({"params": params}, images)
  chex.assert_type([out.lengths, out.reconstructions], jnp.float32)
  ref = CapsNet(num_reconstructions=2).apply({"params": params}, images)
  np.testing.assert_allclose(out.lengths, ref.lengths, atol=3e-2)


@pytest.mark.slow
def test_without_decoder_and_bad_images():
  model = CapsNet(use_decoder=False)
  images = jnp.zeros((2, 28, 28, 1))
  out = model.apply(model.init(jax.random.key(0), images), images)
  assert out.reconstructions is None
  with pytest.raises(ValueError, match="channel"):
    model.init(jax.random.key(0), jnp.zeros((2, 28, 28)))


@pytest.mark.slow
def test_digit_caps_init_sets_the_stddev_of_w():
  model = CapsNet(digit_caps_init=0.01, use_decoder=False)
  params = model.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))["params"]
  w = np.asarray(params["digit_caps"]["W"])
  assert w.shape == (1152, 10, 16, 8)
  # As TF's: a normal of stddev 0.01 truncated at 2 sigma, whose own stddev is
  # 0.8796 x 0.01.
  assert 0.0085 < w.std() < 0.0091
  assert 0.0195 < np.abs(w).max() <= 0.02


def test_primary_caps_are_a_squashed_scaled_convolution():
  # u = squash(scale * conv(x, W) + b), capsules grouped (type, dim) along the
  # channels; scale 1 is the paper's, 1/32 the official code's. Reference:
  # the convolution and squash (Eq. 1) in NumPy.
  from capsjax.layers import PrimaryCaps
  x = np.asarray(jax.random.uniform(jax.random.key(0), (2, 13, 13, 3)))
  layer = PrimaryCaps(num_types=4, caps_dim=5, kernel_size=5, stride=2)
  params = layer.init(jax.random.key(1), jnp.asarray(x))["params"]
  kernel, bias = (np.asarray(params["Conv_0"][k], np.float64) for k in ("kernel", "bias"))
  patches = np.stack([x[:, i:i + 5, j:j + 5, :] for i in range(0, 9, 2) for j in range(0, 9, 2)],
                     axis=1)                                    # (2, 25 positions, 5, 5, 3)
  conv = np.einsum("bphwc,hwco->bpo", patches, kernel)          # (2, 25, 4 * 5)
  for scale in (1.0, 1 / 32):
    s = (scale * conv + bias).reshape(2, 25 * 4, 5)
    norm = np.linalg.norm(s, axis=-1, keepdims=True)
    u = layer.clone(scale=scale).apply({"params": params}, jnp.asarray(x))
    chex.assert_shape(u, (2, 100, 5))
    np.testing.assert_allclose(u, norm**2 / (1 + norm**2) * s / norm, rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_official_primary_scale_starts_the_capsules_unsaturated():
  # On MNIST-like input the official 1/32 keeps the initial primary capsules
  # short; the paper's plain convolution (the default) starts them at length
  # ~1, squash's flat end.
  from capsjax.layers import OFFICIAL_PRIMARY_CAPS_SCALE
  images = jnp.zeros((4, 28, 28, 1)).at[:, 6:22, 12:16].set(1.0)
  def primary_lengths(**kwargs):
    model = CapsNet(use_decoder=False, **kwargs)
    variables = model.init(jax.random.key(0), images)
    _, state = model.apply(variables, images, capture_intermediates=True,
                           mutable=["intermediates"])
    return np.linalg.norm(state["intermediates"]["primary_caps"]["__call__"][0], axis=-1)
  assert OFFICIAL_PRIMARY_CAPS_SCALE == 1 / 32
  official = primary_lengths(primary_caps_scale=OFFICIAL_PRIMARY_CAPS_SCALE)
  assert official.mean() < 0.5 < 0.9 < primary_lengths().mean()
