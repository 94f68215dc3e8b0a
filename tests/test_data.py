"""MNIST sources (tfds mock, fake download manager, IDX files), their canonical order, and the
generators."""
import gzip
import logging
import pathlib

import numpy as np
import pytest
import tensorflow_datasets as tfds

from capsjax.data import (
    ClassificationTest, DataError, MnistFileError, MultiMNIST, ShiftedImages, get_dataset,
    load_idx_dataset, load_mnist)
from capsjax.data import mnist as mnist_lib
from capsjax.data.canonical import canonical_order, content_hash


# ----------------------------------------------------------------------------
# Small synthetic MNIST: digit i of class k is a distinct random pattern.

def fake_split(n=200, seed=0):
  rng = np.random.default_rng(seed)
  labels = np.arange(n) % 10
  rng.shuffle(labels)
  images = np.zeros((n, 28, 28), np.uint8)
  # A 20x20 random blob in the middle (4 px margin so shifts keep it whole).
  images[:, 4:24, 4:24] = rng.integers(1, 256, size=(n, 20, 20))
  return images, labels.astype(np.int32)


def write_idx(path, array, magic=None, gz=True, truncate=0):
  ndim = array.ndim
  magic = (0x08 << 8 | ndim) if magic is None else magic
  header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
  data = header + array.astype(np.uint8).tobytes()
  if truncate:
    data = data[:-truncate]
  path.write_bytes(gzip.compress(data) if gz else data)


def write_split_dir(directory, n_train=30, n_test=20, gz=True):
  for prefix, n in (("train", n_train), ("t10k", n_test)):
    images, labels = fake_split(n, seed=n)
    suffix = ".gz" if gz else ""
    write_idx(directory / f"{prefix}-images-idx3-ubyte{suffix}", images, gz=gz)
    write_idx(directory / f"{prefix}-labels-idx1-ubyte{suffix}", labels, gz=gz)


@pytest.fixture(autouse=True)
def _small_splits(monkeypatch):
  monkeypatch.setitem(mnist_lib.SPLITS, "train", ("train", 30))
  monkeypatch.setitem(mnist_lib.SPLITS, "test", ("t10k", 20))


# ----------------------------------------------------------------------------
# IDX.

@pytest.mark.parametrize("gz", [True, False])
def test_idx_directory_round_trip(tmp_path, gz):
  write_split_dir(tmp_path, gz=gz)
  images, labels = load_mnist("test", source="idx", mnist_dir=tmp_path)
  ref_images, ref_labels = fake_split(20, seed=20)
  suffix = ".gz" if gz else ""
  np.testing.assert_array_equal(  # read_idx keeps the file order
      mnist_lib.read_idx(tmp_path / f"t10k-images-idx3-ubyte{suffix}", "images"), ref_images)
  ref_images, ref_labels = canonical_order(ref_images, ref_labels)
  np.testing.assert_array_equal(images, ref_images)
  np.testing.assert_array_equal(labels, ref_labels)
  assert images.dtype == np.uint8 and images.shape == (20, 28, 28)
  assert labels.dtype == np.int32


@pytest.mark.parametrize("corruption,match", [
    ("missing", "not found"),
    ("truncated", "truncated"),
    ("magic", "magic number"),
    ("count", "expected 30"),
    ("label_range", "out of range"),
    ("not_gzip", "not a valid gzip"),
])
def test_bad_idx_files_are_named(tmp_path, corruption, match):
  write_split_dir(tmp_path)
  images, labels = fake_split(30, seed=30)
  target = tmp_path / "train-images-idx3-ubyte.gz"
  if corruption == "missing":
    target.unlink()
  elif corruption == "truncated":
    write_idx(target, images, truncate=100)
  elif corruption == "magic":
    write_idx(target, images, magic=2049)
  elif corruption == "count":
    write_idx(target, images[:29])
  elif corruption == "label_range":
    target = tmp_path / "train-labels-idx1-ubyte.gz"
    write_idx(target, np.full(30, 12))
  elif corruption == "not_gzip":
    target.write_bytes(b"\x1f\x8b" + b"garbage" * 10)
  with pytest.raises(MnistFileError, match=match) as info:
    load_mnist("train", source="idx", mnist_dir=tmp_path)
  assert target.name.split(".")[0] in str(info.value)


