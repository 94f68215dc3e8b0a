"""Training: data-parallel equivalence, learning, metrics, exact resume, bad input."""
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from capsjax.data import ShiftedImages, load_mnist
from capsjax.metrics import per_digit_correct, strict_correct
from capsjax.training import (
    CheckpointError, Checkpointer, ConfigError, NonFiniteLossError, TrainConfig, init_state,
    make_mesh, make_model, make_optimizer, make_train_step, shard_batch, train_and_evaluate)

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def mnist_batch():
  images, labels = load_mnist("test", source="bundled")
  return ShiftedImages(images[:256], labels[:256], seed=0).batch(0, 16)


def tiny_config(tmp_path, **overrides):
  values = dict(dataset="mnist", batch_size=8, steps=4, eval_every=0, checkpoint_every=2,
                log_every=1, test_subset=40, eval_batch_size=40, data_source="bundled",
                workdir=str(tmp_path / "run"))
  values.update(overrides)
  return TrainConfig(**values)


# ----------------------------------------------------------------------------

def test_metrics_on_hand_made_lengths():
  lengths = jnp.array([[0.9, 0.8, 0.1, 0.0],    # top-2 {0, 1}
                       [0.9, 0.1, 0.8, 0.0],    # top-2 {0, 2}
                       [0.1, 0.2, 0.3, 0.9]])   # top-2 {3, 2}
  labels = jnp.array([[1, 0], [0, 1], [0, 1]])
  np.testing.assert_array_equal(strict_correct(lengths, labels), [1, 0, 0])
  np.testing.assert_array_equal(per_digit_correct(lengths, labels), [1, 0.5, 0])
  np.testing.assert_array_equal(strict_correct(lengths, jnp.array([[0], [2], [3]])), [1, 0, 1])


