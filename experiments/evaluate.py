"""Evaluate the latest checkpoint of a training run and redraw its pictures.

  python experiments/evaluate.py --workdir runs/mnist_r3
  python experiments/evaluate.py --workdir runs/affnist_capsnet --dataset affnist_synthetic
  python experiments/evaluate.py --workdir runs/affnist_capsnet --dataset affnist \
      --affnist_dir ~/affnist      # the real test set: test.mat or test_batches/*.mat
  python experiments/evaluate.py --pretrained NAME   # a model in capsjax.models.PRETRAINED
"""
import json

from capsjax import cli


def main(argv=None) -> int:
  parser = cli.Parser(description=__doc__)
  which = parser.add_mutually_exclusive_group(required=True)
  which.add_argument("--workdir", help="the --workdir of a training run")
  which.add_argument("--pretrained", help="a name in capsjax.models.PRETRAINED")
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

  if args.pretrained:
    result = evaluate_pretrained(args)
  else:
    result = evaluate_workdir(args.workdir, args.data_source, args.mnist_dir, args.dataset,
                              args.affnist_dir)
  print("evaluation " + json.dumps(result))
  return 0


def evaluate_pretrained(args) -> dict:
  """The registered model on its dataset's test split (or ``--dataset``), beside the
  accuracy registered for it; no pictures."""
  from capsjax.models import PRETRAINED, pretrained  # pylint: disable=import-outside-toplevel
  from capsjax.training import TrainConfig, evaluate_model  # pylint: disable=import-outside-toplevel

  entry = PRETRAINED.get(args.pretrained)
  module, variables = pretrained(args.pretrained)
  overrides = {name: getattr(args, name) for name in ("data_source", "mnist_dir", "affnist_dir")
               if getattr(args, name)}
  config = TrainConfig.from_dict({**entry.config, **overrides})
  result = evaluate_model(config, module, variables, args.dataset,
                          trained=f"pretrained model {args.pretrained!r}")
  return {"pretrained": args.pretrained, **result, "registered_accuracy": entry.test_accuracy}


if __name__ == "__main__":
  cli.run(main)
