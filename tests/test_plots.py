"""Training curves stay readable for long runs (6-digit step counts)."""
import json

from matplotlib.backends.backend_agg import FigureCanvasAgg

from capsjax import plots


def _labels_apart(ax, renderer) -> bool:
  boxes = [t.get_window_extent(renderer) for t in ax.get_xticklabels() if t.get_text()]
  boxes.sort(key=lambda b: b.x0)
  return len(boxes) >= 2 and all(a.x1 < b.x0 for a, b in zip(boxes, boxes[1:]))


def test_curves_step_labels_do_not_overlap(tmp_path):
  # 309 evaluations and 2,900 loss points up to step 145,000, as a 300-epoch GPU run writes.
  lines = [{"step": s, "split": "train", "loss": 1.0 / s} for s in range(50, 145_001, 50)]
  lines += [{"step": s, "split": "test", "accuracy": 0.99} for s in range(469, 145_001, 469)]
  metrics = tmp_path / "metrics.jsonl"
  metrics.write_text("\n".join(json.dumps(r) for r in lines))
  fig = plots.plot_curves(metrics, tmp_path / "curves.png")
  canvas = FigureCanvasAgg(fig)
  canvas.draw()
  renderer = canvas.get_renderer()
  assert all(_labels_apart(ax, renderer) for ax in fig.axes)
  assert (tmp_path / "curves.png").stat().st_size > 0