def test_bundled_copy_is_real_mnist():
  mnist_lib.SPLITS["test"] = ("t10k", 10_000)
  images, labels = load_mnist("test", source="bundled")
  assert images.shape == (10_000, 28, 28)
  np.testing.assert_array_equal(
      np.bincount(labels), [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009])


# ----------------------------------------------------------------------------
# tensorflow-datasets.

def test_tfds_prepared_dataset_via_mock(caplog):
  with tfds.testing.mock_data(num_examples=30):
    with caplog.at_level(logging.INFO, logger="capsjax"):
      images, labels = load_mnist("train", source="tfds")
  assert images.shape == (30, 28, 28) and images.dtype == np.uint8
  assert labels.shape == (30,) and labels.min() >= 0 and labels.max() <= 9
  assert any("prepared tensorflow-datasets" in r.message for r in caplog.records)
  with tfds.testing.mock_data(num_examples=30):
    ref = tfds.data_source("mnist", split="train")
    ref_images = np.stack([np.asarray(ref[i]["image"])[..., 0] for i in range(30)])
    ref_labels = np.array([int(ref[i]["label"]) for i in range(30)])
  ref_images, ref_labels = canonical_order(ref_images, ref_labels)
  np.testing.assert_array_equal(images, ref_images)
  np.testing.assert_array_equal(labels, ref_labels)


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist"])
def test_tfds_download_manager_path(tmp_path, monkeypatch, caplog, name):
  """Not prepared, online: tfds' download manager fetches, the IDX reader parses."""
  # A dangling link left where the IDX names are linked (a deleted download)
  # is replaced, not a FileExistsError.
  idx_dir = tmp_path / "tfds" / "downloads" / f"capsjax_{name}_idx"
  idx_dir.mkdir(parents=True)
  (idx_dir / "t10k-images-idx3-ubyte.gz").symlink_to(tmp_path / "deleted")
  raw = tmp_path / "served"
  raw.mkdir()
  write_split_dir(raw)
  calls = {}

  class FakeDownloadManager:
    def __init__(self, *, download_dir, url_infos, dataset_name, force_checksums_validation):
      calls.update(dataset_name=dataset_name, checks=force_checksums_validation,
                   registered=sorted(url_infos))
      self.download_dir = pathlib.Path(download_dir)

    def download(self, urls):
      out = {}
      for name, url in urls.items():
        calls.setdefault("urls", []).append(url)
        dest = self.download_dir / f"hashed_{len(out)}"
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes((raw / name).read_bytes())
        out[name] = dest
      return out

  monkeypatch.setattr(mnist_lib, "_tfds_prepared", lambda name, split, data_dir: None)
  monkeypatch.setattr(mnist_lib, "_online", lambda url=None: True)
  monkeypatch.setattr(tfds.download, "DownloadManager", FakeDownloadManager)
  with caplog.at_level(logging.INFO, logger="capsjax"):
    images, labels = load_idx_dataset(name, "test", source="auto",
                                      tfds_data_dir=str(tmp_path / "tfds"))
  np.testing.assert_array_equal(images, canonical_order(*fake_split(20, seed=20))[0])
  assert calls["dataset_name"] == name and calls["checks"]
  assert set(calls["urls"]) <= set(calls["registered"])  # tfds' registered checksums
  assert any("download manager" in r.message for r in caplog.records)


def test_auto_offline_falls_back_to_bundled_quickly(monkeypatch, caplog):
  mnist_lib.SPLITS["test"] = ("t10k", 10_000)
  monkeypatch.setattr(mnist_lib, "_tfds_prepared", lambda name, split, data_dir: None)
  monkeypatch.setattr(mnist_lib, "_online", lambda url=None: False)
  with caplog.at_level(logging.INFO, logger="capsjax"):
    images, _ = load_mnist("test")
  assert images.shape == (10_000, 28, 28)
  lines = [r.message for r in caplog.records if r.name == "capsjax"]
  assert len(lines) == 1 and "bundled copy" in lines[0] and "offline" in lines[0]


