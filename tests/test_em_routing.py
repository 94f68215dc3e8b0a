"""Matrix capsules: EM routing against the paper's Procedure 1 written in NumPy,
convolutional routing against a dense NumPy reference, the degenerate cases,
the spread loss by hand, coordinate addition and the parameter count."""
import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from capsjax.layers import ClassMatrixCaps, ConvMatrixCaps
from capsjax.losses import spread_loss, spread_margin
from capsjax.models import MODELS, MatrixCapsNet
from capsjax.models.matrix_capsnet import receptive_field_centres
from capsjax.routing import (MATRIX_ROUTERS, VARIANCE_FLOOR, em_routing, inverse_temperatures,
                             window_softmax)


def np_em(votes, a, beta_u, beta_a, lambdas, children=None):
  """Procedure 1 for one example, loop by loop, in float64.

  ``votes (P, E, C, H)``: for every parent position p and its window entry e,
  the vote for each parent type c. ``children (P, E)`` names the child each
  entry reads (None: every entry is its own child); a child's assignments are
  normalised over every (p, c) whose window holds it. Returns poses
  ``(P, C, H)`` and activations ``(P, C)``.
  """
  votes = np.asarray(votes, np.float64)
  n_pos, n_entries, n_out, dim = votes.shape
  a = np.asarray(a, np.float64).reshape(n_pos, n_entries)
  if children is None:
    children = np.arange(n_pos * n_entries).reshape(n_pos, n_entries)

  def normalise(logits):
    r = np.zeros_like(logits)
    for child in np.unique(children):
      where = children == child
      z = np.exp(logits[where])                                  # (count, C)
      r[where] = z / z.sum()
    return r

  r = normalise(np.zeros((n_pos, n_entries, n_out)))
  for t, lam in enumerate(lambdas):
    mu = np.zeros((n_pos, n_out, dim))
    var = np.zeros((n_pos, n_out, dim))
    act = np.zeros((n_pos, n_out))
    for p in range(n_pos):
      for j in range(n_out):
        rr = r[p, :, j] * a[p]                                   # R_ij <- R_ij a_i
        mu[p, j] = (rr[:, None] * votes[p, :, j]).sum(0) / rr.sum()
        var[p, j] = (rr[:, None] * (votes[p, :, j] - mu[p, j]) ** 2).sum(0) / rr.sum()
        var[p, j] += VARIANCE_FLOOR
        cost = (beta_u[j] + np.log(np.sqrt(var[p, j]))) * rr.sum()
        act[p, j] = 1 / (1 + np.exp(-lam * (beta_a[j] - cost.sum())))
    if t == len(lambdas) - 1:
      return mu, act
    logits = np.zeros((n_pos, n_entries, n_out))
    for p in range(n_pos):
      for i in range(n_entries):
        for j in range(n_out):
          density = np.prod(np.exp(-(votes[p, i, j] - mu[p, j]) ** 2 / (2 * var[p, j]))
                            / np.sqrt(2 * np.pi * var[p, j]))
          logits[p, i, j] = np.log(act[p, j] * density)
    r = normalise(logits)


def random_case(key, shape, scale=0.5):
  k1, k2, k3, k4 = jax.random.split(key, 4)
  votes = scale * jax.random.normal(k1, shape)
  a = jax.random.uniform(k2, shape[:-2], minval=0.1, maxval=1.0)
  n_out = shape[-2]
  return votes, a, jax.random.normal(k3, (n_out,)), 10 * jax.random.normal(k4, (n_out,))


