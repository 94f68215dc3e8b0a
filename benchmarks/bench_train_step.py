"""Train-step benchmark: compile time, step time, images/s, FLOPs and MFU.

Runs the library's own data-parallel train step (a registered model, default
CapsNet, with its decoder and loss, Adam) on all devices, on synthetic data.
Unchanged on CPU, GPU and TPU. CapsNet's FLOPs are counted analytically; other
models' are XLA's cost analysis of the compiled step. MFU is against a 2048^3
matmul timed just before each row (shared machines drift within a run);
``--peak_tflops`` adds one against the chip's nominal peak.

  python benchmarks/bench_train_step.py                       # table
  python benchmarks/bench_train_step.py --torch               # + PyTorch peer, ratio
  python benchmarks/bench_train_step.py --model efficient_capsnet --sizes 28 --routing 1 \
      --batch_sizes 16 --steps_per_call 1,10 --torch --keras Efficient-CapsNet \
      --peer_python peers/bin/python                        # + the authors' Keras model
  python benchmarks/bench_train_step.py --sizes 28 --batch_sizes 128 --json
  python benchmarks/bench_train_step.py --conv_impl xla       # native conv (slow on CPU)
  python benchmarks/bench_train_step.py --model efficient_capsnet --sizes 28 --routing 1
  python benchmarks/bench_train_step.py --precisions fp32,bf16 --batch_sizes 128,512,1024 \
      --steps_per_call 1,10 --peak_tflops 989 --json        # on one H200
"""
from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from capsjax.conv import CONV_IMPLS, default_conv_impl
from capsjax.training import (
    TrainConfig, init_state, make_mesh, make_model, make_optimizer, make_train_step, shard_batch)


def analytic_flops_per_image(size: int, routing_iters: int) -> float:
  """Forward FLOPs (2 per multiply-add) of the matmul-like parts; x3 for a train step."""
  conv1 = (size - 8) ** 2 * 81 * 1 * 256 * 2
  prim_hw = ((size - 8) - 9) // 2 + 1
  primary = prim_hw ** 2 * 81 * 256 * 256 * 2
  n_in = prim_hw ** 2 * 32
  u_hat = n_in * 10 * 16 * 8 * 2
  routing = routing_iters * n_in * 10 * 16 * 2 * 2   # weighted sums and agreements
  k = 2 if size == 36 else 1
  decoder = k * (160 * 512 + 512 * 1024 + 1024 * size * size) * 2
  return 3.0 * (conv1 + primary + u_hat + routing + decoder)


def matmul_peak(dtype, n: int = 2048, repeats: int = 10) -> float:
  """Measured matmul throughput (GFLOP/s) on all devices of the default backend."""
  mesh = make_mesh()
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
  count = mesh.size
  a = jax.device_put(jnp.ones((count, n, n), dtype), sharding)
  f = jax.jit(lambda a: jnp.einsum("bij,bjk->bik", a, a), out_shardings=sharding)
  f(a).block_until_ready()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    f(a).block_until_ready()
    times.append(time.perf_counter() - start)
  return 2 * count * n ** 3 / statistics.median(times) / 1e9


