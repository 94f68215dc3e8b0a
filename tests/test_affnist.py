"""Expanded MNIST (40x40), affNIST read from .mat files, and the synthetic affNIST,
against NumPy placements written here and affNIST's documented layout and ranges."""
import numpy as np
import pytest
import scipy.io

from capsjax.data import DATASETS, DataError, load_affnist, load_mnist
from capsjax.data.affnist import (
    CANVAS, ROTATION_DEGREES, SCALE, SHEAR, affine_parameters, affine_place, affnist_synthetic)
from capsjax.data.canvas import place_randomly
from capsjax.training import TrainConfig
from capsjax.training.config import ConfigError


@pytest.fixture(scope="module")
def digits():
  images, labels = load_mnist("test", source="bundled")
  return images[:300], labels[:300]


def offset_of(canvas, digit):
  """Where ``digit`` sits on ``canvas``, by search: the one offset at which the
  window equals the digit and everything else is black."""
  found = []
  for dy in range(CANVAS - 27):
    for dx in range(CANVAS - 27):
      expected = np.zeros_like(canvas)
      expected[dy:dy + 28, dx:dx + 28] = digit
      if np.array_equal(canvas, expected):
        found.append((dy, dx))
  return found


def test_mnist40_places_each_digit_whole_at_a_uniform_offset(digits):
  images, _ = digits
  placed = place_randomly(images[:60, :, :, None], seed=3, index=np.arange(60), canvas=40)
  assert placed.shape == (60, 40, 40, 1) and placed.dtype == np.uint8
  offsets = [offset_of(placed[i, :, :, 0], images[i]) for i in range(60)]
  assert all(len(o) >= 1 for o in offsets)   # a digit with empty edges fits at several
  # Offsets over many draws cover 0 .. 12 on both axes, evenly.
  many = place_randomly(np.full((4000, 28, 28), 255, np.uint8), 5, np.arange(4000), 40)
  rows = np.array([np.flatnonzero(m.any(1))[0] for m in many])
  cols = np.array([np.flatnonzero(m.any(0))[0] for m in many])
  for o in (rows, cols):
    assert o.min() == 0 and o.max() == 12
    counts = np.bincount(o, minlength=13)
    assert counts.min() > 4000 / 13 * 0.75


def test_mnist40_test_split_is_fixed_and_training_draws_move():
  builds = [DATASETS.get("mnist40").build(TrainConfig(dataset="mnist40", seed=s,
                                                      data_source="bundled", test_subset=50))
            for s in (0, 1)]
  (train0, test0), (train1, test1) = builds
  a, b = next(test0.batches(50)), next(test1.batches(50))
  assert a["image"].shape == (50, 40, 40, 1)
  np.testing.assert_array_equal(a["image"], b["image"])    # the test set ignores --seed
  # A training example is drawn at a new position each epoch: same digit, other place.
  first = train0.batch(0, 8)["image"]
  assert first.shape == (8, 40, 40, 1) and not np.array_equal(first, train1.batch(0, 8)["image"])


def test_affine_parameters_span_the_documented_ranges():
  p = affine_parameters(7, np.arange(200_000))
  for name, low, high in (("rotation", -np.deg2rad(ROTATION_DEGREES), np.deg2rad(20.0)),
                          ("shear", -SHEAR, 0.2), ("scale_x", SCALE[0], 1.2),
                          ("scale_y", 0.8, SCALE[1]), ("ty", 0, 1), ("tx", 0, 1)):
    v = p[name]
    assert low <= v.min() < low + 0.001 * (high - low), name
    assert high - 0.001 * (high - low) < v.max() <= high, name
    assert abs(v.mean() - (low + high) / 2) < 0.005 * (high - low), name
  assert abs(np.corrcoef(p["scale_x"], p["scale_y"])[0, 1]) < 0.01   # independent axes


def _params(n, **values):
  base = dict(rotation=0.0, shear=0.0, scale_x=1.0, scale_y=1.0, ty=0.0, tx=0.0)
  return {k: np.full(n, float(v)) for k, v in {**base, **values}.items()}


