"""Counter-based randomness: every random number is a pure function of
``(seed, index, stream)``, so a batch is the same on any machine and device
count, and each host of a multi-host run can build just its own rows."""
from __future__ import annotations

import functools

import numpy as np

__all__ = ["randint", "uniform", "normal", "epoch_order", "global_indices", "mix64"]


def mix64(x: np.ndarray) -> np.ndarray:
  """splitmix64 finaliser, elementwise on uint64 (wrapping arithmetic)."""
  with np.errstate(over="ignore"):
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _hash(seed: int, index: np.ndarray, stream: int) -> np.ndarray:
  """Independent uint64 random words for each ``index`` in ``stream``."""
  mask = 0xFFFFFFFFFFFFFFFF
  key = mix64(np.uint64((seed + 0x9E3779B97F4A7C15 * (stream + 1)) & mask))
  with np.errstate(over="ignore"):
    return mix64(index.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15) ^ key)


def randint(seed: int, index: np.ndarray, stream: int, n: int | np.ndarray) -> np.ndarray:
  """Uniform integers in ``[0, n)`` (``n`` may vary per index), int64 like ``index``."""
  return (_hash(seed, index, stream) % np.asarray(n, np.uint64)).astype(np.int64)


@functools.lru_cache(maxsize=4)
def _epoch_permutation(seed: int, epoch: int, n: int) -> np.ndarray:
  return np.random.default_rng([seed, epoch, 0x6361_7073]).permutation(n)


def epoch_order(seed: int, n: int, index: np.ndarray) -> np.ndarray:
  """Example ``index`` of an endless stream that visits all ``n`` once per epoch."""
  epochs, positions = np.divmod(index, n)
  out = np.empty_like(index)
  for epoch in np.unique(epochs):
    sel = epochs == epoch
    out[sel] = _epoch_permutation(seed, int(epoch), n)[positions[sel]]
  return out


def global_indices(step: int, batch_size: int, process_index: int = 0,
                   process_count: int = 1) -> np.ndarray:
  """The stream indices of this process's rows of global batch ``step``, int64."""
  if step < 0 or batch_size < 1:
    raise ValueError(f"need step >= 0 and batch_size >= 1, got {step}, {batch_size}.")
  if batch_size % process_count:
    raise ValueError(
        f"global batch_size {batch_size} is not divisible by process_count {process_count}.")
  local = batch_size // process_count
  start = step * batch_size + process_index * local
  return np.arange(start, start + local, dtype=np.int64)


def uniform(seed: int, index: np.ndarray, stream: int) -> np.ndarray:
  """Uniform float64 in ``[0, 1)`` for each ``index`` in ``stream`` (53 random bits)."""
  return (_hash(seed, index, stream) >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def normal(seed: int, index: np.ndarray, stream: int) -> np.ndarray:
  """Standard normal float64 for each ``index`` in ``stream`` (Box-Muller on two
  uniforms of the streams ``2 * stream`` and ``2 * stream + 1`` offset by 1000)."""
  u1 = uniform(seed, index, 1000 + 2 * stream)
  u2 = uniform(seed, index, 1001 + 2 * stream)
  return np.sqrt(-2.0 * np.log1p(-u1)) * np.cos(2 * np.pi * u2)
