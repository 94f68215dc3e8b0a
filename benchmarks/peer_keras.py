"""The authors' own Efficient-CapsNet (Keras 2 on TensorFlow), timed like bench_train_step.py.

Builds the official MNIST training graph, unmodified, from a checkout of
github.com/EscVM/Efficient-CapsNet (``--official_dir``): ``build_graph(..., "train")``
compiled as their ``EfficientCapsNet.train`` compiles it (Adam, margin loss and
``lmd_gen`` x MSE reconstruction), and times ``model.fit`` on a repeated
synthetic batch, the step they train with. TensorFlow and tf_keras are optional
extras, never dependencies of capsjax; keep them in their own environment:

  python -m venv peers && peers/bin/pip install tensorflow tf_keras
  peers/bin/python benchmarks/peer_keras.py --official_dir Efficient-CapsNet --batch_size 16
"""
import argparse
import json
import os
import statistics
import sys
import time

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")   # tf.keras is Keras 2, as their code needs
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--official_dir", required=True,
                      help="a checkout of github.com/EscVM/Efficient-CapsNet")
  parser.add_argument("--batch_size", type=int, default=16)
  parser.add_argument("--steps", type=int, default=50)
  parser.add_argument("--warmup", type=int, default=5)
  parser.add_argument("--json", action="store_true")
  args = parser.parse_args()
  if not os.path.isfile(os.path.join(args.official_dir, "models",
                                     "efficient_capsnet_graph_mnist.py")):
    sys.exit(f"error: {args.official_dir!r} is not a checkout of EscVM/Efficient-CapsNet "
             "(no models/efficient_capsnet_graph_mnist.py); clone it and pass its path.")
  sys.path.insert(0, os.path.abspath(args.official_dir))
  import importlib.util

  import numpy as np
  import tensorflow as tf
  from utils.tools import marginLoss

  # The graph module by its path: the package's __init__ also imports the
  # smallNORB graph, which needs tensorflow-addons (no release for current TF).
  spec = importlib.util.spec_from_file_location(
      "efficient_capsnet_graph_mnist",
      os.path.join(args.official_dir, "models", "efficient_capsnet_graph_mnist.py"))
  graph = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(graph)

  with open(os.path.join(args.official_dir, "config.json")) as f:
    config = json.load(f)
  tf.random.set_seed(0)
  model = graph.build_graph((28, 28, 1), "train", verbose=False)
  model.compile(optimizer=tf.keras.optimizers.Adam(learning_rate=config["lr"]),
                loss=[marginLoss, "mse"], loss_weights=[1.0, config["lmd_gen"]])
  b = args.batch_size
  rng = np.random.default_rng(0)
  images = rng.uniform(size=(b, 28, 28, 1)).astype(np.float32)
  labels = np.eye(10, dtype=np.float32)[rng.integers(0, 10, b)]
  data = tf.data.Dataset.from_tensors(((images, labels), (labels, images))).repeat()

  class Times(tf.keras.callbacks.Callback):
    def __init__(self):
      super().__init__()
      self.ends = []

    def on_train_batch_end(self, batch, logs=None):
      self.ends.append(time.perf_counter())

  times = Times()
  model.fit(data, epochs=1, steps_per_epoch=args.warmup + args.steps + 1, verbose=0,
            callbacks=[times])
  step_s = statistics.median(np.diff(times.ends[args.warmup:]))
  row = {"framework": f"tensorflow {tf.__version__} with Keras 2",
         "model": "efficient_capsnet", "batch_size": b, "step_s": step_s,
         "images_per_s": b / step_s}
  print(json.dumps(row) if args.json else
        f"keras efficient_capsnet batch {b}: {1e3 * step_s:.1f} ms/step, {b / step_s:.1f} images/s")


if __name__ == "__main__":
  main()