def test_online_probe_is_bounded():
  import time
  start = time.monotonic()
  mnist_lib._online("https://10.255.255.1/", timeout=1.0)
  assert time.monotonic() - start < 5


def test_tfds_only_offline_is_a_clear_error(monkeypatch):
  monkeypatch.setattr(mnist_lib, "_tfds_prepared", lambda name, split, data_dir: None)
  monkeypatch.setattr(mnist_lib, "_online", lambda url=None: False)
  with pytest.raises(DataError, match="bundled"):
    load_mnist("train", source="tfds")


def test_fashion_mnist_has_no_bundled_copy_and_says_how_to_get_it(monkeypatch):
  with pytest.raises(DataError, match="bundles no copy of fashion_mnist; use --data_source auto"):
    load_idx_dataset("fashion_mnist", "train", source="bundled")
  monkeypatch.setattr(mnist_lib, "_tfds_prepared", lambda name, split, data_dir: None)
  monkeypatch.setattr(mnist_lib, "_online", lambda url=None: False)
  with pytest.raises(DataError, match="no prepared fashion_mnist.*--mnist_dir"):
    load_idx_dataset("fashion_mnist", "train")


# ----------------------------------------------------------------------------
# Any prepared tfds image dataset: tfds:NAME.

def test_tfds_image_dataset_via_mock():
  with tfds.testing.mock_data(num_examples=24):
    spec = get_dataset("tfds:cifar10")
    assert (spec.image_shape, spec.num_classes, spec.labels_per_example) == ((32, 32, 3), 10, 1)

    class Config:
      seed, test_subset = 0, 0
    train, test = spec.build(Config)
    reference = tfds.data_source("cifar10", split="train")
    assert len(train) == 24 and len(test) == 24
    batch = train.batch(0, 8)
    assert batch["image"].shape == (8, 32, 32, 3) and batch["multi_hot"].shape == (8, 10)
    # Unshifted test images are the dataset's own pixels, scaled to [0, 1].
    first = next(test.batches(4))
    reference_test = tfds.data_source("cifar10", split="test")
    np.testing.assert_allclose(first["image"][2] * 255, np.asarray(reference_test[2]["image"]),
                               atol=1e-3)
    assert first["labels"][2, 0] == int(reference_test[2]["label"])
    assert set(np.unique(train.labels)) <= set(range(10))
    assert train.images.shape == (24, 32, 32, 3)
    np.testing.assert_array_equal(train.images[5], np.asarray(reference[5]["image"]))


def test_unprepared_tfds_dataset_says_how_to_prepare_it(tmp_path, monkeypatch):
  from capsjax.data import tfds_images
  with pytest.raises(DataError, match=r"'cifar10' split 'train' is not prepared .*"
                     r"`tfds build cifar10`.*TFDS_DATA_DIR"):
    tfds_images.tfds_info("cifar10", data_dir=str(tmp_path))


def test_multimnist_test_subset_missing_a_class_is_a_data_error():
  from capsjax.data.registry import DATASETS

  class Config:
    data_source, mnist_dir, seed, test_subset, test_pairs_per_digit = "bundled", "", 0, 5, 1
  mnist_lib.SPLITS["train"] = ("train", 60_000)
  mnist_lib.SPLITS["test"] = ("t10k", 10_000)
  with pytest.raises(DataError, match=r"--test_subset 5: .*none of class .*Use a larger"):
    DATASETS["multimnist"].build(Config)


# ----------------------------------------------------------------------------
# One canonical order, whatever the source.

