"""MNIST from tensorflow-datasets, from IDX files, or from the bundled copy.

Plain NumPy; nothing here imports JAX, and tensorflow-datasets is used without
TensorFlow:

* a *prepared* TFDS MNIST is read with ``tfds.data_source``;
* otherwise tfds' own download manager fetches the four raw files (verifying
  tfds' registered checksums) and they are parsed with the IDX reader here,
  because *preparing* the TFDS dataset would import TensorFlow;
* offline, the copy bundled in the package is used.
"""
from __future__ import annotations

import gzip
import hashlib
import logging
import os
import pathlib
import threading
import urllib.request

import numpy as np

__all__ = ["load_mnist", "read_idx", "MnistFileError", "SOURCES", "BUNDLED_DIR"]

log = logging.getLogger("capsjax")

SOURCES = ("auto", "tfds", "idx", "bundled")
SPLITS = {"train": ("train", 60_000), "test": ("t10k", 10_000)}
BUNDLED_DIR = pathlib.Path(__file__).parent / "mnist_files"
TFDS_MNIST_URL = "https://storage.googleapis.com/cvdf-datasets/mnist/"
_IDX_UBYTE = 0x08


class MnistFileError(ValueError):
  """A missing, truncated or corrupt MNIST file (the message names it)."""


# ----------------------------------------------------------------------------
# IDX files.


def _open_bytes(path: pathlib.Path) -> bytes:
  try:
    raw = path.read_bytes()
  except OSError as e:
    raise MnistFileError(f"cannot read MNIST file {path}: {e.strerror or e}") from None
  if raw[:2] == b"\x1f\x8b":
    try:
      return gzip.decompress(raw)
    except (OSError, EOFError, gzip.BadGzipFile) as e:
      raise MnistFileError(f"{path} is not a valid gzip file ({e}); re-download it.") from None
  return raw


def read_idx(path: str | os.PathLike, kind: str, count: int | None = None) -> np.ndarray:
  """Reads one MNIST IDX file (gzip or raw) and validates it.

  Args:
    path: the file.
    kind: ``"images"`` (IDX3, magic 2051, 28x28) or ``"labels"`` (IDX1,
      magic 2049, values 0..9).
    count: the expected number of items, if known.

  Returns:
    ``uint8`` images ``(N, 28, 28)`` or labels ``(N,)``.

  Raises:
    MnistFileError: naming the file and what was expected.
  """
  path = pathlib.Path(path)
  ndim = {"images": 3, "labels": 1}[kind]
  data = _open_bytes(path)
  expected_magic = (_IDX_UBYTE << 8) | ndim
  header_len = 4 + 4 * ndim
  if len(data) < header_len:
    raise MnistFileError(f"{path} is truncated: {len(data)} bytes, shorter than the IDX header.")
  magic = int.from_bytes(data[:4], "big")
  if magic != expected_magic:
    raise MnistFileError(
        f"{path} is not an MNIST {kind} file: magic number {magic}, expected "
        f"{expected_magic}.")
  dims = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
  if kind == "images" and dims[1:] != [28, 28]:
    raise MnistFileError(f"{path}: images are {dims[1]}x{dims[2]}, expected 28x28.")
  if count is not None and dims[0] != count:
    raise MnistFileError(f"{path}: holds {dims[0]} {kind}, expected {count}.")
  n_bytes = int(np.prod(dims))
  if len(data) != header_len + n_bytes:
    raise MnistFileError(
        f"{path} is truncated or corrupt: {len(data) - header_len} data bytes, "
        f"expected {n_bytes} for shape {tuple(dims)}.")
  array = np.frombuffer(data, np.uint8, offset=header_len).reshape(dims)
  if kind == "labels" and array.max(initial=0) > 9:
    raise MnistFileError(f"{path}: label {int(array.max())} out of range 0..9.")
  return array


def _find_idx(directory: pathlib.Path, stem: str) -> pathlib.Path:
  for name in (stem + ".gz", stem):
    if (directory / name).is_file():
      return directory / name
  raise MnistFileError(
      f"MNIST file {stem}[.gz] not found in {directory}; it should hold "
      "train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte "
      "and t10k-labels-idx1-ubyte (gzip or raw).")


def _load_idx_split(directory: str | os.PathLike, split: str) -> tuple[np.ndarray, np.ndarray]:
  directory = pathlib.Path(directory)
  prefix, count = SPLITS[split]
  images = read_idx(_find_idx(directory, f"{prefix}-images-idx3-ubyte"), "images", count)
  labels = read_idx(_find_idx(directory, f"{prefix}-labels-idx1-ubyte"), "labels", count)
  return images, labels.astype(np.int32)


def _verify_bundled() -> None:
  for line in (BUNDLED_DIR / "SHA256SUMS").read_text().splitlines():
    digest, name = line.split()
    actual = hashlib.sha256((BUNDLED_DIR / name).read_bytes()).hexdigest()
    if actual != digest:
      raise MnistFileError(
          f"bundled {BUNDLED_DIR / name} fails its SHA256 check; reinstall capsjax.")


# ----------------------------------------------------------------------------
# tensorflow-datasets.


