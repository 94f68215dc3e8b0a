"""Evaluate the latest checkpoint of a training run and redraw its pictures.

  python experiments/evaluate.py --workdir runs/mnist_r3
  python experiments/evaluate.py --workdir runs/affnist_capsnet --dataset affnist_synthetic
  python experiments/evaluate.py --workdir runs/affnist_capsnet --dataset affnist \
      --affnist_dir ~/affnist      # the real test set: test.mat or test_batches/*.mat
"""
import json

from capsjax import cli


def main(argv=None) -> int:
  parser = cli.Parser(description=__doc__)
  parser.add_argument("--workdir", required=True, help="the --workdir of a training run")
  parser.add_argument("--data_source", default=None, help="override the run's data source")
  parser.add_argument("--mnist_dir", default=None, help="override the run's IDX directory")
  parser.add_argument("--dataset", default=None,
                      help="evaluate on this dataset's test split instead of the run's (same "
                           "image shape and classes, e.g. affnist for a run on mnist40)")
  parser.add_argument("--affnist_dir", default=None,
                      help="directory of the affNIST .mat files (for --dataset affnist)")
  args = parser.parse_args(argv)
  cli.setup()
  from capsjax.training import evaluate_workdir

  print("evaluation " + json.dumps(evaluate_workdir(
      args.workdir, args.data_source, args.mnist_dir, args.dataset, args.affnist_dir)))
  return 0


if __name__ == "__main__":
  cli.run(main)
