"""Efficient-CapsNet: exp_squash, self-attention routing against the paper's formulas
in NumPy, the 161,824 parameters, BatchNorm state, its augmentation."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from capsjax.data import augment
from capsjax.models import EfficientCapsNet
from capsjax.routing import ROUTERS, exp_squash, self_attention_routing
from capsjax.training import (
    Checkpointer, TrainConfig, init_state, make_mesh, make_model, make_optimizer,
    make_train_step, shard_batch, train_and_evaluate)


def np_self_attention(u_hat, bias):
  """Efficient-CapsNet Eq. 4-6 for one example, literally: the n_in x n_in agreement."""
  n_in, n_out, d = u_hat.shape
  v = np.zeros((n_out, d))
  c = np.zeros((n_in, n_out))
  agreement = np.zeros((n_in, n_out))
  for j in range(n_out):
    gram = u_hat[:, j] @ u_hat[:, j].T                           # (n_in, n_in)
    agreement[:, j] = gram.sum(axis=1) / np.sqrt(d)
  c = np.exp(agreement - agreement.max(1, keepdims=True))
  c /= c.sum(axis=1, keepdims=True)                              # softmax over parents
  for j in range(n_out):
    s = ((c[:, j] + bias[:, j])[:, None] * u_hat[:, j]).sum(0)
    n = np.linalg.norm(s)
    v[j] = (1 - np.exp(-n)) * s / n
  return v, c


def test_exp_squash_hand_computed():
  np.testing.assert_allclose(exp_squash(jnp.array([3.0, 4.0])),
                             (1 - np.exp(-5.0)) * np.array([0.6, 0.8]), rtol=1e-6)
  np.testing.assert_allclose(exp_squash(jnp.array([0.0, 0.0, 2.0])),
                             [0, 0, 1 - np.exp(-2.0)], rtol=1e-6)
  assert np.all(np.asarray(exp_squash(jnp.zeros((2, 8)))) == 0)
  jac = jax.jacobian(exp_squash)(jnp.zeros(4))
  np.testing.assert_array_equal(jac, np.eye(4))  # v = s (1 - |s|/2 + ...) near 0
  g = jax.grad(lambda s: jnp.sum(exp_squash(s)))(jnp.zeros((3, 5)))
  assert np.all(np.isfinite(g))


def test_self_attention_routing_matches_the_formula_in_numpy():
  u_hat = jax.random.normal(jax.random.key(0), (3, 16, 10, 16)) * 0.3
  bias = jax.random.normal(jax.random.key(1), (16, 10)) * 0.1
  v, c = self_attention_routing(u_hat, bias=bias)
  chex.assert_shape(v, (3, 10, 16))
  chex.assert_shape(c, (3, 16, 10))
  for b in range(3):
    ref_v, ref_c = np_self_attention(np.asarray(u_hat[b], np.float64), np.asarray(bias))
    np.testing.assert_allclose(v[b], ref_v, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(c[b], ref_c, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(np.sum(c, axis=-1), 1, rtol=1e-6)   # over the parents
  v0, _ = self_attention_routing(u_hat)                           # no bias: b = 0
  np.testing.assert_allclose(v0[0], np_self_attention(np.asarray(u_hat[0], np.float64),
                                                      np.zeros((16, 10)))[0], rtol=1e-4,
                             atol=1e-6)
  assert ROUTERS["self_attention"] is self_attention_routing
  with pytest.raises(TypeError, match="bias=b"):  # a prior passed by position is refused
    self_attention_routing(u_hat, bias)
  # Pure: jit, vmap and grad agree with the eager call.
  jitted = jax.jit(lambda u, b: self_attention_routing(u, bias=b))
  np.testing.assert_allclose(jitted(u_hat, bias)[0], v, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(jax.vmap(lambda u: self_attention_routing(u, bias=bias)[0])(u_hat),
                             v, rtol=1e-5, atol=1e-7)
  g = jax.grad(lambda u: jnp.sum(self_attention_routing(u, bias=bias)[0] ** 2))(u_hat)
  assert np.all(np.isfinite(g)) and np.any(g != 0)
  g0 = jax.grad(lambda u: jnp.sum(self_attention_routing(u)[0]))(jnp.zeros((2, 4, 3, 5)))
  assert np.all(np.isfinite(g0))


def test_parameter_count_is_the_papers():
  def count(model):
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1))))
    return (sum(x.size for x in jax.tree.leaves(variables["params"])),
            sum(x.size for x in jax.tree.leaves(variables["batch_stats"])))
  # 832 + 18,496 + 36,928 + 73,856 (convs) + 576 (BatchNorm scale, bias)
  # + 10,496 (depthwise) + 20,480 (W) + 160 (b); see the module docstring.
  assert count(EfficientCapsNet(use_decoder=False)) == (161_824, 576)
  # + decoder 160*512 + 512 + 512*1024 + 1024 + 1024*784 + 784.
  assert count(EfficientCapsNet())[0] == 161_824 + 1_411_344


def tiny(tmp_path, **overrides):
  values = dict(model="efficient_capsnet", dataset="mnist_augmented", batch_size=16, steps=4,
                eval_every=0, checkpoint_every=2, log_every=1, test_subset=32,
                eval_batch_size=16, data_source="bundled", workdir=str(tmp_path / "run"))
  return TrainConfig(**{**values, **overrides})


def test_batchnorm_normalises_with_the_batch_and_keeps_keras_running_statistics():
  from capsjax.layers import BatchNorm
  x = np.asarray(jax.random.normal(jax.random.key(0), (2, 3, 3, 4)) * 3 + 1, np.float64)
  layer = BatchNorm(momentum=0.9, epsilon=1e-3)
  variables = layer.init(jax.random.key(1), jnp.asarray(x, jnp.float32), train=True)
  np.testing.assert_array_equal(variables["batch_stats"]["var"], np.ones(4))  # init: no update
  y, new = layer.apply(variables, jnp.asarray(x, jnp.float32), train=True, mutable=["batch_stats"])
  mean, var = x.mean((0, 1, 2)), x.var((0, 1, 2))                   # 18 values per channel
  np.testing.assert_allclose(y, (x - mean) / np.sqrt(var + 1e-3), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(new["batch_stats"]["mean"], 0.1 * mean, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(new["batch_stats"]["var"], 0.9 + 0.1 * x.var((0, 1, 2), ddof=1),
                             rtol=1e-5)                              # Bessel: x 18 / 17
  flax_like = BatchNorm(momentum=0.9, epsilon=1e-3, unbiased_running_var=False)
  _, biased = flax_like.apply(variables, jnp.asarray(x, jnp.float32), train=True,
                              mutable=["batch_stats"])
  np.testing.assert_allclose(biased["batch_stats"]["var"], 0.9 + 0.1 * var, rtol=1e-5)
  # Evaluation normalises with the running statistics.
  y_eval = layer.apply({**variables, **new}, jnp.asarray(x, jnp.float32), train=False)
  running_mean, running_var = (np.asarray(new["batch_stats"][k], np.float64)
                               for k in ("mean", "var"))
  np.testing.assert_allclose(y_eval, (x - running_mean) / np.sqrt(running_var + 1e-3), rtol=1e-5,
                             atol=1e-5)


@pytest.mark.slow
def test_eight_device_step_equals_one_device_step_with_synchronised_batchnorm(tmp_path):
  config = tiny(tmp_path).validate(8)
  assert config.routing == "self_attention"  # the model's default router
  model, tx = make_model(config), optax.sgd(0.1)
  train, _ = config.data.build(config)
  batch = train.batch(0, 16)
  results = []
  for devices in (jax.devices()[:1], jax.devices()):
    mesh = make_mesh(devices)
    state = init_state(model, tx, (28, 28, 1), seed=0)
    state, metrics = make_train_step(model, tx, mesh, config)(state, shard_batch(batch, mesh))
    results.append(jax.device_get((state.params, state.model_state, metrics["loss"])))
  (p1, s1, l1), (p8, s8, l8) = results
  assert float(l1) == pytest.approx(float(l8), rel=1e-5)
  for a, b in zip(jax.tree.leaves((p1, s1)), jax.tree.leaves((p8, s8))):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
  # Reference in NumPy: BatchNorm 1 sees relu(conv1(x)) of the whole batch of
  # 16 (the 8 devices' statistics are synchronised); its running mean and
  # (unbiased, as Keras') variance move by 1 - momentum = 0.01 from 0 and 1.
  init = init_state(model, tx, (28, 28, 1), seed=0)
  x = np.asarray(batch["image"], np.float64)
  kernel = np.asarray(init.params["conv1"]["kernel"], np.float64)   # (5, 5, 1, 32)
  patches = np.lib.stride_tricks.sliding_window_view(x, (5, 5), axis=(1, 2))
  a = np.maximum(np.einsum("bhwcij,ijco->bhwo", patches, kernel)
                 + np.asarray(init.params["conv1"]["bias"], np.float64), 0)
  assert a.shape == (16, 24, 24, 32)
  for stats in (s1, s8):
    np.testing.assert_allclose(stats["batch_stats"]["bn1"]["mean"], 0.01 * a.mean((0, 1, 2)),
                               rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(stats["batch_stats"]["bn1"]["var"],
                               0.99 + 0.01 * a.var((0, 1, 2), ddof=1), rtol=1e-4, atol=1e-7)


@pytest.mark.slow
def test_batch_stats_through_training_and_an_exact_resume(tmp_path):
  train_and_evaluate(tiny(tmp_path, workdir=str(tmp_path / "full")))
  train_and_evaluate(tiny(tmp_path, workdir=str(tmp_path / "half"), steps=2))
  summary = train_and_evaluate(tiny(tmp_path, workdir=str(tmp_path / "half")))
  assert summary["step"] == 4 and summary["test_examples"] == 32
  config = tiny(tmp_path)
  model, tx = make_model(config), make_optimizer(config)
  init = init_state(model, tx, (28, 28, 1), 0)
  full, half = (Checkpointer(tmp_path / name / "checkpoints").restore(init)
                for name in ("full", "half"))
  for a, b in zip(jax.tree.leaves(full), jax.tree.leaves(half)):
    np.testing.assert_array_equal(a, b)  # bitwise, batch_stats included
  assert not np.array_equal(full.model_state["batch_stats"]["bn4"]["var"],
                            init.model_state["batch_stats"]["bn4"]["var"])
  assert (tmp_path / "full" / "reconstructions.png").exists()


# ----------------------------------------------------------------------------
# The augmentation of the official pre-processing.

def test_erasure_zeroes_one_4x4_patch_inside_the_margins():
  index = np.arange(500, dtype=np.int64)
  out = augment._erase(np.ones((500, 28, 28), np.float32), 0, index)
  zero = out == 0
  assert np.all(zero.sum(axis=(1, 2)) == 16)
  rows, cols = np.nonzero(zero.any(axis=2)), np.nonzero(zero.any(axis=1))
  assert rows[1].min() >= 4 and rows[1].max() <= 25 and cols[1].min() >= 4
  assert cols[1].max() <= 25


def test_preset_learning_rate_is_held_for_each_epoch_as_the_official_schedule():
  # Keras' per-epoch schedule: 5e-4 x 0.97^epoch for every step of the epoch
  # (3,750 steps of batch 16), floored at 5e-5 (from epoch 76 on).
  from capsjax.presets import PRESETS
  from capsjax.training import make_schedule
  config = TrainConfig(**PRESETS.get("efficient_capsnet_mnist").values)
  schedule = make_schedule(config)
  for epoch in (0, 1, 2, 10, 75, 76, 149):
    expected = max(5e-4 * 0.97 ** epoch, 5e-5)
    for update in (3750 * epoch, 3750 * epoch + 1874, 3750 * epoch + 3749):  # first, mid, last
      assert float(schedule(update)) == pytest.approx(expected, rel=1e-5), (epoch, update)


def test_preset_adam_epsilon_pixel_scale_and_decoder_initialisers_are_keras():
  from capsjax.presets import PRESETS
  from capsjax.training import make_optimizer
  config = TrainConfig(**{**PRESETS.get("efficient_capsnet_mnist").values, "test_subset": 20})
  # Adam's first update is -lr g / (|g| + eps): for |g| = eps = 1e-7, half the rate.
  tx = make_optimizer(config)
  params = {"w": jnp.zeros(2)}
  updates, _ = tx.update({"w": jnp.array([1e-7, -1.0])}, tx.init(params), params)
  np.testing.assert_allclose(updates["w"], [-5e-4 * 0.5, 5e-4 / (1 + 1e-7)], rtol=1e-5)
  # Pixels / 256, as the official pre-processing, in training and test.
  from capsjax.data import load_mnist
  train, test = config.data.build(config)
  images, _ = load_mnist("test", source="bundled")
  np.testing.assert_array_equal(next(test.batches(20))["image"][..., 0],
                                images[:20].astype(np.float32) / 256)
  assert train.pixel_scale == 1 / 256
  # Decoder: He normal (stddev sqrt(2 / fan_in)) for fc1 and fc2, Glorot normal
  # (sqrt(2 / (fan_in + fan_out))) for fc3; Keras' truncated normals keep the stddev.
  model = make_model(config)
  params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))["params"]
  for name, expected in (("fc1", (2 / 160) ** 0.5), ("fc2", (2 / 512) ** 0.5),
                         ("fc3", (2 / (1024 + 784)) ** 0.5)):
    kernel = np.asarray(params["decoder"][name]["kernel"])
    assert np.std(kernel) == pytest.approx(expected, rel=0.03), name


def test_squish_width_and_offset_follow_the_official_distributions():
  # The official squish: w = floor(7 a) + 1 columns narrower, placed w // 2 +
  # floor(2 b) columns from the left, a and b each min(|N(0, 0.33)|, 0.9999).
  # So the extra column has probability P(|N(0, 0.33)| >= 0.5), and w = k has
  # P((k - 1) / 7 <= |N| < k / 7) (the last bin takes the tail).
  import math
  cdf = lambda t: math.erf(t / (0.33 * math.sqrt(2)))           # P(|N(0, 0.33)| < t)
  p_extra = 1 - cdf(0.5)
  assert p_extra == pytest.approx(0.1297, abs=1e-4)
  p_width = [cdf(k / 7) - cdf((k - 1) / 7) for k in range(1, 7)]
  p_width.append(1 - cdf(6 / 7))
  widths, extras = [], []
  for chunk in range(4):
    index = np.arange(chunk * 20_000, (chunk + 1) * 20_000, dtype=np.int64)
    out = augment._squish(np.ones((len(index), 28, 28), np.float32), 5, index)
    inked = out[:, 14, :] > 0.5                                     # the image's columns
    first = inked.argmax(axis=1)
    cut = 28 - inked.sum(axis=1)
    assert np.all(inked[np.arange(len(index)), first + inked.sum(axis=1) - 1])  # contiguous
    widths.append(cut)
    extras.append(first - cut // 2)
  widths, extras = np.concatenate(widths), np.concatenate(extras)
  n = len(extras)
  assert set(np.unique(extras)) == {0, 1}
  assert abs(np.mean(extras) - p_extra) < 4 * math.sqrt(p_extra * (1 - p_extra) / n)
  counts = np.bincount(widths, minlength=8)[1:8] / n
  np.testing.assert_allclose(counts, p_width, atol=4 * math.sqrt(0.25 / n))


def test_augmentation_is_deterministic_and_in_range():
  from capsjax.data import load_mnist
  images, _ = load_mnist("test", source="bundled")
  x = images[:64].astype(np.float32) / 255
  index = np.arange(64, dtype=np.int64)
  a = augment.efficient_capsnet_augment(x, 3, index)
  np.testing.assert_array_equal(a, augment.efficient_capsnet_augment(x, 3, index))
  assert a.shape == (64, 28, 28) and a.dtype == np.float32
  assert 0 <= a.min() and a.max() <= 1
  assert not np.array_equal(a, augment.efficient_capsnet_augment(x, 4, index))
  changed = np.abs(a - x).sum(axis=(1, 2)) > 0
  assert changed.all()                                            # erasure, at least