def shuffled_tfds_copy(directory):
  """Mocks a prepared tfds copy of the IDX files in `directory`, shuffled as tfds'
  builders store MNIST."""
  rng = np.random.default_rng(7)
  splits = {}
  for split, prefix in (("train", "train"), ("test", "t10k")):
    images = mnist_lib.read_idx(directory / f"{prefix}-images-idx3-ubyte.gz", "images")
    labels = mnist_lib.read_idx(directory / f"{prefix}-labels-idx1-ubyte.gz", "labels")
    splits[split] = [{"image": images[i][..., None], "label": np.int64(labels[i])}
                     for i in rng.permutation(len(labels))]

  def as_data_source(builder, split, **kwargs):
    del builder, kwargs
    return splits[split]

  return tfds.testing.mock_data(as_data_source_fn=as_data_source)


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist", "multimnist"])
def test_idx_files_and_a_shuffled_tfds_copy_give_the_same_batches(tmp_path, name):
  from capsjax.data.registry import DATASETS
  write_split_dir(tmp_path)

  def build(data_source, mnist_dir):
    class Config:
      seed, test_pairs_per_digit = 4, 2
      test_subset = 0 if name == "multimnist" else 15
    Config.data_source, Config.mnist_dir = data_source, mnist_dir
    train, test = DATASETS[name].build(Config)
    return [train.batch(step, 8) for step in range(5)] + list(test.batches(8))

  from_idx = build("idx", str(tmp_path))
  with shuffled_tfds_copy(tmp_path):
    from_tfds = build("tfds", "")
  assert len(from_idx) == len(from_tfds) == 5 + (5 if name == "multimnist" else 2)
  for a, b in zip(from_idx, from_tfds):
    assert a.keys() == b.keys()
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])


def test_canonical_order_depends_on_the_content_alone(monkeypatch):
  monkeypatch.setitem(mnist_lib.SPLITS, "test", ("t10k", 10_000))
  images, labels = load_mnist("test", source="bundled")
  assert not np.array_equal(labels, mnist_lib.read_idx(
      mnist_lib.BUNDLED_DIR / "t10k-labels-idx1-ubyte.gz", "labels"))
  shuffle = np.random.default_rng(0).permutation(len(labels))
  again = canonical_order(images[shuffle][..., None], labels[shuffle])
  np.testing.assert_array_equal(again[0][..., 0], images)
  np.testing.assert_array_equal(again[1], labels)
  # The same image under two labels: ordered by label.
  twins = np.repeat(images[:1], 2, axis=0), np.array([7, 2])
  np.testing.assert_array_equal(canonical_order(*twins)[1], [2, 7])
  np.testing.assert_array_equal(canonical_order(twins[0], twins[1][::-1])[1], [2, 7])
  # Any image size (rows that are not whole 8-byte words); one pixel changes the hash.
  odd = np.zeros((2, 5, 5), np.uint8)
  odd[1, 4, 4] = 1
  assert content_hash(odd)[0] != content_hash(odd)[1]


def test_bad_arguments():
  with pytest.raises(ValueError, match="split"):
    load_mnist("validation")
  with pytest.raises(ValueError, match="source"):
    load_mnist("train", source="web")
  with pytest.raises(ValueError, match="mnist_dir"):
    load_mnist("train", source="idx")


# ----------------------------------------------------------------------------
# MultiMNIST.

@pytest.fixture(scope="module")
def split():
  return fake_split(200)


def locate(component, digit):
  """Offset (y, x) at which `digit` (28x28) sits on the 36x36 `component`, or None."""
  component = np.round(component * 255)
  for y in range(9):
    for x in range(9):
      canvas = np.zeros((36, 36))
      canvas[y:y + 28, x:x + 28] = digit
      if np.array_equal(canvas, component):
        return y, x
  return None


