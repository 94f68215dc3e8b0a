"""The pictures a run writes to its workdir: reconstructions (Fig. 5),
perturbations of one class capsule (Fig. 4) and the training curves.

Each is drawn when the model has what it needs: reconstructions when its
output has ``reconstructions``, perturbations when it also has a
``make_decoder`` (as :class:`capsjax.models.CapsNet`), curves always.
"""
from __future__ import annotations

import pathlib

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["write_pictures"]


def write_pictures(model, variables, test, workdir: pathlib.Path,
                   num_examples: int = 8) -> list[pathlib.Path]:
  """Writes the pictures for ``model`` with ``variables`` on the first test examples."""
  from capsjax import plots  # pylint: disable=import-outside-toplevel - matplotlib is slow to import
  if jax.process_index() != 0:
    return []
  paths = []
  batch = next(test.batches(num_examples))
  variables = jax.device_get(variables)
  images = jnp.asarray(batch["image"])
  true = model.apply(variables, images, jnp.asarray(batch["labels"]))
  if getattr(true, "reconstructions", None) is not None:
    pred = model.apply(variables, images)
    paths.append(workdir / "reconstructions.png")
    plots.plot_reconstructions(paths[-1], batch["image"], batch["labels"],
                               np.asarray(true.reconstructions), np.asarray(pred.masked_labels),
                               np.asarray(pred.reconstructions))
    if hasattr(model, "make_decoder"):
      # Perturb each dimension of the first example's first true capsule.
      label = int(batch["labels"][0, 0])
      v = np.asarray(true.digit_caps[0])                         # (classes, dims)
      num_classes, dims = v.shape
      deltas = plots.PERTURBATIONS
      masked = np.zeros((dims, len(deltas), num_classes, dims), np.float32)
      masked[:, :, label] = v[label]
      masked[np.arange(dims), :, label, np.arange(dims)] += deltas
      decoder = model.make_decoder(*images.shape[1:])
      grid = decoder.apply({"params": variables["params"]["decoder"]}, jnp.asarray(masked))
      paths.append(workdir / "perturbations.png")
      plots.plot_perturbations(paths[-1], np.asarray(grid), label)
  if (workdir / "metrics.jsonl").exists():
    paths.append(workdir / "curves.png")
    plots.plot_curves(workdir / "metrics.jsonl", paths[-1])
  return paths
