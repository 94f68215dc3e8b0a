"""The im2col convolution equals lax.conv_general_dilated in value and gradients."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from capsjax.conv import conv2d, default_conv_impl, depthwise_conv2d


@pytest.mark.parametrize("shape,kernel,stride", [
    pytest.param((2, 20, 20, 16), (9, 9, 16, 24), 2, marks=pytest.mark.slow),  # PrimaryCaps-like
    pytest.param((2, 28, 28, 1), (9, 9, 1, 8), 1, marks=pytest.mark.slow),     # Conv1-like
    ((3, 11, 13, 4), (3, 5, 4, 6), 3),      # odd sizes
    ((2, 10, 10, 3), (9, 9, 3, 5), 2),      # one window, not the whole input
])
def test_im2col_equals_xla_conv(shape, kernel, stride):
  kx, kk, kc = jax.random.split(jax.random.key(0), 3)
  x = jax.random.normal(kx, shape)
  w = jax.random.normal(kk, kernel) * 0.1
  y_xla = conv2d(x, w, stride, "xla")
  y_col = conv2d(x, w, stride, "im2col")
  assert y_col.shape == y_xla.shape
  np.testing.assert_allclose(y_col, y_xla, rtol=1e-4, atol=1e-4)

  cot = jax.random.normal(kc, y_xla.shape)
  loss = lambda impl: lambda x, w: jnp.sum(conv2d(x, w, stride, impl) * cot)
  gx_xla, gw_xla = jax.grad(loss("xla"), argnums=(0, 1))(x, w)
  gx_col, gw_col = jax.grad(loss("im2col"), argnums=(0, 1))(x, w)
  np.testing.assert_allclose(gx_col, gx_xla, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(gw_col, gw_xla, rtol=1e-4, atol=1e-3)


def test_auto_choice():
  assert default_conv_impl("cpu") == "im2col"
  assert default_conv_impl("gpu") == "xla"
  assert default_conv_impl("tpu") == "xla"


def test_bad_arguments_are_clear():
  with pytest.raises(ValueError, match="impl"):
    conv2d(jnp.zeros((1, 9, 9, 1)), jnp.zeros((3, 3, 1, 1)), impl="fast")
  with pytest.raises(ValueError, match="matching C"):
    conv2d(jnp.zeros((1, 9, 9, 2)), jnp.zeros((3, 3, 1, 1)))


@pytest.mark.parametrize("shape,kernel,stride", [
    ((2, 9, 9, 128), (9, 9, 1, 128), 1),    # Efficient-CapsNet's primary capsules
    ((3, 11, 13, 4), (3, 5, 1, 4), 2),      # odd sizes
    ((2, 10, 11, 4), (9, 9, 1, 4), 3),      # one window, not the whole input
])
def test_depthwise_im2col_equals_xla_conv(shape, kernel, stride):
  kx, kk, kc = jax.random.split(jax.random.key(1), 3)
  x = jax.random.normal(kx, shape)
  w = jax.random.normal(kk, kernel) * 0.1
  y_xla = depthwise_conv2d(x, w, stride, "xla")
  y_col = depthwise_conv2d(x, w, stride, "im2col")
  assert y_col.shape == y_xla.shape
  np.testing.assert_allclose(y_col, y_xla, rtol=1e-4, atol=1e-5)
  # Reference: each channel convolved alone, in NumPy.
  xn, wn = np.asarray(x, np.float64), np.asarray(w, np.float64)
  kh, kw = kernel[:2]
  out_h, out_w = y_xla.shape[1:3]
  ref = np.zeros(y_xla.shape)
  for i in range(out_h):
    for j in range(out_w):
      window = xn[:, i * stride:i * stride + kh, j * stride:j * stride + kw, :]
      ref[:, i, j, :] = np.einsum("bhwc,hwc->bc", window, wn[:, :, 0, :])
  np.testing.assert_allclose(y_col, ref, rtol=1e-4, atol=1e-5)
  cot = jax.random.normal(kc, y_xla.shape)
  loss = lambda impl: lambda x, w: jnp.sum(depthwise_conv2d(x, w, stride, impl) * cot)
  for a, b in zip(jax.grad(loss("xla"), argnums=(0, 1))(x, w),
                  jax.grad(loss("im2col"), argnums=(0, 1))(x, w)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