def _tfds_prepared(split: str, data_dir: str | None) -> tuple[np.ndarray, np.ndarray] | None:
  """Reads a prepared TFDS MNIST with ``tfds.data_source``; None if not prepared."""
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

  try:
    source = tfds.data_source("mnist", split=split, data_dir=data_dir, download=False)
  except Exception as e:  # noqa: BLE001 - tfds raises several types for "not prepared"
    log.debug("tfds data_source unavailable: %s", e)
    return None
  n = len(source)
  images = np.empty((n, 28, 28), np.uint8)
  labels = np.empty((n,), np.int32)
  for i in range(n):  # one element at a time: batched __getitems__ is broken in mocks
    example = source[i]
    images[i] = np.asarray(example["image"]).reshape(28, 28)
    labels[i] = int(example["label"])
  return images, labels


def _online(url: str = TFDS_MNIST_URL, timeout: float = 3.0) -> bool:
  """One HTTP HEAD request for a file tfds would download, bounded by
  ``timeout`` seconds in total (DNS included, which a socket timeout alone
  does not bound); no retries."""
  reachable = threading.Event()

  def probe():
    request = urllib.request.Request(url + "t10k-labels-idx1-ubyte.gz", method="HEAD")
    try:
      with urllib.request.urlopen(request, timeout=timeout) as response:
        if response.status == 200:
          reachable.set()
    except (OSError, ValueError):
      pass

  thread = threading.Thread(target=probe, daemon=True)
  thread.start()
  thread.join(timeout)
  return reachable.is_set()


def _tfds_download(download_dir: str | None) -> pathlib.Path:
  """Fetches the four raw files with tfds' download manager, checksums verified."""
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  from tensorflow_datasets.core.download import checksums  # pylint: disable=import-outside-toplevel

  url_infos = checksums.load_url_infos(
      tfds.core.utils.tfds_path() / "url_checksums" / "mnist.txt")
  if download_dir is None:
    data_dir = os.environ.get("TFDS_DATA_DIR", os.path.expanduser("~/tensorflow_datasets"))
    download_dir = os.path.join(data_dir, "downloads")
  manager = tfds.download.DownloadManager(
      download_dir=download_dir, url_infos=url_infos, dataset_name="mnist",
      force_checksums_validation=True)
  names = [f"{p}-{k}-idx{d}-ubyte.gz" for p in ("train", "t10k")
           for k, d in (("images", 3), ("labels", 1))]
  paths = manager.download({name: TFDS_MNIST_URL + name for name in names})
  # tfds stores downloads under hashed names; link them under the IDX names.
  idx_dir = pathlib.Path(download_dir) / "capsjax_mnist_idx"
  idx_dir.mkdir(parents=True, exist_ok=True)
  for name, path in paths.items():
    link = idx_dir / name
    if not link.exists():
      link.symlink_to(pathlib.Path(path).resolve())
  return idx_dir


# ----------------------------------------------------------------------------


def load_mnist(
    split: str,
    source: str = "auto",
    mnist_dir: str | os.PathLike | None = None,
    *,
    tfds_data_dir: str | None = None,
) -> tuple[np.ndarray, np.ndarray]:
  """Loads one MNIST split.

  Args:
    split: ``"train"`` (60,000) or ``"test"`` (10,000).
    source: ``"tfds"``, ``"idx"`` (needs ``mnist_dir``), ``"bundled"``, or
      ``"auto"``: a prepared TFDS dataset, else a tfds download, else (offline)
      the bundled copy. One log line says which was used and why.
    mnist_dir: directory of the four IDX files for ``source="idx"``.
    tfds_data_dir: TFDS data dir (default: tfds' own default).

  Returns:
    ``(images uint8 (N, 28, 28), labels int32 (N,))``.
  """
  if split not in SPLITS:
    raise ValueError(f"split must be 'train' or 'test', got {split!r}.")
  if source not in SOURCES:
    raise ValueError(f"source must be one of {SOURCES}, got {source!r}.")
  if source == "idx" or (source == "auto" and mnist_dir is not None):
    if mnist_dir is None:
      raise ValueError("source='idx' needs mnist_dir, the directory of the four IDX files.")
    log.info("MNIST %s: IDX files in %s", split, mnist_dir)
    return _load_idx_split(mnist_dir, split)
  if source == "bundled":
    log.info("MNIST %s: bundled copy (asked for)", split)
    _verify_bundled()
    return _load_idx_split(BUNDLED_DIR, split)

  prepared = _tfds_prepared(split, tfds_data_dir)
  if prepared is not None:
    log.info("MNIST %s: prepared tensorflow-datasets 'mnist'", split)
    return prepared
  if _online():
    idx_dir = _tfds_download(
        None if tfds_data_dir is None else os.path.join(tfds_data_dir, "downloads"))
    log.info("MNIST %s: raw files fetched by the tfds download manager into %s", split, idx_dir)
    return _load_idx_split(idx_dir, split)
  if source == "tfds":
    raise RuntimeError(
        "tensorflow-datasets has no prepared MNIST and the download host is "
        "unreachable; use --data_source bundled (or auto) to use the copy in the package.")
  log.info("MNIST %s: bundled copy (no prepared tfds dataset and offline)", split)
  _verify_bundled()
  return _load_idx_split(BUNDLED_DIR, split)