def test_multimnist_batch_contract(split):
  images, labels = split
  data = MultiMNIST(images, labels, seed=3)
  batch = data.batch(step=2, batch_size=64)
  assert batch["image"].shape == (64, 36, 36, 1) and batch["image"].dtype == np.float32
  assert batch["labels"].shape == (64, 2) and batch["labels"].dtype == np.int32
  assert batch["components"].shape == (64, 2, 36, 36, 1)
  assert np.all(batch["labels"][:, 0] != batch["labels"][:, 1])
  np.testing.assert_array_equal(batch["multi_hot"].sum(1), 2)
  for b in range(64):
    assert set(np.flatnonzero(batch["multi_hot"][b])) == set(batch["labels"][b])
  assert batch["image"].min() >= 0 and batch["image"].max() <= 1

  # Each component is an image of the labelled class, shifted within +-4 px.
  by_class = {k: images[labels == k] for k in range(10)}
  shifts = []
  for b in range(16):
    for k in range(2):
      comp = batch["components"][b, k, :, :, 0]
      found = [locate(comp, d) for d in by_class[batch["labels"][b, k]]]
      found = [f for f in found if f is not None]
      assert found, f"component {b},{k} is not a shifted digit of its class"
      shifts.append(found[0])
  shifts = np.array(shifts) - 4
  assert np.abs(shifts).max() <= 4 and len(np.unique(shifts, axis=0)) > 5

  # The image is the clipped sum of its components.
  a = np.round(batch["components"][:, 0] * 255)
  b_ = np.round(batch["components"][:, 1] * 255)
  np.testing.assert_allclose(batch["image"], np.minimum(a + b_, 255) / 255, atol=1e-6)


# Two hand-made digits, a 3 and a 7 (every other class blank), unshifted: each sits
# 4 px into the 36x36 canvas. Their pixels (row, col): value, and the merges written out.
_DIGIT_3 = {(0, 0): 200, (0, 1): 100, (13, 14): 255, (27, 27): 50}
_DIGIT_7 = {(0, 0): 120, (0, 1): 150, (0, 2): 90, (27, 27): 50}
_MERGED = {
    "max": {(4, 4): 200, (4, 5): 150, (4, 6): 90, (17, 18): 255, (31, 31): 50},
    "clip_sum": {(4, 4): 255, (4, 5): 250, (4, 6): 90, (17, 18): 255, (31, 31): 100},
}


@pytest.mark.parametrize("merge", ["max", "clip_sum"])
def test_multimnist_merge_of_two_known_digits(merge):
  images = np.zeros((10, 28, 28), np.uint8)
  for (y, x), value in _DIGIT_3.items():
    images[3, y, x] = value
  for (y, x), value in _DIGIT_7.items():
    images[7, y, x] = value
  data = MultiMNIST(images, np.arange(10), seed=0, max_shift=0, merge=merge)
  # The first counter whose partner of the 3 is the 7 (the only digit of its class).
  batch = next(b for b in (data.pairs(np.array([3]), np.array([c])) for c in range(100))
               if b["labels"][0, 1] == 7)
  np.testing.assert_array_equal(batch["labels"], [[3, 7]])
  expected = np.zeros((36, 36), np.float32)
  for (y, x), value in _MERGED[merge].items():
    expected[y, x] = value / 255
  np.testing.assert_allclose(batch["image"][0, ..., 0], expected, rtol=0, atol=1e-6)
  for k, digit in enumerate((_DIGIT_3, _DIGIT_7)):
    component = np.zeros((36, 36), np.float32)
    for (y, x), value in digit.items():
      component[y + 4, x + 4] = value / 255
    np.testing.assert_allclose(batch["components"][0, k, ..., 0], component, rtol=0, atol=1e-6)


def test_multimnist_determinism_and_host_slices(split):
  data = MultiMNIST(*split, seed=1)
  a, b = data.batch(5, 32), MultiMNIST(*split, seed=1).batch(5, 32)
  for key in a:
    np.testing.assert_array_equal(a[key], b[key])
  assert not np.array_equal(a["image"], data.batch(6, 32)["image"])
  assert not np.array_equal(a["image"], MultiMNIST(*split, seed=2).batch(5, 32)["image"])
  halves = [data.batch(5, 32, process_index=i, process_count=2) for i in range(2)]
  for key in a:
    np.testing.assert_array_equal(np.concatenate([h[key] for h in halves]), a[key])


@pytest.mark.slow
def test_multimnist_epochs_visit_every_digit_first(split):
  images, labels = split
  data = MultiMNIST(images, labels, seed=0)
  firsts = np.concatenate([data.batch(s, 50)["components"][:, 0] for s in range(4)])
  placed_ids = set()
  for comp in firsts[..., 0]:
    for i, img in enumerate(images):
      if locate(comp, img) is not None:
        placed_ids.add(i)
        break
  assert placed_ids == set(range(200))


