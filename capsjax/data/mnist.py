"""MNIST and Fashion-MNIST from tensorflow-datasets, from IDX files, or (MNIST) bundled.

Plain NumPy; nothing here imports JAX, and tensorflow-datasets is used without
TensorFlow:

* a *prepared* TFDS dataset is read with ``tfds.data_source``;
* otherwise tfds' own download manager fetches the four raw files (verifying
  tfds' registered checksums) and they are parsed with the IDX reader here,
  because *preparing* the TFDS dataset would import TensorFlow;
* offline, MNIST comes from the copy bundled in the package.

Whatever the source, a split comes in one canonical order
(:mod:`capsjax.data.canonical`), so the same config and seed give the same
batches on every machine.
"""
from __future__ import annotations

import dataclasses
import gzip
import hashlib
import logging
import os
import pathlib
import threading
import urllib.request

import numpy as np

from capsjax.data.canonical import canonical_order
from capsjax.data.errors import DataError, MnistFileError
from capsjax.data.tfds_images import load_tfds_split

__all__ = ["load_mnist", "load_idx_dataset", "read_idx", "IDX_DATASETS", "SOURCES",
           "BUNDLED_DIR"]

log = logging.getLogger("capsjax")

SOURCES = ("auto", "tfds", "idx", "bundled")
SPLITS = {"train": ("train", 60_000), "test": ("t10k", 10_000)}
BUNDLED_DIR = pathlib.Path(__file__).parent / "mnist_files"
_IDX_UBYTE = 0x08


@dataclasses.dataclass(frozen=True)
class IdxDataset:
  """A dataset of four IDX files that tfds knows by ``name``."""
  name: str
  url: str                              # the directory tfds downloads the files from
  bundled: pathlib.Path | None = None   # a copy in the package, if any


IDX_DATASETS = {
    "mnist": IdxDataset("mnist", "https://storage.googleapis.com/cvdf-datasets/mnist/",
                        BUNDLED_DIR),
    "fashion_mnist": IdxDataset(
        "fashion_mnist", "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"),
}
TFDS_MNIST_URL = IDX_DATASETS["mnist"].url


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


def _verify_bundled(directory: pathlib.Path) -> None:
  """Checks the bundled files against their ``SHA256SUMS``."""
  for line in (directory / "SHA256SUMS").read_text().splitlines():
    digest, name = line.split()
    actual = hashlib.sha256((directory / name).read_bytes()).hexdigest()
    if actual != digest:
      raise MnistFileError(
          f"bundled {directory / name} fails its SHA256 check; reinstall capsjax.")


# ----------------------------------------------------------------------------
# tensorflow-datasets.


def _tfds_prepared(name: str, split: str,
                   data_dir: str | None) -> tuple[np.ndarray, np.ndarray] | None:
  """Reads a prepared TFDS dataset with ``tfds.data_source``; None if not prepared."""
  try:
    images, labels = load_tfds_split(name, split, data_dir)
  except DataError as e:
    log.debug("tfds data_source unavailable: %s", e)
    return None
  return images.reshape(-1, 28, 28), labels


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


def _tfds_download(dataset: IdxDataset, download_dir: str | None) -> pathlib.Path:
  """Fetches the four raw files with tfds' download manager, checksums verified."""
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  from tensorflow_datasets.core.download import checksums  # pylint: disable=import-outside-toplevel

  url_infos = checksums.load_url_infos(
      tfds.core.utils.tfds_path() / "url_checksums" / f"{dataset.name}.txt")
  if download_dir is None:
    data_dir = os.environ.get("TFDS_DATA_DIR", os.path.expanduser("~/tensorflow_datasets"))
    download_dir = os.path.join(data_dir, "downloads")
  manager = tfds.download.DownloadManager(
      download_dir=download_dir, url_infos=url_infos, dataset_name=dataset.name,
      force_checksums_validation=True)
  names = [f"{p}-{k}-idx{d}-ubyte.gz" for p in ("train", "t10k")
           for k, d in (("images", 3), ("labels", 1))]
  paths = manager.download({name: dataset.url + name for name in names})
  # tfds stores downloads under hashed names; link them under the IDX names.
  idx_dir = pathlib.Path(download_dir) / f"capsjax_{dataset.name}_idx"
  idx_dir.mkdir(parents=True, exist_ok=True)
  for name, path in paths.items():
    link = idx_dir / name
    target = pathlib.Path(path).resolve()
    if link.is_symlink() and link.resolve() != target:
      link.unlink()  # dangling or stale: exists() is False for a dangling link
    if not link.is_symlink() and not link.exists():
      link.symlink_to(target)
  return idx_dir


