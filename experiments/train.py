"""Train a capsule network; by default CapsNet (Sabour et al., 2017) on MultiMNIST.

  python experiments/train.py --routing_iters 3
  python experiments/train.py --config quickstart
  python experiments/train.py --dataset mnist --epochs 1

Rerunning the same command in the same --workdir resumes exactly. Ctrl-C (or
SIGTERM) saves a checkpoint and exits.
"""
import json
import signal

from capsjax import cli


def main(argv=None) -> int:
  config = cli.parse_config(__doc__, argv)
  cli.setup()
  from capsjax.training import train_and_evaluate  # after setup: JAX config

  summary = train_and_evaluate(config)
  if "interrupted" in summary:
    print(f"interrupted by {summary['interrupted']} at step {summary['step']}; checkpoint "
          f"saved in {summary['workdir']}. Rerun the same command to resume.")
    return 128 + signal.Signals[summary["interrupted"]].value
  print("summary " + json.dumps(summary))
  return 0


if __name__ == "__main__":
  cli.run(main)
