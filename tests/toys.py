"""Small models, datasets and helpers shared by the tests: what a user would
register from their own code, and the training script run in this process."""
import importlib.util
import pathlib

import flax
import flax.linen as nn
import jax
import numpy as np

from capsjax.data import ClassificationTest, DatasetSpec, ShiftedImages
from capsjax.losses import margin_loss
from capsjax.models import ClassifierOutput, ModelSpec, classifier_loss
from capsjax.routing import safe_norm, squash

ROOT = pathlib.Path(__file__).resolve().parents[1]

SMALL = ["--batch_size", "8", "--steps", "2", "--eval_every", "0", "--log_every", "1",
         "--checkpoint_every", "2", "--test_subset", "16", "--eval_batch_size", "16",
         "--data_source", "bundled"]


def train_script(argv) -> int:
  """``experiments/train.py``'s main, in this process (so its registries are ours)."""
  spec = importlib.util.spec_from_file_location("train_script", ROOT / "experiments" / "train.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.main(argv)


def toy_dataset(num_classes=4, shape=(24, 24, 3), n=64):
  def build(config):
    rng = np.random.default_rng(config.seed)
    images = rng.integers(0, 256, (n,) + shape, dtype=np.uint8)
    labels = np.arange(n) % num_classes
    return (ShiftedImages(images, labels, seed=config.seed, num_classes=num_classes),
            ClassificationTest(images[:16], labels[:16], num_classes=num_classes))
  return DatasetSpec(shape, num_classes, 1, 100, build, "random colour squares")


@flax.struct.dataclass
class ToyOutput:
  scores: jax.Array


class ToyBatchNormCaps(nn.Module):
  num_classes: int = 4

  @nn.compact
  def __call__(self, images, labels=None, *, train=False):
    x = nn.Dense(8, name="dense")(images.reshape(images.shape[0], -1))
    x = nn.BatchNorm(use_running_average=not train, momentum=0.9, name="bn")(x)
    caps = nn.Dense(self.num_classes * 4, name="caps")(nn.relu(x))
    v = squash(caps.reshape(-1, self.num_classes, 4))
    return ToyOutput(safe_norm(v, axis=-1))


def toy_loss(out, batch, config, step):
  del config, step
  return margin_loss(out.scores, batch["multi_hot"]), {}


TOY_BN = ModelSpec(build=lambda config, data: ToyBatchNormCaps(data.num_classes),
                   loss=toy_loss, collections=("batch_stats",), description="BatchNorm toy")




class LinearClassifier(nn.Module):
  """Logits from one dense layer on the pixels: trains in a few steps, any image shape."""
  num_classes: int = 10

  @nn.compact
  def __call__(self, images, labels=None, *, train=False):
    return ClassifierOutput(nn.Dense(self.num_classes)(images.reshape(images.shape[0], -1)))


LINEAR = ModelSpec(build=lambda config, data: LinearClassifier(data.num_classes),
                   loss=classifier_loss, description="a linear classifier")
