"""Forward-mode autodiff through the capsule models: ``jax.jvp`` and ``jax.hessian``
(forward over reverse) of the losses in a few entries of DenseCaps' ``W``, the
rest held fixed, against central finite differences in float64.

The layers route in float32 whatever the compute dtype, so the differences
resolve the derivatives to about 1e-3; a missing or wrong tangent is off by far more.
"""
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from capsjax import CapsNet
from capsjax.layers import DenseCaps
from capsjax.models import EfficientCapsNet, capsule_loss

CONFIG = types.SimpleNamespace(recon_weight=0.0005)


@pytest.fixture
def x64():
  with jax.enable_x64(True):
    yield


def loss_of_w_entries(model, variables, images, labels, index):
  """``theta -> mean loss`` with ``W.flat[index] = theta`` in the class capsules;
  the variables and images are arguments (not constants XLA would fold)."""
  batch = {"multi_hot": jax.nn.one_hot(labels, model.num_classes, dtype=images.dtype),
           "labels": labels[:, None], "components": images[:, None]}

  def loss(theta, variables, images):
    w = variables["params"]["digit_caps"]["W"]
    w = w.reshape(-1).at[index].set(theta).reshape(w.shape)
    params = {**variables["params"], "digit_caps": {**variables["params"]["digit_caps"], "W": w}}
    out = model.apply({**variables, "params": params}, images, labels[:, None])
    return jnp.mean(capsule_loss(out, batch, CONFIG)[0])

  theta = variables["params"]["digit_caps"]["W"].reshape(-1)[index]
  return loss, theta


def derivatives_and_differences(loss, theta, direction, variables, images, h=1e-2):
  """In one compiled program: the JVP of ``loss`` along ``direction`` and the Hessian
  (``jax.hessian``: forward over reverse), and their central differences from
  the values and reverse-mode gradients at ``theta +- h direction`` and
  ``theta +- h e_k``."""
  @jax.jit
  def run(theta, direction, variables, images):
    f = lambda t: loss(t, variables, images)
    tangent = jax.jvp(f, (theta,), (direction,))[1]
    hessian = jax.hessian(f)(theta)
    steps = h * jnp.concatenate([direction[None], jnp.eye(theta.size)])
    values, grads = jax.vmap(jax.value_and_grad(f))(
        theta + jnp.concatenate([steps, -steps]))
    n = len(steps)
    differences = (values[:n] - values[n:]) / (2 * h), (grads[:n] - grads[n:]) / (2 * h)
    return tangent, hessian, differences[0][0], differences[1][1:].T

  return run(theta, direction, variables, images)


def check_against_differences(tangent, hessian, tangent_fd, hessian_fd):
  scale = np.abs(hessian_fd).max()
  assert abs(tangent_fd) > 1e-4 and scale > 1e-4                # the checks have teeth
  np.testing.assert_allclose(tangent, tangent_fd, rtol=1e-2)
  np.testing.assert_allclose(hessian, hessian_fd, rtol=1e-2, atol=1e-3 * scale)


def float64_model(model, image_shape, batch_size):
  """Float64 variables and images. The models here use the native convolution
  (``conv_impl="xla"``), quicker to compile; ``theta`` lies downstream of it."""
  images = jax.random.uniform(jax.random.key(0), (batch_size, *image_shape), jnp.float64)
  variables = jax.jit(model.init)(jax.random.key(1), images)
  return jax.tree.map(lambda x: x.astype(jnp.float64), variables), images


def class_entries(w_shape, classes):
  """Flat indices of ``W[0, j, 0, :2]`` for each class ``j``: entries the loss
  feeds on (a capsule that is not a label barely moves the margin loss)."""
  return jnp.asarray([np.ravel_multi_index((0, j, 0, k), w_shape) for j in classes
                      for k in range(2)])


def test_capsnet_loss_jvp_and_hessian_match_finite_differences(x64):
  model = CapsNet(num_classes=4, routing_iters=2, dtype=jnp.float64, conv_impl="xla")
  variables, images = float64_model(model, (19, 19, 1), 2)       # 2x2x32 primary capsules
  labels = jnp.array([1, 3])
  index = class_entries(variables["params"]["digit_caps"]["W"].shape, (1, 3))
  loss, theta = loss_of_w_entries(model, variables, images, labels, index)
  direction = jnp.array([1.0, -0.5, 0.3, 0.8])

  check_against_differences(
      *derivatives_and_differences(loss, theta, direction, variables, images))


def test_efficient_capsnet_loss_jvp_and_hessian_match_finite_differences(x64):
  model = EfficientCapsNet(num_classes=4, dtype=jnp.float64, conv_impl="xla")
  variables, images = float64_model(model, (28, 28, 1), 2)
  labels = jnp.array([2, 0])
  index = class_entries(variables["params"]["digit_caps"]["W"].shape, (2, 0))
  loss, theta = loss_of_w_entries(model, variables, images, labels, index)
  direction = jnp.array([0.7, 1.0, -0.4, 0.6])

  check_against_differences(
      *derivatives_and_differences(loss, theta, direction, variables, images))


def test_dense_caps_jvp_and_linearize_are_the_bilinear_tangent():
  # u_hat = W_ij u_i is bilinear: its tangent is W du + dW u, exactly.
  rng = np.random.default_rng(0)
  u, du = (jnp.asarray(rng.normal(size=(3, 5, 4)), jnp.float32) for _ in range(2))
  layer = DenseCaps(num_caps=2, caps_dim=6, routing=lambda u_hat, n: (u_hat, u_hat[..., 0]))
  params = layer.init(jax.random.key(0), u)["params"]
  dw = jnp.asarray(rng.normal(size=params["W"].shape), jnp.float32)
  votes = lambda w, u: layer.apply({"params": {"W": w}}, u)[0]
  _, tangent = jax.jvp(votes, (params["W"], u), (dw, du))
  expected = (np.einsum("bik,ijdk->bijd", du, params["W"])
              + np.einsum("bik,ijdk->bijd", u, dw))
  np.testing.assert_allclose(tangent, expected, rtol=1e-5, atol=1e-5)
  _, linear = jax.linearize(votes, params["W"], u)
  np.testing.assert_allclose(linear(dw, du), expected, rtol=1e-5, atol=1e-5)
  jacobian = jax.jacfwd(votes, argnums=1)(params["W"], u)          # (3, 5, 2, 6, 3, 5, 4)
  np.testing.assert_allclose(jacobian, jax.jacrev(votes, argnums=1)(params["W"], u),
                             rtol=1e-5, atol=1e-6)
