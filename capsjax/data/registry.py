"""Datasets by name: :class:`DatasetSpec` and the :data:`DATASETS` registry.

A spec says what a model needs to know (image shape, classes, labels per
example), the learning-rate decay period its runs default to, and how to
build ``(train, test)`` from a config: ``train.batch(step, batch_size, *,
process_index, process_count)`` and ``len(train)``; ``test.batches(batch_size)``
and ``len(test)``, in the batch layout of :mod:`capsjax.data.images`.

``tfds:NAME`` names any prepared tensorflow-datasets image-classification
dataset; its spec is read from the prepared dataset's features.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import numpy as np

from capsjax.data.affnist import affnist_synthetic, load_affnist
from capsjax.data.augment import efficient_capsnet_augment
from capsjax.data.canvas import CanvasImages, place_randomly
from capsjax.data.classification_test import ClassificationTest
from capsjax.data.errors import DataError
from capsjax.data.images import standardise
from capsjax.data.mnist import load_idx_dataset
from capsjax.data.multimnist import MultiMNIST
from capsjax.data.shifted import AugmentedImages, ShiftedImages
from capsjax.data.smallnorb import centre_crop, load_smallnorb, smallnorb_augment
from capsjax.data.tfds_images import load_tfds_split, tfds_info
from capsjax.registry import Registry

__all__ = ["DatasetSpec", "DATASETS", "get_dataset", "MULTIMNIST_TEST_SEED", "MNIST40_TEST_SEED",
           "AFFNIST_SYNTHETIC_SEED", "TFDS_PREFIX"]

# Test sets drawn at random do not depend on the training seed.
MULTIMNIST_TEST_SEED = 2017
MNIST40_TEST_SEED = 40
AFFNIST_SYNTHETIC_SEED = 2013
TFDS_PREFIX = "tfds:"


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  """A named dataset.

  Attributes:
    image_shape: ``(H, W, C)`` of every image.
    num_classes: the number of classes.
    labels_per_example: ``K``, the labels of every example (2 for MultiMNIST).
    decay_steps: the default learning-rate decay period, in steps.
    build: ``config -> (train, test)``; reads ``config.data_source``,
      ``mnist_dir``, ``seed``, ``test_subset`` and ``test_pairs_per_digit``.
    description: one line for ``--help`` and the docs.
    evaluates: for a test set without a training split (its ``build`` returns
      ``(None, test)``), the dataset to train on before evaluating on it.
  """
  image_shape: tuple[int, int, int]
  num_classes: int
  labels_per_example: int
  decay_steps: int
  build: Callable[[Any], tuple[Any, Any]]
  description: str = ""
  evaluates: str = ""

  def same_task(self, other: "DatasetSpec") -> bool:
    """Whether a model trained on this dataset can be evaluated on ``other``."""
    return (tuple(self.image_shape), self.num_classes, self.labels_per_example) == (
        tuple(other.image_shape), other.num_classes, other.labels_per_example)


DATASETS: Registry[DatasetSpec] = Registry("dataset", "capsjax.data.DATASETS")


def get_dataset(name: str) -> DatasetSpec:
  """The spec of ``name``: registered, or ``tfds:NAME`` (read from the prepared dataset)."""
  if name.startswith(TFDS_PREFIX):
    return _tfds_spec(name[len(TFDS_PREFIX):])
  return DATASETS.get(name)


def _test_subset(images, labels, config):
  if config.test_subset:
    return images[:config.test_subset], labels[:config.test_subset]
  return images, labels


def _idx_splits(name: str, config):
  kwargs = dict(source=config.data_source, directory=config.mnist_dir or None)
  train = load_idx_dataset(name, "train", **kwargs)
  test = _test_subset(*load_idx_dataset(name, "test", **kwargs), config)
  return train, test


def _single_label(name: str, config):
  (train_x, train_y), (test_x, test_y) = _idx_splits(name, config)
  return (ShiftedImages(train_x, train_y, seed=config.seed),
          ClassificationTest(test_x, test_y))


def _augmented_mnist(config):
  # Pixels / 256, as the official Efficient-CapsNet pre-processing.
  (train_x, train_y), (test_x, test_y) = _idx_splits("mnist", config)
  return (AugmentedImages(train_x, train_y, seed=config.seed, augment=efficient_capsnet_augment,
                          pixel_scale=1 / 256),
          ClassificationTest(test_x, test_y, pixel_scale=1 / 256))


def _multimnist(config):
  (train_x, train_y), (test_x, test_y) = _idx_splits("mnist", config)
  train = MultiMNIST(train_x, train_y, seed=config.seed)
  try:
    test = MultiMNIST(test_x, test_y, seed=MULTIMNIST_TEST_SEED)
  except ValueError as e:
    raise DataError(
        f"--test_subset {config.test_subset}: {e} Use a larger --test_subset (100 holds "
        "every class) or 0 for the whole test split.") from None
  return train, test.test_set(config.test_pairs_per_digit)


def _mnist40(config):
  (train_x, train_y), (test_x, test_y) = _idx_splits("mnist", config)
  placed = place_randomly(test_x[..., None], MNIST40_TEST_SEED, np.arange(len(test_y)), 40)
  return CanvasImages(train_x, train_y, seed=config.seed), ClassificationTest(placed, test_y)


def _affnist_synthetic(config):
  _, (test_x, test_y) = _idx_splits("mnist", config)
  return None, ClassificationTest(affnist_synthetic(test_x, AFFNIST_SYNTHETIC_SEED), test_y)


def _affnist(config):
  return None, ClassificationTest(*_test_subset(*load_affnist(config.affnist_dir or None),
                                                config))


DATASETS.register("mnist", DatasetSpec(
    (28, 28, 1), 10, 1, 2000, lambda config: _single_label("mnist", config),
    "MNIST, 28x28, shifted by up to 2 px in training (the paper)"))
DATASETS.register("fashion_mnist", DatasetSpec(
    (28, 28, 1), 10, 1, 2000, lambda config: _single_label("fashion_mnist", config),
    "Fashion-MNIST, 28x28, shifted by up to 2 px in training"))
DATASETS.register("mnist40", DatasetSpec(
    (40, 40, 1), 10, 1, 2000, _mnist40,
    "expanded MNIST (the paper's §5.2): each digit at a random position on a 40x40 black "
    "canvas, a new one each time it is drawn; the test digits at fixed random positions"))
DATASETS.register("affnist", DatasetSpec(
    (40, 40, 1), 10, 1, 2000, _affnist,
    "affNIST's test set (320,000 affine-transformed MNIST test digits, 40x40) from its .mat "
    "files (--affnist_dir); evaluation only, after training on mnist40",
    evaluates="mnist40"))
DATASETS.register("affnist_synthetic", DatasetSpec(
    (40, 40, 1), 10, 1, 2000, _affnist_synthetic,
    "an approximation of affNIST made offline: each MNIST test digit under one random "
    "affine transformation of affNIST's ranges, 40x40; evaluation only", evaluates="mnist40"))
DATASETS.register("mnist_augmented", DatasetSpec(
    (28, 28, 1), 10, 1, 3750, _augmented_mnist,
    "MNIST with Efficient-CapsNet's augmentation: rotation, shift within the margins, width "
    "squish, erasure; pixels / 256 (decay period: one epoch of batch 16)"))


def _smallnorb(config):
  train_x, train_y = load_smallnorb("train")
  test_x, test_y = _test_subset(*load_smallnorb("test"), config)
  return (AugmentedImages(train_x, train_y, seed=config.seed, augment=smallnorb_augment,
                          num_classes=5),
          ClassificationTest(test_x, test_y, num_classes=5,
                             transform=lambda images: centre_crop(standardise(images))))


DATASETS.register("smallnorb", DatasetSpec(
    (32, 32, 1), 5, 1, 20_000, _smallnorb,
    "smallNORB through tensorflow-datasets (prepared once): 48x48, random 32x32 crops with "
    "brightness and contrast in training, the centre crop at test (the EM-routing paper)"))
DATASETS.register("multimnist", DatasetSpec(
    (36, 36, 1), 10, 2, 20_000, _multimnist,
    "MultiMNIST: pairs of overlapping MNIST digits, 36x36 (the paper, section 6)"))


def _tfds_spec(name: str) -> DatasetSpec:
  info = tfds_info(name)

  def build(config):
    train = load_tfds_split(name, "train")
    test = _test_subset(*load_tfds_split(name, "test"), config)
    return (ShiftedImages(*train, seed=config.seed, num_classes=info["num_classes"]),
            ClassificationTest(*test, num_classes=info["num_classes"]))

  return DatasetSpec(info["image_shape"], info["num_classes"], 1, 2000, build,
                     f"tensorflow-datasets '{name}', prepared")
