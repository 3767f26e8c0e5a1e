"""The report of an evaluation: the JSON file, the scatter plots and the text table.

Files (written by process 0): WORKDIR/eval/<name>.json (NaN written as null) and
WORKDIR/eval/plots/<dataset>_<name>.png, the workdir local or in a bucket (gs://).
"""
from __future__ import annotations

import json
import math
import os
import re
from typing import Any

import numpy as np
from etils import epath

from promptiqa_jax import storage
from promptiqa_jax.evaluators.common import EvalContext

# Where the files go under the workdir.
EVAL_DIR = "eval"
PLOTS_DIR = "plots"
METRIC_NOTES = {
    "plcc": "Pearson correlation of the raw predictions, no logistic fit",
    "rmse": "in normalised score units ([0, 1])",
    "krcc": "Kendall tau-b",
}


def jsonable(value: Any) -> Any:
  """NaN and inf -> None (JSON has no NaN), numpy arrays and scalars -> Python lists and numbers."""
  if isinstance(value, dict):
    return {str(k): jsonable(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [jsonable(v) for v in value]
  if isinstance(value, np.ndarray):
    return jsonable(value.tolist())
  if isinstance(value, np.integer):
    return int(value)
  if isinstance(value, (float, np.floating)):
    return float(value) if math.isfinite(value) else None
  return value


def write_results(result: dict[str, Any], out_dir: str | os.PathLike, name: str) -> str:
  """Writes `result` to out_dir/eval/<name>.json (NaN as null); returns the path."""
  path = storage.path(out_dir) / EVAL_DIR / f"{name}.json"
  # Atomically: readers (a dashboard, a sweep script) may poll the file while training writes the
  # next one.
  storage.write_text(path, json.dumps(jsonable(result), indent=2, allow_nan=False))
  return os.fspath(path)


def _file_safe(text: str) -> str:
  return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)


def scatter_plot(pred: np.ndarray, target: np.ndarray, title: str, path: epath.Path) -> None:
  """A PNG of predictions `[N]` against ground truth `[N]` (no pyplot: safe without a display)."""
  # Optional and heavy: matplotlib loads only when plots are written.
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure

  figure = Figure(figsize=(4, 4), dpi=100)
  FigureCanvasAgg(figure)
  axes = figure.add_subplot()
  axes.scatter(target, pred, s=6, alpha=0.6)
  axes.plot([0, 1], [0, 1], color="grey", linewidth=0.8, linestyle="--")
  axes.set_xlabel("ground truth (normalised)")
  axes.set_ylabel("prediction")
  axes.set_title(title, fontsize=8)
  figure.tight_layout()
  with path.open("wb") as f:
    figure.savefig(f, format="png")


def plot_path(out_dir: str | os.PathLike, dataset: str, name: str) -> epath.Path:
  """out_dir/eval/plots/<dataset>_<name>.png (the dataset name with characters other than
  letters, digits, "_", "-", "." as "_")."""
  return storage.path(out_dir) / EVAL_DIR / PLOTS_DIR / f"{_file_safe(dataset)}_{name}.png"


def write_plots(ctx: EvalContext, result: dict[str, Any], out_dir: str | os.PathLike,
                name: str) -> list[str]:
  """A scatter plot per dataset with own-prompt predictions, at `plot_path`."""
  paths = []
  for dataset, pred in ctx.predictions.items():
    stats = result.get("datasets", {}).get(dataset)
    title = f"{dataset} ({ctx.split}, {name})"
    if stats is not None:
      title += f"\nSRCC {stats['srcc']:.3f}  PLCC {stats['plcc']:.3f}  n {stats['n']}"
    path = plot_path(out_dir, dataset, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    scatter_plot(pred, ctx.scores(dataset, ctx.split), title, path)
    paths.append(os.fspath(path))
  return paths


_TABLE_SECTIONS = (
    ("datasets", "own prompt"),
    ("heldout", "held-out requirements, own prompt"),
    ("flipped_prompt", "prompt scores flipped, against flipped truth"),
    ("mismatched_prompt", "other datasets' prompts, mean"),
    ("constant_prompt", "prompt scores all 0.5"),
    ("supervised_ceiling", "ridge on the image features, own training labels"),
)


def _number(value: Any, signed: bool = True) -> str:
  if value is None or (isinstance(value, float) and not math.isfinite(value)):
    return "nan"
  return f"{value:+.3f}" if signed else f"{value:.3f}"


def scalars(result: dict[str, Any]) -> dict[tuple[str, ...], float]:
  """The result's numbers keyed (section, dataset, metric) for the table's sections and
  ("summary", key); undefined ones (NaN, None) left out."""
  rows = [((section, dataset, metric), value) for section, _ in _TABLE_SECTIONS
          for dataset, row in result.get(section, {}).items() for metric, value in row.items()]
  rows += [(("summary", key), value) for key, value in result.get("summary", {}).items()]
  return {key: float(value) for key, value in rows
          if isinstance(value, (int, float)) and not isinstance(value, bool)
          and math.isfinite(value)}


def format_table(result: dict[str, Any]) -> str:
  """The result as a plain-text table: one block per section, then the summary."""
  step = result.get("step")
  # final.json names the model its top level describes (evaluators/final.py).
  lines = [f"Evaluation{' of ' + result['model'] if 'model' in result else ''} on split "
           f"{result.get('split')!r}"
           + (f" at step {step}" if step is not None else "")
           + "; PLCC is Pearson without logistic fitting"]
  width = max([len(n) for key, _ in _TABLE_SECTIONS for n in result.get(key, {})] + [10])
  for key, description in _TABLE_SECTIONS:
    section = result.get(key)
    if not section:
      continue
    lines.append("")
    lines.append(f"{key} ({description})")
    lines.append(f"  {'dataset':<{width}}  {'SRCC':>7} {'PLCC':>7} {'KRCC':>7} {'RMSE':>7} "
                 f"{'n':>6}")
    for name, row in section.items():
      lines.append(f"  {name:<{width}}  {_number(row['srcc']):>7} {_number(row['plcc']):>7} "
                   f"{_number(row['krcc']):>7} {_number(row['rmse'], False):>7} {row['n']:>6}"
                   + (f"  ({row['note']})" if "note" in row else ""))
  summary = {k: v for k, v in result.get("summary", {}).items() if v is not None}
  if summary:
    lines.append("")
    lines.append("summary (mean SRCC)")
    width = max(len(k) for k in summary)
    lines += [f"  {k:<{width}}  {_number(v):>7}" for k, v in summary.items()]
  return "\n".join(lines)
