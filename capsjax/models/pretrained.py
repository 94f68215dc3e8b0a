"""Trained models: the :data:`PRETRAINED` registry and :func:`pretrained`.

  from capsjax.models import pretrained
  module, variables = pretrained("NAME")
  out = module.apply(variables, images)        # images (batch, H, W, C) in [0, 1]

An entry is the configuration of the run that trained it (``TrainConfig``
fields), a file of its variables (Flax msgpack: the parameters and the model
state, e.g. BatchNorm statistics), the file's SHA256, checked on every load,
and the test accuracy the docs give for it. Files shipped with capsjax live in
``capsjax/models/weights/``; an entry may also name an absolute path.

  python experiments/export_pretrained.py --workdir runs/RUN --out FILE
  python experiments/evaluate.py --pretrained NAME

The first writes a run's latest checkpoint as such a file and prints its
entry; the second evaluates a registered model on its test set.
"""
from __future__ import annotations

import dataclasses
import hashlib
import pathlib
from typing import Any, Mapping

from capsjax.registry import Registry

__all__ = ["PRETRAINED", "PretrainedModel", "PretrainedFileError", "pretrained",
           "weights_path", "variables_to_bytes"]

WEIGHTS_DIR = pathlib.Path(__file__).parent / "weights"


class PretrainedFileError(RuntimeError):
  """A pretrained model's file is missing, altered or does not fit its network."""


@dataclasses.dataclass(frozen=True)
class PretrainedModel:
  """A trained model: its run's ``config``, its ``file`` (relative to
  ``capsjax/models/weights/`` or absolute), the file's ``sha256`` and its
  ``test_accuracy`` on the test split of ``config["dataset"]``."""
  config: Mapping[str, Any]
  file: str
  sha256: str
  test_accuracy: float
  doc: str = ""


PRETRAINED: Registry[PretrainedModel] = Registry("pretrained model", "capsjax.models.PRETRAINED")


def weights_path(entry: PretrainedModel) -> pathlib.Path:
  return WEIGHTS_DIR / entry.file


def variables_to_bytes(variables: Mapping[str, Any]) -> bytes:
  """The file format of :func:`pretrained`: Flax msgpack of ``{"params": ..., **state}``."""
  import flax.serialization  # pylint: disable=import-outside-toplevel
  import jax  # pylint: disable=import-outside-toplevel
  return flax.serialization.msgpack_serialize(jax.device_get(dict(variables)))


def pretrained(name: str):
  """``(module, variables)`` of the registered model ``name``.

  ``module`` is the Flax network as its run built it; ``variables`` its
  parameters and model state. Raises :class:`PretrainedFileError` when the
  file is missing, its SHA256 differs from the registered one, or its arrays
  do not fit the network.
  """
  import flax.serialization  # pylint: disable=import-outside-toplevel
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from capsjax.training import TrainConfig, make_model  # pylint: disable=import-outside-toplevel

  entry = PRETRAINED.get(name)
  path = weights_path(entry)
  if not path.is_file():
    raise PretrainedFileError(
        f"pretrained model {name!r}: {path} is missing; reinstall capsjax (pip install -e .) "
        "or, for a model of your own, register the path of its file.")
  data = path.read_bytes()
  digest = hashlib.sha256(data).hexdigest()
  if digest != entry.sha256:
    raise PretrainedFileError(
        f"pretrained model {name!r}: {path} has SHA256 {digest}, not the registered "
        f"{entry.sha256}; the file is altered or truncated. Reinstall capsjax, or re-export "
        "it with experiments/export_pretrained.py and register the new checksum.")
  config = TrainConfig.from_dict(dict(entry.config))
  module = make_model(config)
  images = jax.ShapeDtypeStruct((1, *config.data.image_shape), jnp.float32)
  expected = jax.eval_shape(module.init, jax.random.key(0), images)
  loaded = flax.serialization.msgpack_restore(data)
  want = {jax.tree_util.keystr(k): (v.shape, v.dtype)
          for k, v in jax.tree_util.tree_leaves_with_path(expected)}
  got = {jax.tree_util.keystr(k): (v.shape, v.dtype)
         for k, v in jax.tree_util.tree_leaves_with_path(loaded)}
  if want != got:
    wrong = sorted(set(want.items()) ^ set(got.items()))[:3]
    raise PretrainedFileError(
        f"pretrained model {name!r}: the arrays in {path} do not fit the network its config "
        f"builds (first differences: {wrong}); register the config the file was trained with.")
  return module, jax.tree.map(jnp.asarray, loaded)


PRETRAINED.register("efficient_capsnet_mnist", PretrainedModel(
    config=dict(model="efficient_capsnet", dataset="mnist_augmented", routing="self_attention",
                batch_size=16, epochs=150, lr=5e-4, lr_decay_rate=0.97, lr_decay_steps=3750,
                lr_staircase=True, lr_min=5e-5, adam_eps=1e-7, recon_weight=0.0005,
                eval_every=3750, checkpoint_every=3750, data_source="bundled"),
    file="efficient_capsnet_mnist.msgpack",
    sha256="cb656e567ec99098dac8fe93f53b802560a6ca68717518bfa85de0c5f636b82f",
    test_accuracy=0.9965,
    doc="Efficient-CapsNet (161,824 parameters; 1,573,168 with its decoder; and its BatchNorm "
        "statistics) after the official 150-epoch MNIST protocol, --config "
        "efficient_capsnet_mnist: the final parameters (the last epoch, not the best)."))