def test_multimnist_partner_classes_balanced():
  images, labels = fake_split(1000)
  batch = MultiMNIST(images, labels, seed=0).batch(0, 20_000)
  counts = np.zeros((10, 10))
  np.add.at(counts, (batch["labels"][:, 0], batch["labels"][:, 1]), 1)
  assert np.all(np.diag(counts) == 0)
  off = counts[~np.eye(10, dtype=bool)]
  expected = 20_000 / 90
  assert np.all(np.abs(off - expected) < 5 * np.sqrt(expected))


def test_multimnist_test_set_fixed(split):
  data = MultiMNIST(*split, seed=0)
  test = data.test_set(pairs_per_digit=3)
  assert len(test) == 600
  batches = list(test.batches(256))
  assert [len(b["labels"]) for b in batches] == [256, 256, 88]
  again = list(MultiMNIST(*split, seed=0).test_set(3).batches(256))
  np.testing.assert_array_equal(batches[1]["image"], again[1]["image"])
  firsts = np.concatenate([b["labels"][:, 0] for b in batches])
  np.testing.assert_array_equal(firsts, np.repeat(split[1], 3))


def test_shifted_mnist(split):
  images, labels = split
  data = ShiftedImages(images, labels, seed=0)
  batch = data.batch(0, 40)
  assert batch["image"].shape == (40, 28, 28, 1)
  assert batch["labels"].shape == (40, 1)
  np.testing.assert_array_equal(batch["components"][:, 0], batch["image"])
  seen = set()
  for b in range(40):
    img = np.round(batch["image"][b, :, :, 0] * 255)
    matches = []
    for i in np.flatnonzero(labels == batch["labels"][b, 0]):
      for dy in range(-2, 3):
        for dx in range(-2, 3):
          # Blobs have a 4 px margin, so a roll is the same as a zero-padded shift.
          if np.array_equal(np.roll(images[i], (dy, dx), (0, 1)), img):
            matches.append((dy, dx))
    assert matches
    seen.add(matches[0])
  assert len(seen) > 5
  np.testing.assert_array_equal(data.batch(3, 40)["image"],
                                ShiftedImages(*split, seed=0).batch(3, 40)["image"])


def test_mnist_test_batches(split):
  test = ClassificationTest(*split)
  batches = list(test.batches(64))
  assert sum(len(b["labels"]) for b in batches) == 200
  np.testing.assert_array_equal(batches[0]["labels"][:, 0], split[1][:64])


def test_bad_multimnist_arguments(split):
  with pytest.raises(ValueError, match="merge"):
    MultiMNIST(*split, seed=0, merge="mean")
  with pytest.raises(ValueError, match="uint8"):
    MultiMNIST(split[0].astype(np.float32), split[1], seed=0)
  with pytest.raises(ValueError, match="divisible"):
    MultiMNIST(*split, seed=0).batch(0, 33, process_count=2)