@pytest.mark.parametrize("num_iters", [1, 2, 3])
def test_em_routing_matches_procedure_1_in_numpy(num_iters):
  votes, a, beta_u, beta_a = random_case(jax.random.key(num_iters), (2, 7, 3, 16))
  lambdas = inverse_temperatures(num_iters, 0.05)
  poses, act = em_routing(votes, a, beta_u, beta_a, num_iters, final_inverse_temperature=0.05)
  chex.assert_shape(poses, (2, 3, 16))
  chex.assert_shape(act, (2, 3))
  for b in range(2):
    ref_mu, ref_act = np_em(np.asarray(votes[b])[None], np.asarray(a[b]), np.asarray(beta_u),
                            np.asarray(beta_a), lambdas)
    np.testing.assert_allclose(poses[b], ref_mu[0], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(act[b], ref_act[0], rtol=1e-4, atol=1e-6)


def clustered_votes(seed, shape, spread=0.05):
  """Votes in a tight cluster per parent type (spread 0.05), activations in [0.1, 1)."""
  rng = np.random.default_rng(seed)
  votes = rng.normal(size=shape[-2:]) + spread * rng.normal(size=shape)
  return votes, rng.uniform(0.1, 1.0, size=shape[:-2])


def unsaturated_beta_a(votes, a, lambdas, children=None):
  """beta_a that puts the reference's last activations near 0.35, 0.5 and 0.65."""
  _, act = np_em(votes, a, np.zeros(3), np.zeros(3), lambdas, children)
  cost = np.mean(np.log(1 / act - 1), axis=0) / lambdas[-1]       # a = sigmoid(-lambda cost)
  return cost + np.array([-60.0, 0.0, 60.0])


@pytest.mark.parametrize("num_iters", [1, 2, 3])
@pytest.mark.parametrize("routing", ["dense", "convolutional"])
def test_float32_routing_is_shift_equivariant(num_iters, routing):
  # Adding c to every vote shifts the poses by c and leaves the activations:
  # float32 activations at c = 0, 3, 10, 30 agree with the float64 reference
  # to 2e-4 (moments in the frame of each parent's mean vote; the one-pass
  # variance was off by up to 2e-2 at c = 30).
  lambdas = inverse_temperatures(num_iters)
  if routing == "dense":
    votes, a = clustered_votes(num_iters, (12, 3, 16))
    children, shape, assign = None, (1, 12, 3, 16), None
    ref_votes, ref_a = votes[None], a
  else:   # 5x5 children of 2 types, 3x3 windows, stride 1: 9 positions of 18 entries
    children = window_children(5, 5, 3, 1, 2)
    child_votes, a_children = clustered_votes(num_iters, (50, 3, 16))
    ref_votes, ref_a = child_votes[children], a_children[children]
    shape, assign = (1, 3, 3, 18, 3, 16), functools.partial(
        window_softmax, input_size=(5, 5), kernel_size=3, stride=1)
  beta_u = np.zeros(3)
  beta_a = unsaturated_beta_a(ref_votes, ref_a, lambdas, children)
  for c in (0.0, 3.0, 10.0, 30.0):
    ref_mu, ref_act = np_em(ref_votes + c, ref_a, beta_u, beta_a, lambdas, children)
    assert 0.05 < ref_act.mean() < 0.95
    poses, act = em_routing(jnp.asarray((ref_votes + c).reshape(shape), jnp.float32),
                            jnp.asarray(ref_a.reshape(shape[:-2]), jnp.float32), beta_u,
                            beta_a, num_iters, assignments=assign)
    np.testing.assert_allclose(np.asarray(act).reshape(ref_act.shape), ref_act, atol=2e-4)
    np.testing.assert_allclose(np.asarray(poses).reshape(ref_mu.shape), ref_mu,
                               atol=2e-4 + 1e-6 * c)


def test_a_light_parent_gets_the_exact_weighted_mean_and_an_empty_one_stays_finite():
  # Parent 0 is reached only through tiny activations (mass 1e-4): its pose is
  # still the weighted mean of its votes (a fixed mass epsilon shrank it by
  # m / (m + 1e-6)); parent 1's votes come from children of activation 0.
  rng = np.random.default_rng(0)
  votes = rng.normal(size=(1, 4, 2, 16)) + 5.0
  a = np.array([[1e-4 / 3, 1e-4 / 3, 1e-4 / 3, 0.0]])
  poses, act = em_routing(jnp.asarray(votes, jnp.float32), jnp.asarray(a, jnp.float32),
                          0.0, 0.0, 1)
  expected = (a[0, :, None] * votes[0, :, 0]).sum(0) / a[0].sum()
  np.testing.assert_allclose(poses[0, 0], expected, rtol=1e-5)
  empty = em_routing(jnp.asarray(votes, jnp.float32), jnp.zeros((1, 4)), 0.0, 0.0, 3)
  grads = jax.grad(lambda v: jnp.sum(em_routing(v, jnp.zeros((1, 4)), 0.0, 0.0, 3)[1]))(
      jnp.asarray(votes, jnp.float32))
  assert all(np.all(np.isfinite(x)) for x in (*empty, grads))


def test_one_iteration_gives_the_activation_weighted_mean_of_the_votes():
  votes, a, beta_u, beta_a = random_case(jax.random.key(7), (4, 9, 5, 16))
  poses, act = em_routing(votes, a, beta_u, beta_a, 1)
  expected = np.einsum("bi,bijh->bjh", a, votes) / np.sum(a, axis=1)[:, None, None]
  np.testing.assert_allclose(poses, expected, rtol=1e-5, atol=1e-6)
  assert np.all((np.asarray(act) >= 0) & (np.asarray(act) <= 1))


def test_inverse_temperature_schedule():
  # The official schedule 0.01 (1 - 0.95^(t + 1)), by hand, is the default.
  np.testing.assert_allclose(inverse_temperatures(3, 0.01), [0.0005, 0.000975, 0.00142625],
                             rtol=1e-12)
  # --scaled_inverse_temperature: the same shape, ending at 0.01.
  assert inverse_temperatures(1, 0.01, scaled=True) == [0.01]
  np.testing.assert_allclose(inverse_temperatures(3, 0.01, scaled=True),
                             [0.01 * 0.05 / 0.142625, 0.01 * 0.0975 / 0.142625, 0.01], rtol=1e-12)
  v, a, bu, ba = random_case(jax.random.key(0), (1, 4, 2, 16))
  official = [0.01 * (1 - 0.95 ** (t + 1)) for t in range(3)]
  np.testing.assert_allclose(
      em_routing(v, a, bu, ba, 3)[1],
      np_em(np.asarray(v), np.asarray(a), np.asarray(bu), np.asarray(ba), official)[1],
      rtol=1e-4)
  scaled = [0.01 * x / 0.142625 for x in (0.05, 0.0975, 0.142625)]
  np.testing.assert_allclose(
      em_routing(v, a, bu, ba, 3, scaled_inverse_temperature=True)[1],
      np_em(np.asarray(v), np.asarray(a), np.asarray(bu), np.asarray(ba), scaled)[1],
      rtol=1e-4)
  with pytest.raises(ValueError, match="one per iteration"):
    em_routing(v, a, bu, ba, 3, inverse_temperature=[0.01])
  with pytest.raises(ValueError, match="int >= 1"):
    em_routing(v, a, bu, ba, 0)


def _finite_everywhere(votes, a, num_iters=3):
  def total(votes, a):
    poses, act = em_routing(votes, a, 0.5, 1.0, num_iters)
    return jnp.sum(poses) + jnp.sum(act)
  poses, act = em_routing(votes, a, 0.5, 1.0, num_iters)
  grads = jax.grad(total, argnums=(0, 1))(votes, a)
  for x in (poses, act, *grads):
    assert np.all(np.isfinite(np.asarray(x)))
  return poses, act


def test_degenerate_cases_stay_finite():
  # All votes of every parent agree: zero variance, held up by the floor.
  same = jnp.broadcast_to(jnp.arange(16.0), (2, 6, 3, 16))
  poses, _ = _finite_everywhere(same, jnp.full((2, 6), 0.7))
  np.testing.assert_allclose(poses, np.broadcast_to(np.arange(16.0), (2, 3, 16)), rtol=1e-5)
  # A parent with one child.
  votes, a, _, _ = random_case(jax.random.key(1), (2, 1, 3, 16))
  poses, _ = _finite_everywhere(votes, a)
  np.testing.assert_allclose(poses, votes[:, 0], rtol=1e-4, atol=1e-6)
  # Children that are all inactive, and some that are.
  _, act = _finite_everywhere(votes, jnp.zeros((2, 1)))
  # cost 0: beta_a alone, times the last lambda, 0.01 (1 - 0.95^3).
  np.testing.assert_allclose(act, jax.nn.sigmoid(0.00142625 * 1.0), rtol=1e-5)
  votes, a, _, _ = random_case(jax.random.key(2), (2, 8, 4, 16))
  _finite_everywhere(votes, a.at[:, :5].set(0.0))
  # Huge disagreements: the E-step is in log space.
  _finite_everywhere(votes * 1e3, a)


# ----------------------------------------------------------------------------
# Convolutional capsules.

def window_children(height, width, kernel, stride, types):
  """``children (P, k*k*T)``: the input capsule each window entry reads, row-major."""
  out_h, out_w = (height - kernel) // stride + 1, (width - kernel) // stride + 1
  ids = np.zeros((out_h * out_w, kernel * kernel * types), np.int64)
  for oy in range(out_h):
    for ox in range(out_w):
      e = 0
      for ky in range(kernel):
        for kx in range(kernel):
          for t in range(types):
            ids[oy * out_w + ox, e] = ((oy * stride + ky) * width + ox * stride + kx) * types + t
            e += 1
  return ids


@pytest.mark.parametrize("size,kernel,stride", [(5, 3, 1), (7, 3, 2), (8, 3, 2)])
def test_window_softmax_normalises_each_child_over_all_its_parents(size, kernel, stride):
  types, n_out = 2, 3
  out = (size - kernel) // stride + 1
  logits = jax.random.normal(jax.random.key(size), (2, out, out, kernel * kernel * types, n_out))
  r = window_softmax(logits, (size, size), kernel, stride)
  children = window_children(size, size, kernel, stride, types)
  for b in range(2):
    x = np.asarray(logits[b], np.float64).reshape(out * out, -1, n_out)
    expected = np.zeros_like(x)
    for child in np.unique(children):
      where = children == child
      expected[where] = np.exp(x[where]) / np.exp(x[where]).sum()
    np.testing.assert_allclose(np.asarray(r[b]).reshape(expected.shape), expected, rtol=1e-5)
  # The official normalisation: over the covering positions, per parent type,
  # then an equal share for each of the n_out parent types.
  # Every child of both images, edge children (read by one window) included.
  r = window_softmax(logits, (size, size), kernel, stride, per_parent_type=True)
  for b in range(2):
    x = np.asarray(logits[b], np.float64).reshape(out * out, -1, n_out)
    expected = np.zeros_like(x)
    for child in np.unique(children):
      where = children == child
      expected[where] = np.exp(x[where]) / np.exp(x[where]).sum(0) / n_out
      np.testing.assert_allclose(expected[where].sum(), 1.0)
    np.testing.assert_allclose(np.asarray(r[b]).reshape(expected.shape), expected, rtol=1e-5)


def test_conv_matrix_caps_matches_a_dense_numpy_reference():
  size, kernel, stride, types, n_out = 5, 3, 1, 2, 3
  k1, k2 = jax.random.split(jax.random.key(3))
  poses = jax.random.normal(k1, (1, size, size, types, 16))
  act = jax.random.uniform(k2, (1, size, size, types), minval=0.1, maxval=1.0)
  layer = ConvMatrixCaps(n_out, kernel, stride, routing_iters=3)
  params = layer.init(jax.random.key(4), poses, act)
  params = jax.tree.map(lambda x: x, params)
  params["params"]["beta_a"] = jnp.array([1.0, -2.0, 3.0])
  params["params"]["beta_u"] = jnp.array([0.5, 0.0, -0.5])
  out_poses, out_act = layer.apply(params, poses, act)
  chex.assert_shape(out_poses, (1, 3, 3, n_out, 16))
  chex.assert_shape(out_act, (1, 3, 3, n_out))
  # Votes by hand: pose matrix times the transformation of (tap, type, parent).
  w = np.asarray(params["params"]["W"], np.float64)
  children = window_children(size, size, kernel, stride, types)
  flat_poses = np.asarray(poses[0], np.float64).reshape(-1, 4, 4)
  votes = np.zeros(children.shape + (n_out, 16))
  for p in range(children.shape[0]):
    for e in range(children.shape[1]):
      tap, t = divmod(e, types)
      for j in range(n_out):
        votes[p, e, j] = (flat_poses[children[p, e]] @ w[tap // kernel, tap % kernel, t, j]
                          ).ravel()
  a = np.asarray(act[0], np.float64).ravel()[children]
  ref_mu, ref_act = np_em(votes, a, np.array([0.5, 0.0, -0.5]), np.array([1.0, -2.0, 3.0]),
                          inverse_temperatures(3), children)
  np.testing.assert_allclose(np.asarray(out_poses[0]).reshape(ref_mu.shape), ref_mu,
                             rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(np.asarray(out_act[0]).reshape(ref_act.shape), ref_act,
                             rtol=1e-4, atol=1e-6)


def test_coordinate_addition_adds_the_scaled_centres_to_the_right_hand_column():
  def votes_only(votes, activations, beta_u, beta_a, num_iters):
    return votes, activations
  poses = jax.random.normal(jax.random.key(5), (1, 3, 2, 4, 16))
  act = jnp.ones((1, 3, 2, 4))
  rows, cols = jnp.array([0.1, 0.5, 0.9]), jnp.array([0.25, 0.75])
  with_coords = ClassMatrixCaps(5, votes_only)
  params = with_coords.init(jax.random.key(6), poses, act, (rows, cols))
  plain = with_coords.clone(coordinate_addition=False).apply(params, poses, act)[0]
  added = with_coords.apply(params, poses, act, (rows, cols))[0]
  delta = np.asarray(added - plain).reshape(3, 2, 4, 5, 4, 4)
  expected = np.zeros((3, 2, 4, 5, 4, 4))
  expected[..., 0, 3] = np.asarray(rows)[:, None, None, None]
  expected[..., 1, 3] = np.asarray(cols)[None, :, None, None]
  np.testing.assert_allclose(delta, expected, atol=1e-6)
  # Where the model's class capsules sit in a 28x28 image: the middle of each
  # receptive field through conv1 (5, stride 2), ConvCaps1 (3, 2), ConvCaps2 (3, 1).
  np.testing.assert_allclose(receptive_field_centres(28), np.array([8.5, 12.5, 16.5]) / 28)


# ----------------------------------------------------------------------------
# The spread loss, the model.

def test_spread_loss_by_hand():
  a = jnp.array([[0.9, 0.3, 0.8], [0.1, 0.2, 0.95]])
  labels = jnp.array([0, 2])
  # m = 0.2: example 0: max(0, 0.2 - 0.6)^2 + max(0, 0.2 - 0.1)^2 = 0.01; example 1: 0.
  np.testing.assert_allclose(spread_loss(a, labels, 0.2), [0.01, 0.0], atol=1e-7)
  # m = 0.9: 0.3^2 + 0.8^2 = 0.73; (0.9 - 0.85)^2 + (0.9 - 0.75)^2 = 0.025.
  np.testing.assert_allclose(spread_loss(a, labels, 0.9), [0.73, 0.025], rtol=1e-5)
  np.testing.assert_allclose([spread_margin(s, 100) for s in (0, 50, 100, 1000)],
                             [0.2, 0.55, 0.9, 0.9], rtol=1e-6)
  with pytest.raises(ValueError, match="labels"):
    spread_loss(a, jax.nn.one_hot(labels, 3), 0.2)


def count_params(model, shape):
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, *shape))))
  return sum(x.size for x in jax.tree.leaves(variables["params"]))