def _ink_crop(digit):
  rows, cols = np.flatnonzero(digit.any(1)), np.flatnonzero(digit.any(0))
  return digit[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]


def test_affine_place_identity_and_quarter_turn_against_numpy(digits):
  images, _ = digits
  for i in range(5):
    crop = _ink_crop(images[i])
    expected = np.zeros((40, 40), np.uint8)
    expected[:crop.shape[0], :crop.shape[1]] = crop        # fraction 0: the top-left corner
    np.testing.assert_array_equal(affine_place(images[i:i + 1], _params(1))[0], expected)
    # Fraction 1: the bottom-right corner.
    expected = np.zeros((40, 40), np.uint8)
    expected[40 - crop.shape[0]:, 40 - crop.shape[1]:] = crop
    np.testing.assert_array_equal(affine_place(images[i:i + 1], _params(1, ty=1, tx=1))[0],
                                  expected)
    # A quarter turn is np.rot90 (one of the two directions).
    turned = affine_place(images[i:i + 1], _params(1, rotation=np.pi / 2))[0]
    candidates = []
    for k in (1, 3):
      r = np.rot90(crop, k)
      e = np.zeros((40, 40), np.uint8)
      e[:r.shape[0], :r.shape[1]] = r
      candidates.append(e)
    assert any(np.array_equal(turned, c) for c in candidates)


def test_synthetic_affnist_keeps_every_digit_inside_and_scales_its_ink(digits):
  images, _ = digits
  out = affnist_synthetic(images, seed=11)
  assert out.shape == (300, 40, 40) and out.dtype == np.uint8
  p = affine_parameters(11, np.arange(300))
  # Rotation and shear keep areas; scaling multiplies the ink by scale_x * scale_y.
  # Nothing is cut off at the edges, so the ratio holds for every digit.
  ratio = out.reshape(300, -1).sum(1) / images.reshape(300, -1).astype(float).sum(1)
  np.testing.assert_allclose(ratio, p["scale_x"] * p["scale_y"], rtol=0.06)
  np.testing.assert_array_equal(out, affnist_synthetic(images, seed=11))   # deterministic
  np.testing.assert_array_equal(out[100:200], affnist_synthetic(images[100:200], seed=11,
                                                                index=np.arange(100, 200)))


def _write_mat(path, images, labels):
  # affNIST's layout: one row-major 40x40 image per column of a (1600, N) uint8 array.
  scipy.io.savemat(path, {"affNISTdata": {
      "image": images.reshape(len(images), -1).T.astype(np.uint8),
      "label_int": labels[None].astype(np.uint8),
      "label_one_of_n": np.eye(10, dtype=np.uint8)[labels].T}})


def test_load_affnist_reads_test_mat_and_numbered_batches_upright(tmp_path, digits):
  images, labels = digits
  canvas = np.pad(images[:30], ((0, 0), (6, 6), (6, 6)))
  canvas[:, 0, 39] = 255                           # a corner mark: a transpose would move it
  (tmp_path / "single").mkdir()
  _write_mat(tmp_path / "single" / "test.mat", canvas, labels[:30])
  got_images, got_labels = load_affnist(tmp_path / "single")
  np.testing.assert_array_equal(got_images, canvas)
  np.testing.assert_array_equal(got_labels, labels[:30])
  batches = tmp_path / "batched" / "test_batches"
  batches.mkdir(parents=True)
  for n in range(1, 11):                           # 10.mat comes after 9.mat
    _write_mat(batches / f"{n}.mat", canvas[3 * (n - 1):3 * n], labels[3 * (n - 1):3 * n])
  got_images, got_labels = load_affnist(tmp_path / "batched")
  np.testing.assert_array_equal(got_images, canvas)
  np.testing.assert_array_equal(got_labels, labels[:30])


def test_load_affnist_errors_say_where_to_get_the_files(tmp_path):
  with pytest.raises(DataError, match=r"test_batches.zip from https://www.cs.toronto.edu/"
                                      r"~tijmen/affNIST/.*--affnist_dir"):
    load_affnist(tmp_path)
  scipy.io.savemat(tmp_path / "test.mat", {"other": np.zeros(3)})
  with pytest.raises(DataError, match="not an affNIST .mat file"):
    load_affnist(tmp_path)