def moved(image, dy, dx):
  """`image` moved down by `dy` and right by `dx` rows/columns, zero filled (no wrap)."""
  h, w = image.shape
  out = np.zeros_like(image)
  out[max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
      image[max(-dy, 0):h - max(dy, 0), max(-dx, 0):w - max(dx, 0)]
  return out


def test_efficient_capsnet_shift_moves_each_digit_within_its_margins():
  """Each image comes out moved by (dy, dx), zero filled, by no more than the empty margin
  on that side (augment.py, step 2): nothing is lost or wraps round."""
  from capsjax.data.augment import _shift
  rng = np.random.default_rng(0)
  n = 400
  images = np.zeros((n, 28, 28), np.float32)
  boxes = []
  for i in range(n):  # an inked box with different margins on each side
    h, w = rng.integers(3, 16, size=2)
    top, left = rng.integers(0, 29 - h), rng.integers(0, 29 - w)
    images[i, top:top + h, left:left + w] = rng.uniform(0.1, 1.0, (h, w))
    boxes.append((top, left, h, w))
  out = _shift(images, 0, np.arange(n, dtype=np.int64))
  offsets = []
  for i, (top, left, h, w) in enumerate(boxes):
    rows, cols = np.flatnonzero(out[i].any(axis=1)), np.flatnonzero(out[i].any(axis=0))
    dy, dx = rows[0] - top, cols[0] - left
    np.testing.assert_array_equal(out[i], moved(images[i], dy, dx))
    assert -top <= dy <= 28 - top - h and -left <= dx <= 28 - left - w, (i, dy, dx)
    offsets.append((dy, dx))
  dys, dxs = np.array(offsets).T
  for d in (dys, dxs):  # it moves, both ways, by varied amounts
    assert d.min() < 0 < d.max() and len(np.unique(d)) > 10


# ----------------------------------------------------------------------------
# smallNORB, the EM-routing paper's protocol.

def test_smallnorb_through_tfds_mock_data():
  from capsjax.data.smallnorb import CROP
  with tfds.testing.mock_data(num_examples=12):
    spec = get_dataset("smallnorb")
    assert (spec.image_shape, spec.num_classes, spec.labels_per_example) == ((32, 32, 1), 5, 1)

    class Config:
      seed, test_subset = 3, 0
    train, test = spec.build(Config)
    raw = tfds.data_source("smallnorb", split="test")
    assert len(train) == 12 and len(test) == 12
    # Test: the 96x96 image halved by 2x2 means to 48x48, standardised (zero mean, unit
    # variance), then its centre 32x32.
    image = np.asarray(raw[4]["image"], np.float64)[..., 0]
    halved = np.round(image.reshape(48, 2, 48, 2).mean(axis=(1, 3))) / 255
    standard = (halved - halved.mean()) / max(halved.std(), 1 / 48)
    first = next(test.batches(6))
    np.testing.assert_allclose(first["image"][4, ..., 0], standard[8:40, 8:40], atol=1e-4)
    assert first["labels"][4, 0] == int(raw[4]["label_category"])
    batch = train.batch(0, 8)
    assert batch["image"].shape == (8, CROP, CROP, 1) and batch["multi_hot"].shape == (8, 5)
    assert np.all(np.isfinite(batch["image"])) and abs(batch["image"].mean()) < 1.0
    np.testing.assert_array_equal(batch["image"], train.batch(0, 8)["image"])


def test_smallnorb_augmentation_crops_and_jitters_within_the_ranges():
  from capsjax.data.smallnorb import CONTRAST_RANGE, MAX_BRIGHTNESS, smallnorb_augment
  index = np.arange(200)
  # A ramp image: a crop is a contiguous 32x32 window of it.
  ramp = np.broadcast_to((np.arange(48 * 48) % 48 + 48 * (np.arange(48 * 48) // 48))
                         .reshape(48, 48), (200, 48, 48)).astype(np.float64)
  flat = np.full((200, 48, 48), 0.5)
  out = smallnorb_augment(flat, seed=1, index=index)
  assert out.shape == (200, 32, 32) and out.dtype == np.float32
  # A flat image standardises to 0; contrast leaves it flat: brightness alone.
  shift = out[:, 0, 0]
  assert np.all(np.abs(shift) <= MAX_BRIGHTNESS + 1e-6) and np.ptp(shift) > MAX_BRIGHTNESS
  np.testing.assert_allclose(out, out[:, :1, :1] * np.ones((1, 32, 32)), atol=1e-6)
  # With the jitter on a ramp scaled to [0, 1]: recover where each crop came from.
  small = ramp / ramp.max() * 0.3 + 0.35
  crops = smallnorb_augment(small, seed=1, index=index)
  step = 0.3 / ramp.max() / small[0].std()       # one pixel of the standardised ramp
  for c in crops:
    step_x, step_y = c[0, 1] - c[0, 0], c[1, 0] - c[0, 0]
    assert step_y == pytest.approx(48 * step_x, rel=1e-2)  # one window, rows of 48
    contrast = step_x / step
    assert CONTRAST_RANGE[0] - 1e-2 <= contrast <= CONTRAST_RANGE[1] + 1e-2
  np.testing.assert_array_equal(crops, smallnorb_augment(small, seed=1, index=index))
  assert not np.array_equal(crops, smallnorb_augment(small, seed=2, index=index))
