"""The parts of a CapsNet train step, timed alone (batch 32 by default).

  python benchmarks/bench_parts.py [--batch_size 32] [--routing_iters 3]

- the three GEMMs of the PrimaryCaps convolution (forward ``P W``, kernel
  gradient ``P^T dy``, patch gradient ``dy W^T``) against a 2048^3 matmul, in
  GFLOP/s: what caps the step's MFU;
- the routing half (DenseCaps with its router, decoder, margin + reconstruction
  loss) from the primary capsules' pre-activations: forward, and forward + backward;
- Adam over CapsNet's parameters.

Medians of interleaved timings; only public capsjax functions, so the same
script times an older checkout.
"""
from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from capsjax.layers import Decoder, DenseCaps, mask_capsules
from capsjax.losses import margin_loss, reconstruction_loss
from capsjax.routing import safe_norm, squash


def median_ms(fns: dict, repeats: int) -> dict:
  """``{name: (f, args)}`` -> ``{name: median ms}``, calls interleaved."""
  for f, args in fns.values():
    jax.block_until_ready(f(*args))
  times = {name: [] for name in fns}
  for _ in range(repeats):
    for name, (f, args) in fns.items():
      start = time.perf_counter()
      jax.block_until_ready(f(*args))
      times[name].append(time.perf_counter() - start)
  return {name: 1e3 * statistics.median(t) for name, t in times.items()}


def gemms(batch_size: int, repeats: int) -> None:
  rng = np.random.default_rng(0)
  m, k, n = batch_size * 36, 81 * 256, 256   # 6x6 outputs, 9x9x256 patches, 256 channels
  p = jnp.asarray(rng.normal(size=(m, k)), jnp.float32)
  dy = jnp.asarray(rng.normal(size=(m, n)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(k, n)), jnp.float32)
  square = jnp.ones((2048, 2048), jnp.float32)
  fns = {
      "2048^3 matmul": (jax.jit(lambda a: a @ a), (square,)),
      "forward P W": (jax.jit(lambda p, w: p @ w), (p, w)),
      "kernel gradient P^T dy": (jax.jit(lambda p, dy: p.T @ dy), (p, dy)),
      "patch gradient dy W^T": (jax.jit(lambda dy, w: dy @ w.T), (dy, w)),
  }
  flops = {"2048^3 matmul": 2 * 2048 ** 3}
  for ms_name, ms in median_ms(fns, repeats).items():
    f = flops.get(ms_name, 2 * m * k * n)
    print(f"{ms_name:>24} {ms:8.1f} ms {f / ms / 1e6:8.0f} GFLOP/s")


def routing_half(batch_size: int, routing_iters: int, repeats: int) -> None:
  rng = np.random.default_rng(0)
  y = jnp.asarray(rng.normal(size=(batch_size, 6, 6, 256)), jnp.float32)
  labels = jnp.asarray(rng.integers(0, 10, (batch_size, 1)), jnp.int32)
  images = jnp.asarray(rng.uniform(size=(batch_size, 28, 28, 1)), jnp.float32)
  caps, decoder = DenseCaps(routing_iters=routing_iters), Decoder(28, 28, 1)
  u = squash(y.reshape(batch_size, -1, 8))
  caps_params = caps.init(jax.random.key(0), u)
  v, _ = caps.apply(caps_params, u)
  decoder_params = decoder.init(jax.random.key(1), mask_capsules(v, safe_norm(v), labels, 1)[0])

  def loss(params, y):
    v, _ = caps.apply(params[0], squash(y.reshape(batch_size, -1, 8)))
    lengths = safe_norm(v)
    recon = decoder.apply(params[1], mask_capsules(v, lengths, labels, 1)[0])
    return jnp.sum(margin_loss(lengths, jax.nn.one_hot(labels[:, 0], 10))
                   + 0.0005 * reconstruction_loss(recon[:, 0], images))

  params = (caps_params, decoder_params)
  sizes = [(9, 9, 1, 256), (256,), (9, 9, 256, 256), (256,), (1152, 10, 16, 8), (160, 512),
           (512,), (512, 1024), (1024,), (1024, 784), (784,)]
  all_params = [jnp.ones(s, jnp.float32) for s in sizes]
  tx = optax.adam(1e-3)
  adam = jax.jit(lambda p, s: optax.apply_updates(p, tx.update(p, s, p)[0]))
  fns = {
      f"routing half, forward ({routing_iters} it.)": (jax.jit(loss), (params, y)),
      f"routing half, fwd + bwd ({routing_iters} it.)":
          (jax.jit(jax.grad(loss, argnums=(0, 1))), (params, y)),
      "Adam, CapsNet's parameters": (adam, (all_params, tx.init(all_params))),
  }
  for name, ms in median_ms(fns, repeats).items():
    print(f"{name:>34} {ms:8.1f} ms")


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--batch_size", type=int, default=32)
  parser.add_argument("--routing_iters", type=int, default=3)
  parser.add_argument("--repeats", type=int, default=7)
  args = parser.parse_args()
  print(f"# {jax.default_backend()} x{jax.device_count()}, batch {args.batch_size}")
  gemms(args.batch_size, args.repeats)
  routing_half(args.batch_size, args.routing_iters, args.repeats)


if __name__ == "__main__":
  main()