def test_affnist_datasets_are_test_sets_only():
  for name in ("affnist", "affnist_synthetic"):
    with pytest.raises(ConfigError, match=f"--dataset {name} is a test set only: train on "
                                          "--dataset mnist40"):
      TrainConfig(dataset=name).validate()


@pytest.mark.slow
def test_a_run_on_mnist40_evaluates_on_affnist_and_refuses_other_shapes(tmp_path, registered,
                                                                        digits):
  from capsjax.models import MODELS
  from capsjax.training import evaluate_workdir
  from toys import LINEAR, train_script

  registered(MODELS, "linear", LINEAR)
  workdir = tmp_path / "run"
  assert train_script(["--model", "linear", "--dataset", "mnist40", "--steps", "2",
                       "--batch_size", "8", "--eval_every", "0", "--checkpoint_every", "2",
                       "--test_subset", "40", "--eval_batch_size", "40",
                       "--data_source", "bundled", "--workdir", str(workdir)]) == 0
  images, labels = digits
  canvas = np.pad(images[:24], ((0, 0), (6, 6), (6, 6)))
  (tmp_path / "affnist").mkdir()
  _write_mat(tmp_path / "affnist" / "test.mat", canvas, labels[:24])
  real = evaluate_workdir(workdir, dataset="affnist", affnist_dir=str(tmp_path / "affnist"))
  assert real["dataset"] == "affnist" and real["test_examples"] == 24 and real["step"] == 2
  synthetic = evaluate_workdir(workdir, dataset="affnist_synthetic")
  assert synthetic["test_examples"] == 40     # the run's --test_subset of the MNIST test digits
  assert (workdir / "affnist_synthetic").is_dir()
  with pytest.raises(ConfigError, match=r"--dataset mnist has \(28, 28, 1\) images.*trained on "
                                        r"mnist40.*same shape and classes"):
    evaluate_workdir(workdir, dataset="mnist")
  with pytest.raises(ConfigError, match="--dataset: unknown dataset 'nope'; registered: affnist, "):
    evaluate_workdir(workdir, dataset="nope")


@pytest.mark.slow
def test_the_affnist_command_trains_both_to_the_target_and_evaluates_both(
    tmp_path, monkeypatch, registered, capsys):
  import importlib.util
  import json

  from capsjax.models import MODELS
  from capsjax.presets import PRESETS, Preset
  from toys import LINEAR, ROOT

  registered(MODELS, "linear", LINEAR)
  small = dict(model="linear", dataset="mnist40", batch_size=8, steps=6, eval_every=2,
               checkpoint_every=6, test_subset=40, eval_batch_size=40, data_source="bundled",
               stop_at_accuracy=0.992)
  saved = {name: PRESETS.get(name) for name in ("affnist_capsnet", "affnist_cnn")}
  for name in saved:
    PRESETS.register(name, Preset({**small, "workdir": str(tmp_path / name)}, ""), replace=True)
  try:
    monkeypatch.chdir(tmp_path)
    spec = importlib.util.spec_from_file_location("affnist", ROOT / "experiments" / "affnist.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    # A target both reach at their first evaluation: each stops at step 2.
    assert script.main(["--stop_at_accuracy", "0.001"]) == 0
    rows = json.loads((tmp_path / "runs" / "affnist_affnist_synthetic.json").read_text())
    assert [(r["model"], r["step"]) for r in rows] == [("capsnet", 2), ("cnn", 2)]
    assert all(0 <= r["affnist_synthetic_accuracy"] <= 1 for r in rows)
    assert "paper (affNIST)" in capsys.readouterr().out
    # The presets' own target (0.992) is out of reach in 6 steps: a warning says so.
    for name in saved:
      PRESETS.register(name, Preset({**small, "workdir": str(tmp_path / f"{name}_2")}, ""),
                       replace=True)
    assert script.main([]) == 0
    assert "short of the target: the two are not at the same accuracy" in capsys.readouterr().out
  finally:
    for name, preset in saved.items():
      PRESETS.register(name, preset, replace=True)
