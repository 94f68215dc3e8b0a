"""What the training loop knows of a model: :class:`ModelSpec`, and the :data:`MODELS` registry.

A model is a Flax module called as ``module(images, labels=None, *, train=False)``
whose output has ``scores`` ``(batch, num_classes)`` (capsule lengths or
activations: the larger, the likelier). Its spec says how to build it for a
dataset, what it needs of the data, its loss, and which variable collections
besides ``params`` it keeps (e.g. ``batch_stats``): the train state carries
them, the data-parallel step averages them over devices, checkpoints save them.
"""
from __future__ import annotations

import dataclasses
import functools
import inspect
from typing import Any, Callable

import flax.linen as nn
import jax

from capsjax.registry import Registry
from capsjax.routing import ROUTERS

__all__ = ["ModelSpec", "MODELS", "router_of"]

Batch = dict[str, jax.Array]


def _same(module: nn.Module) -> nn.Module:
  return module


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  """A named model.

  Attributes:
    build: ``(config, dataset) -> module``: the network for a
      :class:`capsjax.training.TrainConfig` and a
      :class:`capsjax.data.DatasetSpec`.
    loss: ``(outputs, batch, config, step) -> (loss (B,), {name: (B,)})``:
      the per-example loss and per-example terms to log; ``step`` is the
      optimizer step (a scalar array), for losses with a schedule.
    collections: variable collections besides ``params`` that the model
      updates in training (``("batch_stats",)`` for BatchNorm).
    rngs: the PRNG streams the model draws from in training (``("dropout",)``);
      the train step derives each from the seed, the step and the device.
    image_shape: the ``(H, W, C)`` it needs, or None for any.
    num_classes: the number of classes it needs, or None for any.
    max_labels: the most labels per example it handles, or None for any.
    eval_module: ``module -> module`` used for evaluation (e.g. without the
      decoder, which accuracy does not need).
    routers: the registry ``--routing`` names a router in (vector-capsule
      :data:`capsjax.routing.ROUTERS`, or ``MATRIX_ROUTERS``).
    default_routing: the router name ``--routing`` defaults to for this model.
    description: one line for ``--help`` and the docs.
  """
  build: Callable[[Any, Any], nn.Module]
  loss: Callable[[Any, Batch, Any], tuple[jax.Array, dict[str, jax.Array]]]
  collections: tuple[str, ...] = ()
  rngs: tuple[str, ...] = ()
  image_shape: tuple[int, int, int] | None = None
  num_classes: int | None = None
  max_labels: int | None = None
  eval_module: Callable[[nn.Module], nn.Module] = _same
  routers: Registry = ROUTERS
  default_routing: str = "dynamic"
  description: str = ""

  def mismatch(self, dataset) -> str | None:
    """Why this model cannot train on ``dataset`` (a DatasetSpec), or None."""
    if self.image_shape is not None and tuple(dataset.image_shape) != tuple(self.image_shape):
      return f"needs images {self.image_shape}, the dataset has {dataset.image_shape}"
    if self.num_classes is not None and dataset.num_classes != self.num_classes:
      return f"needs {self.num_classes} classes, the dataset has {dataset.num_classes}"
    if self.max_labels is not None and dataset.labels_per_example > self.max_labels:
      return (f"handles at most {self.max_labels} labels per example, the dataset has "
              f"{dataset.labels_per_example}")
    return None


MODELS: Registry[ModelSpec] = Registry("model", "capsjax.models.MODELS")


# Router options a config can set: boolean config fields, passed to the router
# under the same name when true.
ROUTER_OPTIONS = ("stop_gradient_inner", "scaled_inverse_temperature")


def router_of(config) -> Callable:
  """The router ``config.routing`` names in the model's registry, with the
  options the config sets; a ``ValueError`` names a router that lacks one."""
  router = config.routers.get(config.routing)
  options = {name: True for name in ROUTER_OPTIONS if getattr(config, name)}
  if not options:
    return router
  try:
    params = inspect.signature(router).parameters
  except (TypeError, ValueError):
    params = {}
  takes_any = any(p.kind == p.VAR_KEYWORD for p in params.values())
  for name in options:
    if name not in params and not takes_any:
      owner = {"stop_gradient_inner": "the dynamic router",
               "scaled_inverse_temperature": "EM routing"}.get(name, "other routers")
      raise ValueError(f"--{name} is an option of {owner}; --routing "
                       f"{config.routing} does not take it.")
  return functools.partial(router, **options)
