"""The routing function alone: forward and forward+backward time across
iterations and shapes, on the default device.

  python benchmarks/bench_routing.py [--batch_size 128] [--json]
"""
import argparse
import json
import statistics
import time

import jax
import jax.numpy as jnp

from capsjax.routing import dynamic_routing

SHAPES = {"mnist 28x28": (1152, 10, 16), "multimnist 36x36": (3200, 10, 16)}


def timed(f, *args, repeats=10):
  jax.block_until_ready(f(*args))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(f(*args))
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def main():
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--batch_size", type=int, default=128)
  parser.add_argument("--iters", default="1,2,3,5")
  parser.add_argument("--json", action="store_true")
  args = parser.parse_args()
  if not args.json:
    print(f"# {jax.default_backend()}, batch {args.batch_size}")
    print(f"{'shape':>18} {'iters':>5} {'fwd ms':>8} {'fwd+bwd ms':>10}")
  for name, (n_in, n_out, d) in SHAPES.items():
    u_hat = jax.random.normal(jax.random.key(0), (args.batch_size, n_in, n_out, d)) * 0.05
    for r in (int(x) for x in args.iters.split(",")):
      forward = jax.jit(lambda u, r=r: dynamic_routing(u, r)[0])
      backward = jax.jit(jax.grad(lambda u, r=r: jnp.sum(dynamic_routing(u, r)[0] ** 2)))
      row = {"shape": name, "batch_size": args.batch_size, "iters": r,
             "forward_ms": 1e3 * timed(forward, u_hat),
             "forward_backward_ms": 1e3 * timed(backward, u_hat)}
      print(json.dumps(row) if args.json else
            f"{name:>18} {r:>5} {row['forward_ms']:>8.2f} {row['forward_backward_ms']:>10.2f}")


if __name__ == "__main__":
  main()
