"""The paper's CNN baselines: parameter counts by hand, the forward pass and the
losses against NumPy, dropout keys, and a run through train.py."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from capsjax.models import BASELINES, BaselineCNN, CapsNet, ClassifierOutput, classifier_loss
from capsjax.models.baseline_cnn import BaselineLayers
from capsjax.training import TrainConfig, loss_fn
from capsjax.training.config import ConfigError
from capsjax.training.steps import training_key
from toys import SMALL, train_script


def count(module, shape):
  variables = jax.eval_shape(lambda: module.init(jax.random.key(0), jnp.zeros((1, *shape))))
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(variables["params"]))


def conv(k, c_in, c_out):
  return k * k * c_in * c_out + c_out


def dense(n_in, n_out):
  return n_in * n_out + n_out


@pytest.mark.parametrize("dataset,shape,expected", [
    # The paper's MNIST baseline: SAME 5x5 convolutions, no pooling (35.4M).
    ("mnist", (28, 28, 1), conv(5, 1, 256) + conv(5, 256, 256) + conv(5, 256, 128)
     + dense(28 * 28 * 128, 328) + dense(328, 192) + dense(192, 10)),
    # The official conv_model.py on 36x36: two conv + 2x2 pool, fc 1024 (paper: 24.56M).
    ("multimnist", (36, 36, 1), conv(5, 1, 512) + conv(5, 512, 256)
     + dense(9 * 9 * 256, 1024) + dense(1024, 10)),
    # 40x40: pooled twice to 10x10, fc1 848 wide.
    ("mnist40", (40, 40, 1), conv(5, 1, 256) + conv(5, 256, 256) + conv(5, 256, 128)
     + dense(10 * 10 * 128, 848) + dense(848, 192) + dense(192, 10)),
])
def test_parameter_counts_by_hand(dataset, shape, expected):
  assert count(BaselineCNN(BASELINES[dataset]), shape) == expected
  papers = {"mnist": 35.4e6, "multimnist": 24.56e6}
  if dataset in papers:
    assert abs(expected - papers[dataset]) / papers[dataset] < 0.002


def test_the_40x40_baseline_is_as_large_as_capsnet_on_40x40():
  primaries = 12 * 12 * 32                               # (40 - 8 - 9) // 2 + 1 = 12
  capsnet = (conv(9, 1, 256) + conv(9, 256, 256) + primaries * 10 * 16 * 8
             + dense(160, 512) + dense(512, 1024) + dense(1024, 1600))
  assert count(CapsNet(), (40, 40, 1)) == capsnet == 13_475_648
  cnn = count(BaselineCNN(BASELINES["mnist40"]), (40, 40, 1))
  assert abs(cnn - capsnet) / capsnet < 0.001


def np_forward(params, images, layers):
  """SAME 5x5 convolutions, ReLU, 2x2 SAME max pooling, dense layers, in NumPy."""
  x = np.asarray(images, np.float64)
  for i, (features, pool) in enumerate(layers.convs, start=1):
    k = np.asarray(params[f"conv{i}"]["kernel"], np.float64)
    b = np.asarray(params[f"conv{i}"]["bias"], np.float64)
    padded = np.pad(x, ((0, 0), (2, 2), (2, 2), (0, 0)))
    out = np.zeros(x.shape[:3] + (features,))
    for y in range(x.shape[1]):
      for z in range(x.shape[2]):
        out[:, y, z] = np.einsum("bhwc,hwco->bo", padded[:, y:y + 5, z:z + 5], k) + b
    x = np.maximum(out, 0)
    if pool:
      h, w = -(-x.shape[1] // 2), -(-x.shape[2] // 2)
      padded = np.full((x.shape[0], 2 * h, 2 * w, x.shape[3]), -np.inf)
      padded[:, :x.shape[1], :x.shape[2]] = x
      x = padded.reshape(x.shape[0], h, 2, w, 2, -1).max(axis=(2, 4))
  x = x.reshape(x.shape[0], -1)
  for i in range(1, len(layers.hidden) + 1):
    x = np.maximum(x @ np.asarray(params[f"fc{i}"]["kernel"]) + np.asarray(params[f"fc{i}"]["bias"]), 0)
  return x @ np.asarray(params["logits"]["kernel"]) + np.asarray(params["logits"]["bias"])


@pytest.mark.parametrize("official_init", [False, True])
def test_forward_against_numpy(official_init):
  layers = BaselineLayers(convs=((3, True), (4, False), (2, True)), hidden=(6, 5),
                          dropout=0.5, official_init=official_init)
  model = BaselineCNN(layers, num_classes=7)
  images = jax.random.uniform(jax.random.key(1), (2, 7, 9, 1))
  params = model.init(jax.random.key(0), images)["params"]
  out = model.apply({"params": params}, images)                  # evaluation: no dropout
  assert isinstance(out, ClassifierOutput)
  chex.assert_shape(out.logits, (2, 7))
  chex.assert_type(out.logits, jnp.float32)
  np.testing.assert_allclose(out.scores, np_forward(params, images, layers), rtol=1e-5,
                             atol=1e-5)


def test_losses_against_numpy():
  logits = np.array([[2.0, -1.0, 0.5], [0.1, 0.2, 3.0]], np.float32)
  one = {"labels": np.array([[0], [1]]), "multi_hot": np.eye(3, dtype=np.float32)[[0, 1]]}
  loss, terms = classifier_loss(ClassifierOutput(jnp.asarray(logits)), one, None)
  log_softmax = logits - np.log(np.exp(logits).sum(1, keepdims=True))
  np.testing.assert_allclose(loss, -log_softmax[[0, 1], [0, 1]], rtol=1e-6)
  np.testing.assert_allclose(terms["cross_entropy"], loss)
  two = {"labels": np.array([[0, 2], [1, 2]]),
         "multi_hot": np.array([[1, 0, 1], [0, 1, 1]], np.float32)}
  loss, _ = classifier_loss(ClassifierOutput(jnp.asarray(logits)), two, None)
  p = 1 / (1 + np.exp(-logits.astype(np.float64)))
  t = two["multi_hot"]
  np.testing.assert_allclose(loss, -(t * np.log(p) + (1 - t) * np.log(1 - p)).sum(1), rtol=1e-5)


def test_dropout_draws_from_the_training_key():
  config = TrainConfig(model="baseline_cnn", dataset="mnist")
  layers = BaselineLayers(convs=((2, True),), hidden=(64,), dropout=0.5)
  model = BaselineCNN(layers)
  images = jax.random.uniform(jax.random.key(2), (4, 8, 8, 1))
  batch = {"image": images, "labels": jnp.array([[1], [2], [3], [4]]),
           "multi_hot": jax.nn.one_hot(jnp.array([1, 2, 3, 4]), 10)}
  params = model.init(jax.random.key(0), images)["params"]

  def loss(key=None, step=0):
    return float(loss_fn(params, {}, model, batch, config, step, key)[0])

  assert loss(training_key(0, 5)) == loss(training_key(0, 5)) == loss(step=5)
  assert loss(training_key(0, 5)) != loss(training_key(0, 6))
  assert loss(training_key(0, 5, 0)) != loss(training_key(0, 5, 1))   # each device its own


def test_a_dataset_without_a_baseline_is_refused():
  with pytest.raises(ConfigError, match="--model baseline_cnn has layers for --dataset mnist, "
                                        "fashion_mnist, multimnist, mnist40; got --dataset "
                                        "mnist_augmented"):
    TrainConfig(model="baseline_cnn", dataset="mnist_augmented").validate()


@pytest.mark.slow
def test_multimnist_baseline_trains_through_train_py(tmp_path):
  workdir = tmp_path / "run"
  argv = ["--model", "baseline_cnn", "--dataset", "multimnist", *SMALL, "--steps", "3",
          "--test_subset", "100", "--eval_batch_size", "104",
          "--checkpoint_every", "3", "--lr", "1e-4", "--workdir", str(workdir)]
  assert train_script(argv) == 0
  records = [line for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert len(records) == 4 and '"split": "test"' in records[-1]
  assert '"cross_entropy"' in records[0] and '"per_digit_accuracy"' in records[-1]