def build_step(size: int, routing_iters: int, batch_size: int, precision: str,
               conv_impl: str = "auto", model: str = "capsnet", steps_per_call: int = 1):
  """The library's train step, compiled for a synthetic batch.

  ``conv_impl`` picks the convolution formulation (see :mod:`capsjax.conv`);
  with ``steps_per_call = k > 1`` the step runs ``k`` steps per call, on a block
  of ``k`` copies of the batch.

  Returns ``(compiled step, state, batch, compile seconds, XLA FLOPs per step)``.
  """
  dataset = {36: "multimnist", 40: "mnist40"}.get(size, "mnist")
  config = TrainConfig(model=model, dataset=dataset,
                       routing_iters=routing_iters, batch_size=batch_size, precision=precision)
  mesh = make_mesh()
  config.validate(mesh.size)
  model, tx = make_model(config).clone(conv_impl=conv_impl), make_optimizer(config)
  step = make_train_step(model, tx, mesh, config, steps_per_call=steps_per_call)
  state = jax.device_put(init_state(model, tx, config.data.image_shape, 0),
                         jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
  rng = np.random.default_rng(0)
  k = config.data.labels_per_example
  labels = np.stack([rng.permutation(10)[:k] for _ in range(batch_size)]).astype(np.int32)
  multi_hot = np.zeros((batch_size, 10), np.float32)
  np.put_along_axis(multi_hot, labels, 1.0, axis=1)
  batch = {
      "image": rng.uniform(size=(batch_size, size, size, 1)).astype(np.float32),
      "labels": labels, "multi_hot": multi_hot,
      "components": rng.uniform(size=(batch_size, k, size, size, 1)).astype(np.float32),
  }
  if steps_per_call > 1:
    batch = {name: np.stack([v] * steps_per_call) for name, v in batch.items()}
  batch = shard_batch(batch, mesh, block=steps_per_call > 1)

  start = time.perf_counter()
  compiled = step.lower(state, batch).compile()
  compile_s = time.perf_counter() - start
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  # A scanned block's cost analysis counts the loop body once: one step.
  xla_flops = float(cost.get("flops", 0.0)) if cost else 0.0
  return compiled, state, batch, compile_s, xla_flops


def bench_one(size: int, routing_iters: int, batch_size: int, precision: str,
              steps: int, warmup: int, conv_impl: str = "auto", model: str = "capsnet",
              steps_per_call: int = 1) -> dict:
  """Times ``steps`` calls (after ``warmup``); a step is a call / ``steps_per_call``."""
  compiled, state, batch, compile_s, xla_flops = build_step(
      size, routing_iters, batch_size, precision, conv_impl, model, steps_per_call)
  for _ in range(warmup):
    state, metrics = compiled(state, batch)
  jax.block_until_ready(metrics)
  times = []
  for _ in range(steps):
    t0 = time.perf_counter()
    state, metrics = compiled(state, batch)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - t0)
  step_s = statistics.median(times) / steps_per_call
  flops = (analytic_flops_per_image(size, routing_iters) if model == "capsnet"
           else xla_flops / batch_size)
  return {
      "model": model, "backend": jax.default_backend(), "devices": jax.device_count(),
      "size": size,
      "routing_iters": routing_iters, "batch_size": batch_size, "precision": precision,
      "conv_impl": conv_impl, "steps_per_call": steps_per_call,
      "compile_s": compile_s, "step_s": step_s, "images_per_s": batch_size / step_s,
      "gflop_per_image": flops / 1e9,
      "xla_gflop_per_image": xla_flops / batch_size / 1e9 if xla_flops else None,
      "gflop_per_s": flops * batch_size / step_s / 1e9,
  }