@pytest.mark.parametrize("size,classes,shape,expected", [
    # (conv1, primary, ConvCaps1, ConvCaps2, class capsules), by hand from the layers:
    # 5*5*I*A + A, (A + 1) * 17B, 3*3*B*C*16 + 2C, 3*3*C*D*16 + 2D, D*E*16 + 2E.
    ("small", 5, (32, 32, 1), 1_664 + 8_840 + 18_464 + 36_896 + 1_290),      # smallNORB: "68K"
    ("small", 10, (28, 28, 1), 1_664 + 8_840 + 18_464 + 36_896 + 2_580),     # MNIST
    ("large", 5, (32, 32, 1), 832 + 17_952 + 147_520 + 147_520 + 2_570),     # smallNORB: "310K"
    ("large", 10, (28, 28, 1), 832 + 17_952 + 147_520 + 147_520 + 5_140),    # MNIST
])
def test_parameter_counts_per_dataset(size, classes, shape, expected):
  assert count_params(MatrixCapsNet(num_classes=classes, size=size), shape) == expected
  paper = {("small", 5): 68e3, ("large", 5): 310e3}.get((size, classes))
  if paper:
    assert abs(expected - paper) / paper < 0.025


def test_matrix_capsnet_bn_normalises_conv1_as_pytorch_batchnorm2d():
  """``matrix_capsnet_bn``: 2A more parameters; one training step moves the running
  statistics by 0.1 towards conv1's batch mean and unbiased variance per channel (PyTorch's
  BatchNorm2d, momentum 0.1), conv1 computed here in NumPy from its kernel."""
  from capsjax.training import TrainConfig, make_model
  config = TrainConfig(model="matrix_capsnet_bn", dataset="mnist", routing_iters=1)
  model = make_model(config).clone(batch_axis=None)            # one device, outside a mesh
  assert model.conv1_batchnorm and MODELS["matrix_capsnet_bn"].collections == ("batch_stats",)
  plain = 1_664 + 8_840 + 18_464 + 36_896 + 2_580                 # the MNIST count above
  assert count_params(model, (28, 28, 1)) == plain + 2 * 64
  images = jax.random.uniform(jax.random.key(0), (3, 28, 28, 1))
  variables = model.init(jax.random.key(1), images)
  _, updates = model.apply(variables, images, train=True, mutable=["batch_stats"])
  kernel = np.asarray(variables["params"]["conv1"]["kernel"], np.float64).reshape(25, 64)
  bias = np.asarray(variables["params"]["conv1"]["bias"], np.float64)
  x = np.asarray(images, np.float64)[..., 0]
  patches = np.stack([x[:, i:i + 23:2, j:j + 23:2] for i in range(5) for j in range(5)], -1)
  conv1 = (patches @ kernel + bias).reshape(-1, 64)                  # (3 * 12 * 12, 64)
  stats = updates["batch_stats"]["bn1"]
  np.testing.assert_allclose(stats["mean"], 0.1 * conv1.mean(0), rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(stats["var"], 0.9 + 0.1 * conv1.var(0, ddof=1), rtol=1e-4)


@pytest.mark.slow
def test_train_script_runs_matrix_capsnet_bn_and_keeps_its_statistics(tmp_path):
  from toys import SMALL, train_script
  from capsjax.training.loop import latest_variables
  workdir = tmp_path / "run"
  assert train_script([*SMALL, "--model", "matrix_capsnet_bn", "--dataset", "mnist",
                       "--routing_iters", "1", "--workdir", str(workdir)]) == 0
  _, _, step, variables = latest_variables(workdir)
  assert step == 2 and float(np.abs(variables["batch_stats"]["bn1"]["mean"]).sum()) > 0


def test_the_matrix_router_registry():
  assert MODELS["matrix_capsnet"].routers is MATRIX_ROUTERS
  assert MATRIX_ROUTERS["em"] is em_routing


def test_model_shapes_and_gradients_are_finite():
  model = MatrixCapsNet(routing_iters=2)
  images = jax.random.uniform(jax.random.key(0), (2, 28, 28, 1))
  variables = model.init(jax.random.key(1), images)
  out = model.apply(variables, images)
  chex.assert_shape(out.scores, (2, 10))
  chex.assert_shape(out.poses, (2, 10, 16))
  grads = jax.grad(lambda p: jnp.sum(spread_loss(
      model.apply({"params": p}, images).scores, jnp.array([3, 7]), 0.5)))(variables["params"])
  assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))
  with pytest.raises(ValueError, match="at least 17x17"):
    model.init(jax.random.key(1), jnp.zeros((1, 16, 16, 1)))


