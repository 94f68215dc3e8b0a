"""MultiMNIST generator throughput on one core: prints pairs/s.

  python benchmarks/bench_data.py [--batch_size 512] [--seconds 5]
"""
import argparse
import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

from capsjax.data import MultiMNIST, ShiftedImages, load_mnist  # noqa: E402


def rate(make, batch_size, seconds):
  make(0)  # warm caches (epoch permutation)
  step, start = 1, time.perf_counter()
  while time.perf_counter() - start < seconds:
    make(step)
    step += 1
  return (step - 1) * batch_size / (time.perf_counter() - start)


def main():
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--batch_size", type=int, default=512)
  parser.add_argument("--seconds", type=float, default=5.0)
  args = parser.parse_args()
  images, labels = load_mnist("train", source="bundled")
  multi = MultiMNIST(images, labels, seed=0)
  single = ShiftedImages(images, labels, seed=0)
  b = args.batch_size
  print(f"MultiMNIST   batch {b}: {rate(lambda s: multi.batch(s, b), b, args.seconds):,.0f} pairs/s")
  print(f"ShiftedImages batch {b}: {rate(lambda s: single.batch(s, b), b, args.seconds):,.0f} images/s")


if __name__ == "__main__":
  main()