def run_peer(python: str, script: str, *args) -> dict | None:
  """One row of a peer benchmark (``peer_torch.py``, ``peer_keras.py``) run by ``python``."""
  path = pathlib.Path(__file__).with_name(script)
  proc = subprocess.run([python, str(path), *map(str, args), "--json"],
                        capture_output=True, text=True, check=False)
  if proc.returncode != 0:
    print(f"{script} failed: {proc.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
    return None
  return json.loads(proc.stdout.strip().splitlines()[-1])


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  ints = lambda s: [int(x) for x in s.split(",")]
  parser.add_argument("--model", default="capsnet", help="a name in capsjax.models.MODELS")
  parser.add_argument("--sizes", type=ints, default=[28, 36])
  parser.add_argument("--routing", type=ints, default=[1, 3])
  parser.add_argument("--batch_sizes", type=ints, default=[32, 128])
  parser.add_argument("--precisions", default="fp32", help="comma list of fp32,bf16")
  parser.add_argument("--conv_impl", choices=CONV_IMPLS, default="auto",
                      help="convolution formulation (auto: im2col on CPU, xla elsewhere)")
  parser.add_argument("--steps_per_call", type=ints, default=[1],
                      help="comma list: train steps per device call (lax.scan over a block)")
  parser.add_argument("--peak_tflops", type=float, default=0.0,
                      help="the chip's nominal peak (e.g. its dense bf16 TFLOP/s) for an "
                           "extra MFU column; 0: only the measured matmul peak")
  parser.add_argument("--steps", type=int, default=5)
  parser.add_argument("--warmup", type=int, default=2)
  parser.add_argument("--torch", action="store_true", help="also time benchmarks/peer_torch.py")
  parser.add_argument("--keras", metavar="DIR", default="",
                      help="also time the authors' Keras Efficient-CapsNet (benchmarks/"
                           "peer_keras.py) from DIR, a checkout of EscVM/Efficient-CapsNet")
  parser.add_argument("--peer_python", default=sys.executable,
                      help="the Python that runs the peers (one with torch, tensorflow, tf_keras)")
  parser.add_argument("--json", action="store_true", help="print one JSON line per row")
  args = parser.parse_args()
  if args.keras and args.model != "efficient_capsnet":
    parser.error("--keras times the authors' Efficient-CapsNet: use it with "
                 "--model efficient_capsnet.")

  conv = args.conv_impl if args.conv_impl != "auto" else default_conv_impl()
  print(f"# {args.model}; {jax.default_backend()} x{jax.device_count()} "
        f"({jax.devices()[0].device_kind}); {conv} convolutions; MFU against the matmul "
        "peak timed beside each row", flush=True)
  header = (f"{'size':>4} {'r':>2} {'batch':>5} {'k':>3} {'prec':>5} {'compile s':>9} "
            f"{'step ms':>9} {'img/s':>9} {'GFLOP/img':>9} {'GFLOP/s':>9} {'peak':>6} {'MFU':>6}")
  if args.peak_tflops:
    header += f" {'MFU chip':>8}"
  peers = (["torch"] if args.torch else []) + (["keras"] if args.keras else [])
  for peer in peers:
    header += f" {peer + ' img/s':>11} {'ratio':>6}"
  if not args.json:
    print(header, flush=True)
  for precision in args.precisions.split(","):
    for size in args.sizes:
      for r in args.routing:
        for b, k in ((b, k) for b in args.batch_sizes for k in args.steps_per_call):
          row = bench_one(size, r, b, precision, args.steps, args.warmup, conv, args.model, k)
          # Measured again beside every row: shared machines drift within a run.
          peak = matmul_peak(jnp.bfloat16 if precision == "bf16" else jnp.float32)
          row["matmul_peak_gflop_per_s"] = peak
          row["mfu"] = row["gflop_per_s"] / peak
          if args.peak_tflops:
            row["chip_peak_tflop_per_s"] = args.peak_tflops
            row["mfu_chip"] = row["gflop_per_s"] / (1e3 * args.peak_tflops)
          for peer in peers:
            common = ("--batch_size", b, "--steps", args.steps * k, "--warmup", args.warmup)
            result = (run_peer(args.peer_python, "peer_torch.py", "--model", args.model,
                               "--size", size, "--routing_iters", r, *common)
                      if peer == "torch" else
                      run_peer(args.peer_python, "peer_keras.py", "--official_dir", args.keras,
                               *common))
            row[f"{peer}_images_per_s"] = result and result["images_per_s"]
            row[f"ratio_vs_{peer}"] = result and row["images_per_s"] / result["images_per_s"]
          if args.json:
            print(json.dumps(row), flush=True)
            continue
          line = (f"{size:>4} {r:>2} {b:>5} {k:>3} {precision:>5} {row['compile_s']:>9.2f} "
                  f"{1e3 * row['step_s']:>9.1f} {row['images_per_s']:>9.1f} "
                  f"{row['gflop_per_image']:>9.3f} {row['gflop_per_s']:>9.1f} "
                  f"{peak:>6.0f} {100 * row['mfu']:>5.1f}%")
          if args.peak_tflops:
            line += f" {100 * row['mfu_chip']:>7.2f}%"
          for peer in peers:
            rate = row[f"{peer}_images_per_s"]
            line += (f" {rate:>11.1f} {row[f'ratio_vs_{peer}']:>5.2f}x" if rate
                     else f" {'(failed)':>18}")
          print(line, flush=True)


if __name__ == "__main__":
  main()