def test_router_is_a_parameter_of_the_layers():
  calls = []

  def recording(votes, activations, beta_u, beta_a, num_iters, **options):
    calls.append((votes.shape, sorted(options)))
    return em_routing(votes, activations, beta_u, beta_a, num_iters, **options)

  model = MatrixCapsNet(routing=functools.partial(recording), routing_iters=1)
  model.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))
  assert calls == [((1, 5, 5, 72, 16, 16), ["assignments"]),
                   ((1, 3, 3, 144, 16, 16), ["assignments"]), ((1, 144, 10, 16), [])]


# ----------------------------------------------------------------------------
# Training: the data-parallel step, the script.

@pytest.mark.slow
def test_eight_device_step_equals_one_device_step(tmp_path):
  import optax
  from capsjax.training import (TrainConfig, init_state, make_mesh, make_model,
                                make_train_step, shard_batch)
  config = TrainConfig(model="matrix_capsnet", dataset="mnist", routing_iters=2, batch_size=8,
                       steps=2, data_source="bundled", test_subset=16, eval_batch_size=8,
                       workdir=str(tmp_path)).validate(8)
  assert config.routing == "em"  # the model's default router
  model, tx = make_model(config), optax.sgd(0.1)
  train, _ = config.data.build(config)
  batch = train.batch(0, 8)
  results = []
  for devices in (jax.devices()[:1], jax.devices()):
    mesh = make_mesh(devices)
    state = init_state(model, tx, (28, 28, 1), seed=0)
    state, metrics = make_train_step(model, tx, mesh, config)(state, shard_batch(batch, mesh))
    results.append(jax.device_get((state.params, metrics)))
  (p1, m1), (p8, m8) = results
  assert float(m1["loss"]) == pytest.approx(float(m8["loss"]), rel=1e-5)
  assert float(m1["margin"]) == pytest.approx(0.2)  # step 0 of the schedule
  for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p8)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_train_script_runs_matrix_capsnet(tmp_path):
  import json

  from toys import SMALL, train_script
  workdir = tmp_path / "run"
  assert train_script([*SMALL, "--model", "matrix_capsnet", "--dataset", "mnist",
                       "--routing_iters", "1", "--margin_ramp_steps", "2",
                       "--workdir", str(workdir)]) == 0
  rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  train = [r for r in rows if r["split"] == "train"]
  assert [r["step"] for r in train] == [1, 2]
  assert train[0]["margin"] == pytest.approx(0.2) and train[1]["margin"] == pytest.approx(0.55)
  assert rows[-1]["split"] == "test" and rows[-1]["test_examples"] == 16
  config = json.loads((workdir / "config.json").read_text())
  assert config["routing"] == "em" and config["model_size"] == "small"


