"""2-D convolution with one backend-dependent choice of formulation.

On XLA:CPU the input-gradient of a large strided convolution (PrimaryCaps:
9x9, stride 2, 256 -> 256 channels) is pathologically slow (seconds per batch).
Written as patch extraction (strided slices) followed by a single matrix
multiply ("im2col"), the forward and both gradients become plain GEMMs, which
XLA:CPU runs near the machine's matmul peak. On GPU/TPU the native convolution
(cuDNN, TPU conv units) is kept.

The choice is made here, once: :func:`conv2d` with ``impl="auto"``.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["conv2d", "depthwise_conv2d", "windows", "fold_windows", "default_conv_impl",
           "CONV_IMPLS"]

CONV_IMPLS = ("auto", "xla", "im2col")


def default_conv_impl(backend: str | None = None) -> str:
  """The convolution formulation used for ``impl="auto"`` on ``backend``."""
  backend = backend or jax.default_backend()
  return "im2col" if backend == "cpu" else "xla"


def _extract_patches(x: jax.Array, kh: int, kw: int, stride: int) -> jax.Array:
  """``(B, H, W, C)`` -> ``(B, H', W', kh * kw * C)`` for a VALID convolution.

  The feature order is ``(ky, kx, c)``, matching a ``(kh, kw, C, O)`` kernel
  reshaped to ``(kh * kw * C, O)``.
  """
  b, h, w, c = x.shape
  out_h = (h - kh) // stride + 1
  out_w = (w - kw) // stride + 1
  if out_h == out_w == 1:
    # One window (e.g. a kernel as large as the input): the patch is the
    # window itself in (ky, kx, c) order, a reshape rather than kh * kw slices.
    return x[:, :kh, :kw, :].reshape(b, 1, 1, kh * kw * c)
  taps = [
      x[:, ky:ky + stride * (out_h - 1) + 1:stride,
        kx:kx + stride * (out_w - 1) + 1:stride, :]
      for ky in range(kh) for kx in range(kw)
  ]
  patches = jnp.stack(taps, axis=3)  # (B, H', W', kh * kw, C)
  return patches.reshape(*patches.shape[:3], -1)


def windows(x: jax.Array, kernel_size: int, stride: int = 1) -> jax.Array:
  """The windows of a VALID convolution: ``(B, H, W, ...)`` -> ``(B, H', W', k, k, ...)``.

  The same strided slices as :func:`conv2d`'s im2col; the trailing axes (e.g.
  capsule types and poses) are carried along.
  """
  b, h, w, *rest = x.shape
  k = kernel_size
  if h < k or w < k:
    raise ValueError(f"input {h}x{w} is smaller than the {k}x{k} window.")
  patches = _extract_patches(x.reshape(b, h, w, -1), k, k, stride)
  return patches.reshape(*patches.shape[:3], k, k, *rest)


def fold_windows(entries: jax.Array, input_size: tuple[int, int], stride: int = 1,
                 combine: str = "add") -> jax.Array:
  """The transpose of :func:`windows` (col2im): ``(B, H', W', k, k, ...)`` -> ``(B, H, W, ...)``.

  Each input position gets the sum (``combine="add"``) or the max (``"max"``)
  of the window entries that read it; positions no window reads get 0 (add)
  or -inf (max).
  """
  if combine not in ("add", "max"):
    raise ValueError(f'combine must be "add" or "max", got {combine!r}.')
  _, ho, wo, kh, kw, *rest = entries.shape
  h, w = input_size
  fill = jnp.asarray(0.0 if combine == "add" else -jnp.inf, entries.dtype)
  out = None
  for ky in range(kh):
    for kx in range(kw):
      # Each tap lands on a strided sub-grid: interior padding places it (no scatter).
      config = [(0, 0, 0), (ky, h - ky - stride * (ho - 1) - 1, stride - 1),
                (kx, w - kx - stride * (wo - 1) - 1, stride - 1)] + [(0, 0, 0)] * len(rest)
      tap = jax.lax.pad(entries[:, :, :, ky, kx], fill, config)
      out = tap if out is None else (out + tap if combine == "add" else jnp.maximum(out, tap))
  return out


def _checked(x: jax.Array, kernel: jax.Array, impl: str, shapes_match: bool,
             kernel_layout: str) -> str:
  """Checks the arguments of a convolution; returns the formulation to use."""
  if impl not in CONV_IMPLS:
    raise ValueError(f"impl must be one of {CONV_IMPLS}, got {impl!r}.")
  if kernel.ndim != 4 or not shapes_match:
    raise ValueError(
        f"expected x (B, H, W, C) and kernel {kernel_layout} with matching C; got "
        f"x {x.shape} and kernel {kernel.shape}.")
  kh, kw = kernel.shape[:2]
  if x.shape[1] < kh or x.shape[2] < kw:
    raise ValueError(
        f"input {x.shape[1]}x{x.shape[2]} is smaller than the {kh}x{kw} kernel.")
  return default_conv_impl() if impl == "auto" else impl


def conv2d(
    x: jax.Array,
    kernel: jax.Array,
    stride: int = 1,
    impl: str = "auto",
) -> jax.Array:
  """VALID 2-D convolution, NHWC input and HWIO kernel.

  Args:
    x: input ``(batch, H, W, C_in)``.
    kernel: ``(kh, kw, C_in, C_out)``.
    stride: the same stride in both spatial directions.
    impl: ``"auto"`` (im2col on CPU, native elsewhere), ``"xla"`` for
      ``lax.conv_general_dilated`` or ``"im2col"``.

  Returns:
    ``(batch, (H - kh) // stride + 1, (W - kw) // stride + 1, C_out)``, in
    the dtype of ``x``.
  """
  impl = _checked(x, kernel, impl, x.ndim == kernel.ndim == 4 and x.shape[-1] == kernel.shape[2],
                  "(kh, kw, C, O)")
  kh, kw, c_in, c_out = kernel.shape
  if impl == "xla":
    return jax.lax.conv_general_dilated(
        x, kernel, window_strides=(stride, stride), padding="VALID",
        dimension_numbers=("NHWC", "HWIO", "NHWC"))
  patches = _extract_patches(x, kh, kw, stride)
  return jnp.dot(patches, kernel.reshape(kh * kw * c_in, c_out))


def depthwise_conv2d(
    x: jax.Array,
    kernel: jax.Array,
    stride: int = 1,
    impl: str = "auto",
) -> jax.Array:
  """VALID depthwise 2-D convolution (one filter per channel), NHWC input.

  Args:
    x: input ``(batch, H, W, C)``.
    kernel: ``(kh, kw, 1, C)``, as TF/Keras store a ``groups=C`` kernel.
    stride: the same stride in both spatial directions.
    impl: as for :func:`conv2d`; ``"im2col"`` multiplies the patches by the
      kernel and sums over the taps.

  Returns:
    ``(batch, (H - kh) // stride + 1, (W - kw) // stride + 1, C)``.
  """
  impl = _checked(x, kernel, impl, x.ndim == kernel.ndim == 4 and kernel.shape[2] == 1
                  and x.shape[-1] == kernel.shape[3], "(kh, kw, 1, C)")
  kh, kw, _, channels = kernel.shape
  if impl == "xla":
    return jax.lax.conv_general_dilated(
        x, kernel, window_strides=(stride, stride), padding="VALID",
        dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=channels)
  patches = _extract_patches(x, kh, kw, stride)               # (B, H', W', kh * kw * C)
  patches = patches.reshape(*patches.shape[:3], kh * kw, channels)
  return jnp.einsum("bhwtc,tc->bhwc", patches, kernel.reshape(kh * kw, channels))