@pytest.mark.slow
def test_eight_device_step_equals_one_device_step(tmp_path, mnist_batch):
  assert jax.device_count() == 8, "conftest.py sets 8 host devices"
  config = tiny_config(tmp_path)
  # Plain SGD keeps the update linear in the gradient, so the comparison is
  # exact up to float rounding (Adam turns rounding noise in near-zero
  # gradients into full-size steps of random sign).
  model, tx = make_model(config), optax.sgd(1.0)
  results = []
  for devices in (jax.devices()[:1], jax.devices()):
    mesh = make_mesh(devices)
    step = make_train_step(model, tx, mesh, config)
    state = init_state(model, tx, (28, 28, 1), seed=0)
    for _ in range(2):
      state, metrics = step(state, shard_batch(mnist_batch, mesh))
    results.append((jax.device_get(state.params), float(metrics["loss"])))
  # Reference: plain jax.grad of the global-batch loss, no mesh at all.
  from capsjax.training import loss_fn
  params = init_state(model, tx, (28, 28, 1), seed=0).params
  opt_state = tx.init(params)
  batch = jax.tree.map(jnp.asarray, mnist_batch)
  for _ in range(2):
    grads, (ref_metrics, _) = jax.grad(loss_fn, has_aux=True)(params, {}, model, batch, config)
    updates, opt_state = tx.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
  results.append((params, float(ref_metrics["loss"])))
  (p1, l1), (p8, l8), (p_ref, l_ref) = results
  assert l1 == pytest.approx(l8, rel=1e-5)
  assert l1 == pytest.approx(l_ref, rel=1e-5)
  for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p_ref)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
  for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p8)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_block_of_steps_equals_single_steps(tmp_path):
  # One call of the scanned k-step train step against k calls of the single
  # step, on 8 devices, with Adam and the real loss.
  config = tiny_config(tmp_path, batch_size=16)
  model, tx = make_model(config), make_optimizer(config)
  mesh = make_mesh()
  images, labels = load_mnist("test", source="bundled")
  data = ShiftedImages(images[:256], labels[:256], seed=0)
  batches = [data.batch(i, 16) for i in range(3)]
  single = make_train_step(model, tx, mesh, config)
  block_step = make_train_step(model, tx, mesh, config, steps_per_call=3)
  state = init_state(model, tx, (28, 28, 1), seed=0)
  singles = []
  for batch in batches:
    state, metrics = single(state, shard_batch(batch, mesh))
    singles.append(jax.device_get(metrics))
  block = {k: np.stack([b[k] for b in batches]) for k in batches[0]}
  block_state, block_metrics = block_step(init_state(model, tx, (28, 28, 1), seed=0),
                                          shard_batch(block, mesh, block=True))
  assert int(block_state.step) == int(state.step) == 3
  for name, values in jax.device_get(block_metrics).items():
    assert values.shape == (3,)
    np.testing.assert_allclose(values, [m[name] for m in singles], rtol=1e-5, atol=1e-7)
  for a, b in zip(jax.tree.leaves(block_state), jax.tree.leaves(state)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
  with pytest.raises(ValueError, match="steps_per_call must be an int >= 1"):
    make_train_step(model, tx, mesh, config, steps_per_call=0)


def test_block_of_steps_carries_batchnorm_statistics_as_single_steps(tmp_path, registered):
  # The toy BatchNorm model of toys.py: its running statistics go through the
  # scan's carry and the pmean over 8 devices as through 3 single steps.
  from capsjax.data import DATASETS
  from capsjax.models import MODELS
  from toys import TOY_BN, toy_dataset
  registered(MODELS, "toy_bn", TOY_BN)
  registered(DATASETS, "toy", toy_dataset())
  config = TrainConfig(model="toy_bn", dataset="toy", batch_size=16, workdir=str(tmp_path))
  model, tx = make_model(config), make_optimizer(config)
  mesh = make_mesh()
  train, _ = config.data.build(config)
  batches = [train.batch(i, 16) for i in range(3)]
  state = init_state(model, tx, (24, 24, 3), seed=0)
  single = make_train_step(model, tx, mesh, config)
  for batch in batches:
    state, _ = single(state, shard_batch(batch, mesh))
  block = {k: np.stack([b[k] for b in batches]) for k in batches[0]}
  block_state, _ = make_train_step(model, tx, mesh, config, steps_per_call=3)(
      init_state(model, tx, (24, 24, 3), seed=0), shard_batch(block, mesh, block=True))
  init = init_state(model, tx, (24, 24, 3), seed=0)
  assert not np.allclose(state.model_state["batch_stats"]["bn"]["mean"],
                         init.model_state["batch_stats"]["bn"]["mean"])
  for a, b in zip(jax.tree.leaves((block_state.params, block_state.model_state)),
                  jax.tree.leaves((state.params, state.model_state))):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


@pytest.mark.slow
def test_run_with_blocks_of_steps_equals_plain_run(tmp_path):
  # 5 steps with --steps_per_call 2 and a worker process building the batches:
  # blocks [0, 2) and [2, 4), then one single step; logs, checkpoints and the
  # final parameters match a plain run.
  runs = {}
  for k in (1, 2):
    workdir = tmp_path / f"k{k}"
    summary = train_and_evaluate(tiny_config(tmp_path, workdir=str(workdir), steps=5,
                                             log_every=2, steps_per_call=k,
                                             data_workers=k - 1))
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    runs[k] = (summary, [(r["step"], r["loss"]) for r in records if r["split"] == "train"],
               final_params(workdir))
  (s1, log1, (step1, p1)), (s2, log2, (step2, p2)) = runs[1], runs[2]
  assert s1["step"] == s2["step"] == step1 == step2 == 5
  assert [s for s, _ in log1] == [s for s, _ in log2] == [2, 4, 5]
  np.testing.assert_allclose([loss for _, loss in log2], [loss for _, loss in log1], rtol=1e-5)
  for a, b in zip(jax.tree.leaves(p2), jax.tree.leaves(p1)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def fit_fixed_batch(config, batch, steps=25):
  """Trains on one batch; returns the final state, the losses and the last metrics."""
  model, tx = make_model(config), make_optimizer(config)
  mesh = make_mesh()
  step = make_train_step(model, tx, mesh, config)
  state = init_state(model, tx, (28, 28, 1), seed=0)
  batch = shard_batch(batch, mesh)
  losses = []
  for _ in range(steps):
    state, metrics = step(state, batch)
    losses.append(float(metrics["loss"]))
  return state, losses, metrics


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_loss_goes_down_on_a_fixed_batch(tmp_path, mnist_batch, precision):
  config = tiny_config(tmp_path, precision=precision)
  assert make_model(config).dtype == (jnp.bfloat16 if precision == "bf16" else jnp.float32)
  state, losses, metrics = fit_fixed_batch(config, mnist_batch)
  assert losses[-1] < 0.5 * losses[0]
  assert float(metrics["accuracy"]) > 0.9
  # bf16 computes in bf16 but keeps float32 parameters and optimizer state.
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(state.params))
  assert all(x.dtype in (jnp.float32, jnp.int32) for x in jax.tree.leaves(state.opt_state))


def test_optimizer_schedule_matches_official_defaults():
  config = TrainConfig(dataset="mnist")
  from capsjax.training import make_schedule
  schedule = make_schedule(config)
  assert float(schedule(0)) == pytest.approx(1e-3)
  assert float(schedule(2000)) == pytest.approx(1e-3 * 0.96)
  assert float(schedule(10_000_000)) == pytest.approx(1e-6)
  assert make_schedule(TrainConfig())(20_000) == pytest.approx(1e-3 * 0.96)  # multimnist x10


# ----------------------------------------------------------------------------
# Exact resume through the CLI.

def cli(args, env_extra=None, **kwargs):
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1", **(env_extra or {}))
  return subprocess.Popen([sys.executable, str(ROOT / "experiments" / "train.py"), *args],
                          env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          **kwargs)


def final_params(workdir):
  config = TrainConfig.load(workdir / "config.json")
  model, tx = make_model(config), make_optimizer(config)
  checkpoints = Checkpointer(workdir / "checkpoints")
  state = checkpoints.restore(init_state(model, tx, config.data.image_shape, config.seed))
  return int(state.step), jax.device_get(state.params)


@pytest.mark.slow
def test_exact_resume_after_kill(tmp_path):
  common = ["--dataset", "mnist", "--batch_size", "8", "--log_every", "1",
            "--checkpoint_every", "3", "--eval_every", "0", "--test_subset", "40",
            "--eval_batch_size", "40", "--data_source", "bundled"]
  env = {"CAPSJAX_CACHE_DIR": str(tmp_path / "cache")}
  straight = cli(common + ["--steps", "24", "--workdir", str(tmp_path / "a")], env)
  out, err = straight.communicate(timeout=300)
  assert straight.returncode == 0, err
  assert "summary" in out

  # The same run, killed with SIGTERM part-way, then the same command again.
  # It is started far longer (--steps only sets the length), so it cannot end
  # before the signal; its log lines are written with the handler installed.
  resumed = tmp_path / "b"
  proc = cli(common + ["--steps", "100000", "--workdir", str(resumed)], env)
  deadline = time.time() + 240
  while time.time() < deadline:
    metrics = resumed / "metrics.jsonl"
    if metrics.exists() and len(metrics.read_text().splitlines()) >= 2:
      break
    time.sleep(0.05)
  proc.send_signal(signal.SIGTERM)
  out, err = proc.communicate(timeout=120)
  assert proc.returncode == 128 + signal.SIGTERM, err
  assert "Rerun the same command to resume" in out
  assert "Traceback" not in err
  stopped_at, _ = final_params(resumed)
  assert 2 <= stopped_at < 24
  again = cli(common + ["--steps", "24", "--workdir", str(resumed)], env)
  out, err = again.communicate(timeout=300)
  assert again.returncode == 0, err

  step_a, params_a = final_params(tmp_path / "a")
  step_b, params_b = final_params(resumed)
  assert step_a == step_b == 24
  for a, b in zip(jax.tree.leaves(params_a), jax.tree.leaves(params_b)):
    np.testing.assert_array_equal(a, b)  # bitwise


@pytest.mark.slow
def test_signal_during_logging_still_saves_before_stopping(tmp_path, monkeypatch):
  # SIGTERM while the host waits on the device for a log record (step 3, not a
  # checkpoint step) once ended the loop with no checkpoint of that step.
  from capsjax.training import loop
  write = loop.RunLog.write

  def write_and_signal(self, record):
    write(self, record)
    if record["step"] == 3 and record["split"] == "train":
      os.kill(os.getpid(), signal.SIGTERM)

  monkeypatch.setattr(loop.RunLog, "write", write_and_signal)
  config = tiny_config(tmp_path, steps=8, checkpoint_every=100)
  summary = train_and_evaluate(config)
  assert summary["interrupted"] == "SIGTERM"
  assert 3 < summary["step"] < 8
  assert Checkpointer(config.run_dir / "checkpoints").latest_step() == summary["step"]


@pytest.mark.slow
def test_resume_in_halves_is_bitwise_identical(tmp_path):
  full = train_and_evaluate(tiny_config(tmp_path, workdir=str(tmp_path / "full"), steps=6))
  train_and_evaluate(tiny_config(tmp_path, workdir=str(tmp_path / "half"), steps=3))
  half = train_and_evaluate(tiny_config(tmp_path, workdir=str(tmp_path / "half"), steps=6))
  assert full["step"] == half["step"] == 6
  _, pa = final_params(tmp_path / "full")
  _, pb = final_params(tmp_path / "half")
  for a, b in zip(jax.tree.leaves(pa), jax.tree.leaves(pb)):
    np.testing.assert_array_equal(a, b)
  records = [json.loads(line)
             for line in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
  assert {r["split"] for r in records} == {"train", "test"}
  for name in ("reconstructions.png", "perturbations.png", "curves.png"):
    assert (tmp_path / "full" / name).stat().st_size > 1000


# ----------------------------------------------------------------------------
# Bad input.

@pytest.mark.parametrize("overrides,match", [
    (dict(routing_iters=0), "--routing_iters must be >= 1"),
    (dict(routing_iters=-2), "--routing_iters must be >= 1"),
    (dict(batch_size=12), "--batch_size 12 is not divisible by the 8 devices"),
    (dict(dataset="cifar"), "--dataset 'cifar' is unknown"),
    (dict(precision="fp16"), "--precision 'fp16' is unknown"),
    (dict(digit_caps_init=0.0), "--digit_caps_init must be > 0"),
    (dict(primary_caps_scale=-1.0), "--primary_caps_scale must be > 0"),
    (dict(lr_decay_steps=-1), "--lr_decay_steps must be >= 0"),
    (dict(lr_decay_rate=0.0), r"--lr_decay_rate must be in \(0, 1\]"),
    (dict(steps_per_call=4, log_every=6, checkpoint_every=4),
     "--log_every 6 must be a multiple of --steps_per_call 4"),
    (dict(steps_per_call=0), "--steps_per_call must be >= 1"),
])
def test_bad_flags(tmp_path, overrides, match):
  with pytest.raises(ConfigError, match=match):
    train_and_evaluate(tiny_config(tmp_path, **overrides))
  assert not (tmp_path / "run").exists()  # nothing half-written


def test_unwritable_workdir(tmp_path):
  (tmp_path / "file").write_text("")
  with pytest.raises(ConfigError, match="not writable"):
    train_and_evaluate(tiny_config(tmp_path, workdir=str(tmp_path / "file" / "run")))


@pytest.mark.slow
def test_workdir_of_another_configuration(tmp_path):
  train_and_evaluate(tiny_config(tmp_path, steps=2))
  before = (tmp_path / "run" / "config.json").read_text()
  with pytest.raises(ConfigError, match=r"--routing_iters 3 -> 1"):
    train_and_evaluate(tiny_config(tmp_path, steps=4, routing_iters=1))
  assert (tmp_path / "run" / "config.json").read_text() == before


def test_workdir_from_before_a_new_field_keeps_its_old_value(tmp_path):
  # A config.json written before --digit_caps_init existed was trained with
  # 0.1: it must load as that, so today's default (0.01) is refused instead of
  # silently building another model.
  workdir = tmp_path / "run"
  workdir.mkdir()
  old = json.loads(tiny_config(tmp_path).to_json())
  del old["primary_caps_scale"], old["digit_caps_init"]
  (workdir / "config.json").write_text(json.dumps(old))
  loaded = TrainConfig.load(workdir / "config.json")
  assert (loaded.primary_caps_scale, loaded.digit_caps_init) == (1.0, 0.1)
  with pytest.raises(ConfigError, match=r"--digit_caps_init 0.1 -> 0.01"):
    train_and_evaluate(tiny_config(tmp_path))


@pytest.mark.slow
def test_corrupt_checkpoint_is_reported_and_kept(tmp_path):
  train_and_evaluate(tiny_config(tmp_path, steps=2))
  ckpt = tmp_path / "run" / "checkpoints" / "2"
  data_files = [p for p in ckpt.rglob("*") if p.is_file() and p.parent.name == "d"]
  victim = max(data_files, key=lambda p: p.stat().st_size)
  victim.write_bytes(victim.read_bytes()[:50])
  snapshot = {p: p.read_bytes() for p in ckpt.rglob("*") if p.is_file()}
  with pytest.raises(CheckpointError, match="corrupt or truncated") as info:
    train_and_evaluate(tiny_config(tmp_path, steps=4))
  assert str(ckpt) in str(info.value)
  assert {p: p.read_bytes() for p in ckpt.rglob("*") if p.is_file()} == snapshot


@pytest.mark.slow
def test_nan_loss_stops_with_step_and_keeps_last_good_checkpoint(tmp_path):
  with pytest.raises(NonFiniteLossError, match=r"at step \d+") as info:
    train_and_evaluate(tiny_config(tmp_path, steps=20, lr=1e30, checkpoint_every=1))
  good = Checkpointer(tmp_path / "run" / "checkpoints").latest_step()
  if good is not None:
    assert f"step {good}" in str(info.value)
    config = tiny_config(tmp_path)
    model, tx = make_model(config), make_optimizer(config)
    state = Checkpointer(tmp_path / "run" / "checkpoints").restore(init_state(model, tx, (28, 28, 1), 0))
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(state.params))


def test_cli_errors_are_one_line(tmp_path):
  proc = cli(["--routing_iters", "0", "--workdir", str(tmp_path / "x")])
  out, err = proc.communicate(timeout=120)
  assert proc.returncode == 2
  assert err.strip().splitlines() == [
      "error: --routing_iters must be >= 1 (got 0); the paper uses 3."]


@pytest.mark.slow
def test_multimnist_loss_reconstructs_both_digits():
  from capsjax.data import MultiMNIST
  from capsjax.training import loss_fn
  images, labels = load_mnist("test", source="bundled")
  batch = MultiMNIST(images[:100], labels[:100], seed=0).batch(0, 4)
  config = TrainConfig(dataset="multimnist")
  model = make_model(config)
  params = init_state(model, make_optimizer(config), (36, 36, 1), seed=0).params
  loss, (metrics, _) = loss_fn(params, {}, model, jax.tree.map(jnp.asarray, batch), config)
  out = model.apply({"params": params}, batch["image"], batch["labels"])
  lengths, recon = np.asarray(out.lengths, np.float64), np.asarray(out.reconstructions, np.float64)
  t = batch["multi_hot"]
  margin = (t * np.maximum(0, 0.9 - lengths) ** 2
            + 0.5 * (1 - t) * np.maximum(0, lengths - 0.1) ** 2).sum(1)
  sse = ((recon - batch["components"]) ** 2).reshape(4, -1).sum(1)   # both digits
  np.testing.assert_allclose(float(loss), np.mean(margin + 0.0005 * sse), rtol=1e-5)
  np.testing.assert_allclose(float(metrics["recon_loss"]), np.mean(sse), rtol=1e-5)


@pytest.mark.slow
def test_multimnist_run_end_to_end(tmp_path):
  summary = train_and_evaluate(tiny_config(
      tmp_path, dataset="multimnist", steps=2, test_subset=100, test_pairs_per_digit=1))
  assert summary["test_examples"] == 100  # one pair per test digit
  assert 0 <= summary["accuracy"] <= summary["per_digit_accuracy"] <= 1
  assert (tmp_path / "run" / "reconstructions.png").exists()


# ----------------------------------------------------------------------------
# Logs people look at.

def read_tensorboard(directory):
  """``{tag: [(step, value or image bytes)]}`` from tensorboardX event files, parsed
  by their record format (length, CRC, event proto, CRC)."""
  from tensorboardX.proto import event_pb2
  tags = {}
  for path in pathlib.Path(directory).glob("events.out.tfevents.*"):
    data = path.read_bytes()
    offset = 0
    while offset < len(data):
      length = int.from_bytes(data[offset:offset + 8], "little")
      event = event_pb2.Event.FromString(data[offset + 12:offset + 12 + length])
      offset += 12 + length + 4
      for value in event.summary.value:
        payload = value.image.encoded_image_string if value.HasField("image") else value.simple_value
        tags.setdefault(value.tag, []).append((event.step, payload))
  return tags


@pytest.mark.slow
def test_tensorboard_log_has_the_scalars_and_the_reconstructions(tmp_path):
  pytest.importorskip("tensorboardX")
  summary = train_and_evaluate(tiny_config(tmp_path, steps=2, tensorboard=True))
  tags = read_tensorboard(tmp_path / "run" / "tensorboard")
  jsonl = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
  train_loss = [(r["step"], r["loss"]) for r in jsonl if r["split"] == "train"]
  assert [s for s, _ in tags["train/loss"]] == [s for s, _ in train_loss] == [1, 2]
  np.testing.assert_allclose([v for _, v in tags["train/loss"]], [v for _, v in train_loss],
                             rtol=1e-6)
  assert tags["test/accuracy"][0] == (2, pytest.approx(summary["accuracy"]))
  (step, png), = tags["reconstructions"]
  assert step == 2 and png[:8] == b"\x89PNG\r\n\x1a\n"


def test_importing_and_plotting_leave_matplotlibs_backend_alone(tmp_path):
  metrics = tmp_path / "metrics.jsonl"
  metrics.write_text(json.dumps({"step": 1, "split": "train", "loss": 1.0}) + "\n")
  code = (
      "import sys, capsjax, capsjax.training, capsjax.cli\n"
      "print('matplotlib' in sys.modules)\n"
      "from capsjax import plots\n"
      f"plots.plot_curves({str(metrics)!r}, {str(tmp_path / 'c.png')!r})\n"
      "print('matplotlib.pyplot' in sys.modules)\n")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
  assert out.returncode == 0, out.stderr
  assert out.stdout.split() == ["False", "False"]
  assert (tmp_path / "c.png").stat().st_size > 1000
