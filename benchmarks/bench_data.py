"""Host-side data throughput: the generators on one core, and fed by worker processes.

  python benchmarks/bench_data.py [--batch_size 512] [--seconds 5] [--workers 1,2,4]

The generators are pure functions of the step; ``batch_stream`` builds the
batches of the training loop (``--data_workers N``) in N grain worker processes
and passes them back through shared memory, so its figure includes that transfer
and the copy out of it.
"""
import argparse
import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

from capsjax.data import (  # noqa: E402
    MultiMNIST, ShiftedImages, TrainBatches, batch_stream, load_mnist)
from capsjax.data.pipeline import Chunks  # noqa: E402


def rate(make, batch_size, seconds):
  make(0)  # warm caches (epoch permutation)
  step, start = 1, time.perf_counter()
  while time.perf_counter() - start < seconds:
    make(step)
    step += 1
  return (step - 1) * batch_size / (time.perf_counter() - start)


def worker_rate(source, batch_size, workers, seconds):
  """Examples/s delivered in order by ``workers`` processes (after their start)."""
  batches = batch_stream(TrainBatches(source, batch_size), Chunks(0, 10 ** 9), workers)
  for _ in range(2 * workers):  # the workers are up and the queue is full
    next(batches)
  count, start = 0, time.perf_counter()
  while time.perf_counter() - start < seconds:
    next(batches)
    count += 1
  elapsed = time.perf_counter() - start
  batches.close()
  return count * batch_size / elapsed


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--batch_size", type=int, default=512)
  parser.add_argument("--seconds", type=float, default=5.0)
  parser.add_argument("--workers", default="", help="comma list of worker counts to time")
  args = parser.parse_args()
  images, labels = load_mnist("train", source="bundled")
  multi = MultiMNIST(images, labels, seed=0)
  single = ShiftedImages(images, labels, seed=0)
  b = args.batch_size
  print(f"# {os.cpu_count()} cores; batch {b}", flush=True)
  print(f"MultiMNIST    1 core: {rate(lambda s: multi.batch(s, b), b, args.seconds):,.0f} pairs/s")
  print(f"ShiftedImages 1 core: {rate(lambda s: single.batch(s, b), b, args.seconds):,.0f} "
        "images/s")
  for workers in [int(w) for w in args.workers.split(",") if w]:
    print(f"MultiMNIST    {workers} workers: "
          f"{worker_rate(multi, b, workers, args.seconds):,.0f} pairs/s", flush=True)
    print(f"ShiftedImages {workers} workers: "
          f"{worker_rate(single, b, workers, args.seconds):,.0f} images/s", flush=True)


if __name__ == "__main__":
  main()