def test_the_per_parent_type_flag_reaches_the_convolutional_layers():
  from capsjax.training import TrainConfig, make_model
  for flag in (False, True):
    model = make_model(TrainConfig(model="matrix_capsnet", dataset="mnist",
                                   assignments_per_parent_type=flag))
    assert model.per_parent_type is flag


def test_votes_values_tangents_and_gradients_against_numpy():
  # The votes M W, their forward-mode tangent dM W + M dW and both gradients,
  # in float64 against einsums written here.
  from capsjax.layers.matrix import _votes
  with jax.enable_x64(True):
    rng = np.random.default_rng(0)
    m, dm = rng.normal(size=(2, 3, 5, 16)), rng.normal(size=(2, 3, 5, 16))
    w, dw = rng.normal(size=(5, 4, 4, 4)), rng.normal(size=(5, 4, 4, 4))
    ct = rng.normal(size=(2, 3, 5, 4, 4, 4))

    def ref(m, w):
      return np.einsum("nkirq,ijqc->nkijrc", m.reshape(2, 3, 5, 4, 4), w).reshape(2, 3, 5, 4, 16)

    values, tangent = jax.jvp(_votes, (jnp.asarray(m), jnp.asarray(w)),
                              (jnp.asarray(dm), jnp.asarray(dw)))
    np.testing.assert_allclose(values, ref(m, w), rtol=1e-12)
    np.testing.assert_allclose(tangent, ref(dm, w) + ref(m, dw), rtol=1e-10)
    grad_m, grad_w = jax.grad(lambda m, w: jnp.sum(_votes(m, w) * ct.reshape(2, 3, 5, 4, 16)),
                              argnums=(0, 1))(jnp.asarray(m), jnp.asarray(w))
    np.testing.assert_allclose(grad_m, np.einsum("nkijrc,ijqc->nkirq", ct, w).reshape(m.shape),
                               rtol=1e-10)
    np.testing.assert_allclose(grad_w, np.einsum("nkirq,nkijrc->ijqc", m.reshape(2, 3, 5, 4, 4),
                                                 ct), rtol=1e-10)


