"""The data-parallel layout: one mesh axis, ``DATA_AXIS``, over all devices.

The train and eval steps map the batch over it; layers that reduce over the
batch (BatchNorm) name it to see the whole global batch.
"""
from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

__all__ = ["DATA_AXIS", "make_mesh", "shard_batch"]

DATA_AXIS = "data"


def make_mesh(devices=None) -> Mesh:
  """A 1-D mesh ``('data',)`` over all devices (of all processes)."""
  devices = np.asarray(jax.devices() if devices is None else devices)
  return Mesh(devices, (DATA_AXIS,))


def shard_batch(batch: dict[str, Any], mesh: Mesh, block: bool = False) -> dict[str, jax.Array]:
  """Places this process's slice of the global batch on the mesh.

  On one host the slice is the whole batch; on several, each process passes
  the rows it built (see ``MultiMNIST.batch(process_index=...)``). With
  ``block=True`` every array is a block ``(k, rows, ...)`` of ``k`` batches
  (for ``make_train_step(..., steps_per_call=k)``), split over the rows.
  """
  sharding = NamedSharding(mesh, P(None, DATA_AXIS) if block else P(DATA_AXIS))
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()}
