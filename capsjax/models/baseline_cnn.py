"""The convolutional baselines of "Dynamic Routing Between Capsules" (Sabour,
Frosst & Hinton, 2017), registered as ``"baseline_cnn"``: one architecture per
dataset, chosen from :data:`BASELINES` by ``--dataset``.

``mnist`` and ``fashion_mnist``, the paper's MNIST baseline (§5): three 5x5
stride-1 convolutions of 256, 256 and 128 channels, fully connected 328 and
192, dropout, a 10-way softmax with cross-entropy. Only SAME padding without
pooling gives the paper's 35.4M parameters:

  conv1 5*5*1*256 + 256 = 6,656          conv2 5*5*256*256 + 256 = 1,638,656
  conv3 5*5*256*128 + 128 = 819,328      fc1 28*28*128*328 + 328 = 32,915,784
  fc2 328*192 + 192 = 63,168             logits 192*10 + 10 = 1,930
  total 35,445,522 (the paper: 35.4M)

``multimnist``, the official code's ``conv_model.py`` (the paper gives only
its 24.56M parameters): 5x5 SAME convolutions of 512 and 256 channels, each
followed by ReLU and 2x2 max pooling (stride 2, SAME), fully connected 1024,
10 logits, sigmoid cross-entropy on the two labels:

  conv1 5*5*1*512 + 512 = 13,312         conv2 5*5*512*256 + 256 = 3,277,056
  fc1 9*9*256*1024 + 1024 = 21,234,688   logits 1024*10 + 10 = 10,250
  total 24,535,306 (the paper: 24.56M; no padding or pooling choice of these
  layers gives 24.56M exactly)

``mnist40`` (the affNIST experiment, §5.2: "a traditional convolutional model
with a similar number of parameters" as CapsNet on 40x40, 13,475,648 with its
decoder): the MNIST baseline's convolutions with 2x2 max pooling after the
first and second (40 -> 20 -> 10, so the step costs about as much as
CapsNet's), fc1 widened to 848:

  convolutions 6,656 + 1,638,656 + 819,328 = 2,464,640
  fc1 10*10*128*848 + 848 = 10,855,248   fc2 848*192 + 192 = 163,008
  logits 1,930; total 13,484,826

Shapes: image ``(B, H, W, C)`` -> logits ``(B, num_classes)``.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from capsjax.layers import Conv
from capsjax.models.registry import MODELS, ModelSpec
from capsjax.registry import Registry

__all__ = ["BaselineCNN", "BaselineLayers", "BASELINES", "ClassifierOutput", "classifier_loss"]

Dtype = Any


@dataclasses.dataclass(frozen=True)
class BaselineLayers:
  """One baseline's layers, as data.

  Attributes:
    convs: ``(features, pool)`` of each 5x5 SAME convolution (ReLU after it);
      ``pool`` adds 2x2 max pooling with stride 2.
    hidden: the widths of the fully connected ReLU layers.
    dropout: the dropout rate before the logits (0: none).
    official_init: the official code's initialisers (truncated normals of
      stddev 0.05 for convolutions and 0.1 for dense layers, biases 0.1);
      otherwise Flax's (LeCun normal, zero biases).
  """
  convs: tuple[tuple[int, bool], ...]
  hidden: tuple[int, ...]
  dropout: float = 0.0
  official_init: bool = False


# The paper names no dropout rate; 0.5 is the usual one.
_PAPER_MNIST = BaselineLayers(convs=((256, False), (256, False), (128, False)),
                              hidden=(328, 192), dropout=0.5)
BASELINES: dict[str, BaselineLayers] = {
    "mnist": _PAPER_MNIST,
    "fashion_mnist": _PAPER_MNIST,
    "multimnist": BaselineLayers(convs=((512, True), (256, True)), hidden=(1024,),
                                 official_init=True),
    "mnist40": BaselineLayers(convs=((256, True), (256, True), (128, False)),
                              hidden=(848, 192), dropout=0.5),
}
KERNEL = 5


@flax.struct.dataclass
class ClassifierOutput:
  """What :class:`BaselineCNN` returns: ``logits (B, num_classes)``."""
  logits: jax.Array

  @property
  def scores(self) -> jax.Array:
    """The class scores ``(B, num_classes)``: the logits."""
    return self.logits


class BaselineCNN(nn.Module):
  """A convolutional classifier of :class:`BaselineLayers`.

  Attributes:
    layers: the architecture (one of :data:`BASELINES`).
    num_classes: the number of logits.
    dtype: compute dtype; parameters float32, logits float32.
    conv_impl: see :func:`capsjax.conv.conv2d`.
  """
  layers: BaselineLayers
  num_classes: int = 10
  dtype: Dtype = jnp.float32
  conv_impl: str = "auto"

  @nn.compact
  def __call__(self, images: jax.Array, labels: jax.Array | None = None, *,
               train: bool = False) -> ClassifierOutput:
    del labels  # no decoder
    if images.ndim != 4:
      raise ValueError(
          f"images must be (batch, H, W, C); got {images.shape}. Add a channel "
          "axis with images[..., None].")
    official = self.layers.official_init
    conv_init = nn.initializers.truncated_normal(0.05) if official else nn.initializers.lecun_normal()
    dense_init = nn.initializers.truncated_normal(0.1) if official else nn.initializers.lecun_normal()
    bias_init = nn.initializers.constant(0.1) if official else nn.initializers.zeros
    x = images.astype(self.dtype)
    half = KERNEL // 2
    for i, (features, pool) in enumerate(self.layers.convs, start=1):
      # SAME padding for a stride-1 5x5 kernel, then the VALID convolution.
      x = jnp.pad(x, ((0, 0), (half, half), (half, half), (0, 0)))
      x = nn.relu(Conv(features, KERNEL, 1, self.dtype, self.conv_impl, kernel_init=conv_init,
                       bias_init=bias_init, name=f"conv{i}")(x))
      if pool:
        x = nn.max_pool(x, (2, 2), strides=(2, 2), padding="SAME")
    x = x.reshape(x.shape[0], -1)
    for i, width in enumerate(self.layers.hidden, start=1):
      x = nn.relu(nn.Dense(width, dtype=self.dtype, kernel_init=dense_init, bias_init=bias_init,
                           name=f"fc{i}")(x))
    if self.layers.dropout:
      x = nn.Dropout(self.layers.dropout, deterministic=not train)(x)
    logits = nn.Dense(self.num_classes, dtype=self.dtype, kernel_init=dense_init,
                      bias_init=bias_init, name="logits")(x)
    return ClassifierOutput(logits.astype(jnp.float32))


def classifier_loss(out: ClassifierOutput, batch, config, step=None) -> tuple[jax.Array, dict]:
  """Softmax cross-entropy on the label, or with several labels per example
  (MultiMNIST) sigmoid cross-entropy summed over the classes, per example."""
  del config, step
  if batch["labels"].shape[1] == 1:
    loss = optax.softmax_cross_entropy_with_integer_labels(out.logits, batch["labels"][:, 0])
  else:
    loss = jnp.sum(optax.sigmoid_binary_cross_entropy(out.logits, batch["multi_hot"]), axis=-1)
  return loss, {"cross_entropy": loss}


# The baselines route nothing: their --routing registry holds "none" alone.
NO_ROUTING: Registry = Registry("router", "capsjax.models.baseline_cnn.NO_ROUTING")


@NO_ROUTING.register("none")
def no_routing(*args, **kwargs):
  raise TypeError("the baseline CNNs have no routing.")


def build_baseline_cnn(config, dataset) -> BaselineCNN:
  if config.dataset not in BASELINES:
    raise ValueError(f"--model baseline_cnn has layers for --dataset "
                     f"{', '.join(BASELINES)}; got --dataset {config.dataset}.")
  return BaselineCNN(BASELINES[config.dataset], num_classes=dataset.num_classes,
                     dtype=config.compute_dtype)


MODELS.register("baseline_cnn", ModelSpec(
    build=build_baseline_cnn, loss=classifier_loss, rngs=("dropout",), routers=NO_ROUTING,
    default_routing="none",
    description="the convolutional baselines of Sabour et al. (2017), one per dataset"))