# ----------------------------------------------------------------------------


def load_idx_dataset(
    name: str,
    split: str,
    source: str = "auto",
    directory: str | os.PathLike | None = None,
    *,
    tfds_data_dir: str | None = None,
) -> tuple[np.ndarray, np.ndarray]:
  """Loads one split of an IDX dataset (``"mnist"`` or ``"fashion_mnist"``).

  Args:
    name: a key of :data:`IDX_DATASETS`.
    split: ``"train"`` (60,000) or ``"test"`` (10,000).
    source: ``"tfds"``, ``"idx"`` (needs ``directory``), ``"bundled"`` (MNIST
      only), or ``"auto"``: a prepared TFDS dataset, else a tfds download,
      else (offline) the bundled copy. One log line says which was used and why.
    directory: directory of the four IDX files for ``source="idx"``.
    tfds_data_dir: TFDS data dir (default: tfds' own default).

  Returns:
    ``(images uint8 (N, 28, 28), labels int32 (N,))``, in the canonical order
    of :func:`capsjax.data.canonical.canonical_order` whatever the source
    (tfds stores its copies shuffled; :func:`read_idx` keeps the file order).
  """
  if name not in IDX_DATASETS:
    raise ValueError(f"name must be one of {sorted(IDX_DATASETS)}, got {name!r}.")
  if split not in SPLITS:
    raise ValueError(f"split must be 'train' or 'test', got {split!r}.")
  if source not in SOURCES:
    raise ValueError(f"source must be one of {SOURCES}, got {source!r}.")
  return canonical_order(*_load_split(IDX_DATASETS[name], split, source, directory,
                                      tfds_data_dir))


def _load_split(dataset: IdxDataset, split: str, source: str,
                directory: str | os.PathLike | None,
                tfds_data_dir: str | None) -> tuple[np.ndarray, np.ndarray]:
  """:func:`load_idx_dataset` in the source's own order."""
  name = dataset.name
  if source == "idx" or (source == "auto" and directory is not None):
    if directory is None:
      raise ValueError("source='idx' needs the directory of the four IDX files (mnist_dir).")
    log.info("%s %s: IDX files in %s", name, split, directory)
    return _load_idx_split(directory, split)
  if source == "bundled":
    if dataset.bundled is None:
      raise DataError(
          f"capsjax bundles no copy of {name}; use --data_source auto or tfds (tfds' "
          "download manager fetches it), or idx with --mnist_dir DIR holding its four "
          "IDX files.")
    log.info("%s %s: bundled copy (asked for)", name, split)
    _verify_bundled(dataset.bundled)
    return _load_idx_split(dataset.bundled, split)

  prepared = _tfds_prepared(name, split, tfds_data_dir)
  if prepared is not None:  # load_tfds_split logged it
    return prepared
  if _online(dataset.url):
    idx_dir = _tfds_download(
        dataset, None if tfds_data_dir is None else os.path.join(tfds_data_dir, "downloads"))
    log.info("%s %s: raw files fetched by the tfds download manager into %s", name, split,
             idx_dir)
    return _load_idx_split(idx_dir, split)
  if source == "tfds" or dataset.bundled is None:
    fallback = ("use --data_source bundled (or auto) to use the copy in the package"
                if dataset.bundled is not None else
                "go online once (the files are then cached), or pass --data_source idx "
                "--mnist_dir DIR with its four IDX files")
    raise DataError(
        f"tensorflow-datasets has no prepared {name} and the download host is "
        f"unreachable; {fallback}.")
  log.info("%s %s: bundled copy (no prepared tfds dataset and offline)", name, split)
  _verify_bundled(dataset.bundled)
  return _load_idx_split(dataset.bundled, split)


def load_mnist(
    split: str,
    source: str = "auto",
    mnist_dir: str | os.PathLike | None = None,
    *,
    tfds_data_dir: str | None = None,
) -> tuple[np.ndarray, np.ndarray]:
  """Loads one MNIST split: :func:`load_idx_dataset` of ``"mnist"``."""
  return load_idx_dataset("mnist", split, source, mnist_dir, tfds_data_dir=tfds_data_dir)
