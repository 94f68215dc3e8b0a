"""Write a run's latest checkpoint as a pretrained-model file and print its registry entry.

  python experiments/export_pretrained.py --workdir runs/efficient_capsnet_mnist \
      --out capsjax/models/weights/efficient_capsnet_mnist.msgpack

The file holds the variables (parameters and model state, Flax msgpack), not the
optimizer state. The printed entry has the run's config, the file's SHA256 and its
test accuracy, evaluated here; register it at the end of capsjax/models/pretrained.py
(or in your own code, with an absolute path) to load it with capsjax.models.pretrained(NAME).
"""
import hashlib
import json
import pathlib

from capsjax import cli


def main(argv=None) -> int:
  parser = cli.Parser(description=__doc__)
  parser.add_argument("--workdir", required=True, help="the --workdir of a training run")
  parser.add_argument("--out", required=True, help="the file to write (.msgpack)")
  args = parser.parse_args(argv)
  cli.setup()
  from capsjax.models.pretrained import variables_to_bytes  # pylint: disable=import-outside-toplevel
  from capsjax.training import evaluate_model  # pylint: disable=import-outside-toplevel
  from capsjax.training.loop import latest_variables  # pylint: disable=import-outside-toplevel

  config, model, step, variables = latest_variables(args.workdir)
  data = variables_to_bytes(variables)
  out = pathlib.Path(args.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_bytes(data)
  result = evaluate_model(config, model, variables)
  entry = {"config": json.loads(config.to_json()), "file": out.name,
           "sha256": hashlib.sha256(data).hexdigest(), "test_accuracy": result["accuracy"],
           "step": step}
  print(f"wrote {out} ({len(data):,} bytes)")
  print("entry " + json.dumps(entry))
  return 0


if __name__ == "__main__":
  cli.run(main)
