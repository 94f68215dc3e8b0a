"""Where the time of one train step goes: XLA's own op profile, summed by op kind.

  python benchmarks/profile_step.py                     # 28x28, 3 iterations, batch 128
  python benchmarks/profile_step.py --size 36 --batch_size 32 --top 20
  python benchmarks/profile_step.py --model efficient_capsnet --routing_iters 1 --batch_size 16

Traces a few steps of the benchmark's compiled train step with ``jax.profiler``
(a Perfetto trace is kept in ``--log_dir`` for a closer look), then adds up the
durations of the XLA ops the runtime executed, by op kind (the HLO name without
its ``.N`` suffix: ``ynn_fusion`` are the GEMMs, ``slice_fusion``/``stack`` the
patch gathers of the im2col convolutions, ``pad_add_fusion`` their transposes,
...) and by single op. On CPU the sums are CPU time over all worker threads.
"""
from __future__ import annotations

import argparse
import collections
import gzip
import json
import pathlib
import re
import tempfile

import jax

from bench_train_step import build_step


def op_durations(trace_file: pathlib.Path) -> collections.Counter:
  """Microseconds per XLA op name, from a Perfetto trace of the runtime threads."""
  with gzip.open(trace_file) as f:
    trace = json.load(f)
  events = trace["traceEvents"] if isinstance(trace, dict) else trace
  runtime_threads = {
      e["tid"] for e in events
      if e.get("ph") == "M" and e.get("name") == "thread_name"
      and re.search(r"XLAEigen|PjRtCpuClient|GPU|TPU|Stream", e["args"]["name"])}
  durations = collections.Counter()
  for e in events:
    name = e.get("name", "")
    if (e.get("ph") == "X" and e.get("tid") in runtime_threads
        and re.fullmatch(r"[\w\-]+(\.\d+)?", name)):
      durations[name] += e["dur"]
  return durations


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--model", default="capsnet", help="a name in capsjax.models.MODELS")
  parser.add_argument("--size", type=int, default=28)
  parser.add_argument("--routing_iters", type=int, default=3)
  parser.add_argument("--batch_size", type=int, default=128)
  parser.add_argument("--precision", default="fp32")
  parser.add_argument("--steps", type=int, default=3)
  parser.add_argument("--top", type=int, default=12)
  parser.add_argument("--log_dir", default=None, help="where to keep the trace (default: temp)")
  args = parser.parse_args()

  compiled, state, batch, _, _ = build_step(args.size, args.routing_iters, args.batch_size,
                                            args.precision, model=args.model)
  state, metrics = compiled(state, batch)
  jax.block_until_ready(metrics)
  log_dir = args.log_dir or tempfile.mkdtemp(prefix="capsjax_profile_")
  options = jax.profiler.ProfileOptions()
  options.python_tracer_level = 0
  with jax.profiler.trace(log_dir, create_perfetto_trace=True, profiler_options=options):
    for _ in range(args.steps):
      state, metrics = compiled(state, batch)
    jax.block_until_ready(metrics)
  trace_file = sorted(pathlib.Path(log_dir).rglob("perfetto_trace.json.gz"))[-1]
  ops = op_durations(trace_file)
  total = sum(ops.values())
  kinds = collections.Counter()
  for name, us in ops.items():
    kinds[name.split(".")[0]] += us
  print(f"# {args.model}, {jax.default_backend()}: {args.size}x{args.size}, {args.routing_iters} iterations, "
        f"batch {args.batch_size}, {args.precision}; {total / 1e3 / args.steps:.0f} ms of op "
        f"time per step; trace in {trace_file}")
  for title, table in (("op kind", kinds), ("op", ops)):
    print(f"{title:>32} {'ms/step':>9} {'share':>6}")
    for name, us in table.most_common(args.top):
      print(f"{name[:32]:>32} {us / 1e3 / args.steps:>9.1f} {100 * us / total:>5.1f}%")


if __name__ == "__main__":
  main()