def test_the_scaled_inverse_temperature_flag_reaches_every_routed_layer():
  from capsjax.training import TrainConfig, make_model
  from capsjax.training.config import ConfigError
  images = jax.random.uniform(jax.random.key(0), (2, 28, 28, 1))
  outputs = {}
  for scaled in (False, True):
    config = TrainConfig(model="matrix_capsnet", dataset="mnist", routing_iters=3,
                         scaled_inverse_temperature=scaled).validate()
    model = make_model(config)
    variables = model.init(jax.random.key(1), images)
    outputs[scaled] = model.apply(variables, images).scores
  # The same network routed with the scaled lambdas, passed by hand to every layer.
  scaled = [0.01 * x / 0.142625 for x in (0.05, 0.0975, 0.142625)]
  by_hand = MatrixCapsNet(routing=functools.partial(em_routing, inverse_temperature=scaled))
  np.testing.assert_allclose(by_hand.apply(variables, images).scores, outputs[True], rtol=1e-6)
  assert not np.allclose(outputs[False], outputs[True], rtol=1e-4)
  with pytest.raises(ConfigError, match="--scaled_inverse_temperature is an option of EM "
                                        "routing; --routing dynamic does not take it"):
    TrainConfig(model="capsnet", scaled_inverse_temperature=True).validate()
