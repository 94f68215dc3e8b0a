"""Pictures of the paper: reconstructions (Fig. 5), dimension perturbations (Fig. 4),
and training curves. Inputs are NumPy arrays; output is a PNG file.

Drawn on :class:`matplotlib.figure.Figure` objects, without pyplot, so neither
importing nor calling this module changes the user's matplotlib backend.
Each function returns its figure.
"""
from __future__ import annotations

import json
import pathlib

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

__all__ = ["plot_reconstructions", "plot_perturbations", "plot_curves", "PERTURBATIONS"]

PERTURBATIONS = np.round(np.arange(-0.25, 0.2501, 0.05), 2)  # 11 values, as in Fig. 4
_COLOURS = np.array([[1.0, 0.2, 0.2], [0.2, 0.9, 0.2]])      # object 1 red, object 2 green


def _rgb(parts: np.ndarray) -> np.ndarray:
  """``(K, H, W, C)`` images -> one RGB image; K grey images: object k in colour k."""
  if parts.shape[-1] == 3:
    return np.clip(parts.sum(axis=0), 0, 1)
  if parts.shape[0] == 1:
    return np.repeat(parts[0], 3, axis=-1)
  rgb = np.einsum("khw,kc->hwc", parts[..., 0], _COLOURS[:parts.shape[0]])
  return np.clip(rgb, 0, 1)


def plot_reconstructions(path, images, labels, recon_true, predicted, recon_pred) -> Figure:
  """Rows: input; reconstruction from the true labels; from the predicted ones.

  Args:
    images: ``(N, H, W, C)``.
    labels, predicted: ``(N, K)`` int.
    recon_true, recon_pred: ``(N, K, H, W, C)``.
  """
  n = images.shape[0]
  fig = Figure(figsize=(1.2 * n, 4.0))
  axes = fig.subplots(3, n, squeeze=False)
  rows = [("input", lambda i: _rgb(images[i][None]), labels),
          ("R: true labels", lambda i: _rgb(recon_true[i]), labels),
          ("R: predicted", lambda i: _rgb(recon_pred[i]), predicted)]
  for r, (name, picture, tags) in enumerate(rows):
    for i in range(n):
      ax = axes[r, i]
      ax.imshow(picture(i), vmin=0, vmax=1)
      ax.set_xticks([])
      ax.set_yticks([])
      ax.set_title(",".join(str(int(t)) for t in tags[i]), fontsize=8)
    axes[r, 0].set_ylabel(name, fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=80)
  return fig


def plot_perturbations(path, grid: np.ndarray, label: int) -> Figure:
  """``grid (dims, len(PERTURBATIONS), H, W[, C])``: dimension d of the capsule of
  ``label`` shifted by each perturbation, then decoded. Drawn as one montage
  (one image, not 176 axes: a small PNG)."""
  if grid.ndim == 4:
    grid = grid[..., None]
  dims, steps, h, w, c = grid.shape
  gap = 2
  montage = np.ones((dims * (h + gap) - gap, steps * (w + gap) - gap, c), np.float32)
  for d in range(dims):
    for s in range(steps):
      montage[d * (h + gap):d * (h + gap) + h, s * (w + gap):s * (w + gap) + w] = grid[d, s]
  fig = Figure(figsize=(0.42 * steps + 0.6, 0.42 * dims + 0.5))
  ax = fig.subplots()
  ax.imshow(montage[..., 0] if c == 1 else np.clip(montage, 0, 1), cmap="gray", vmin=0, vmax=1)
  ax.set_xticks([s * (w + gap) + w / 2 for s in range(steps)],
                [f"{x:+.2f}" for x in PERTURBATIONS[:steps]], fontsize=5, rotation=90)
  ax.set_yticks([d * (h + gap) + h / 2 for d in range(dims)], [str(d) for d in range(dims)],
                fontsize=6)
  ax.tick_params(length=0)
  ax.set_title(f"class {label}: row d adds the column's value to dimension d", fontsize=7)
  fig.tight_layout(pad=0.2)
  fig.savefig(path, dpi=80)
  return fig


def plot_curves(metrics_path, path) -> Figure:
  """Training loss and test accuracy against step, from ``metrics.jsonl``."""
  train, test = [], []
  for line in pathlib.Path(metrics_path).read_text().splitlines():
    record = json.loads(line)
    (train if record.get("split") == "train" else test).append(record)
  fig = Figure(figsize=(9, 3.2))
  ax_loss, ax_acc = fig.subplots(1, 2)
  if train:
    ax_loss.plot([r["step"] for r in train], [r["loss"] for r in train])
  ax_loss.set_yscale("log")
  ax_loss.set_ylabel("train loss")
  # One label per image (MNIST): strict and per-digit accuracy are the same.
  two_digits = any(r.get("per_digit_accuracy", r["accuracy"]) != r["accuracy"] for r in test)
  lines = [("accuracy", "test accuracy (strict)" if two_digits else "test accuracy")]
  if two_digits:
    lines.append(("per_digit_accuracy", "per digit"))
  for key, name in lines:
    points = [(r["step"], 100 * r[key]) for r in test if key in r]
    if points:
      ax_acc.plot(*zip(*points), marker="o", markersize=3 if len(points) > 50 else None, label=name)
  for ax in (ax_loss, ax_acc):  # at most 5 step labels, which stay apart up to 7 digits
    ax.set_xlabel("step")
    ax.xaxis.set_major_locator(MaxNLocator(nbins=5, integer=True))
  ax_acc.set_ylabel("%")
  if test:
    ax_acc.legend()
  ax_acc.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=80)
  return fig
