"""Evaluate the latest checkpoint of a training run and redraw its pictures.

  python experiments/evaluate.py --workdir runs/mnist_r3
"""
import json

from capsjax import cli


def main(argv=None) -> int:
  parser = cli.Parser(description=__doc__)
  parser.add_argument("--workdir", required=True, help="the --workdir of a training run")
  parser.add_argument("--data_source", default=None, help="override the run's data source")
  parser.add_argument("--mnist_dir", default=None, help="override the run's IDX directory")
  args = parser.parse_args(argv)
  cli.setup()
  from capsjax.training import evaluate_workdir

  print("evaluation " + json.dumps(evaluate_workdir(args.workdir, args.data_source,
                                                    args.mnist_dir)))
  return 0


if __name__ == "__main__":
  cli.run(main)
