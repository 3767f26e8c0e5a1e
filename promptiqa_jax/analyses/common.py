"""What the analyses share: SRCC under a chosen prompt, means over requirement groups, and the
files each analysis writes (WORKDIR/analyses/<name>.json, .txt and .png)."""
from __future__ import annotations

import json
import math
import os
from typing import Any, Sequence

import numpy as np

from promptiqa_jax import metrics
from promptiqa_jax.data import datasets as dataset_registry
from promptiqa_jax.data import prompts as prompts_lib
from promptiqa_jax.evaluators import report, summary
from promptiqa_jax.evaluators.common import EvalContext

ANALYSES_DIR = "analyses"
# The summary groups the analyses report, besides every requirement on its own.
GROUPS = ("train_requirements", "heldout_in_family", "heldout_out_of_family")


def srcc_with_prompt(ctx: EvalContext, name: str, indices: Sequence[int]) -> float:
  """SRCC on the evaluated split of `name` when prompted with the training records `indices`."""
  scores = ctx.scores(name, ctx.train_split)
  indices = np.asarray(indices, np.int64)
  features = ctx.features.rows(name, ctx.train_split, indices)
  predictions = ctx.predict(name, features, scores[indices])
  return metrics.srcc(predictions, ctx.scores(name, ctx.split))


def pick(ctx: EvalContext, name: str, size: int, method: str = "interval", seed: int = 0,
         half: str | None = None) -> np.ndarray:
  """Training-split indices `[size]` of a prompt: `select_prompt` over the whole split, or over the
  `half` ("best" or "worst" by quality: for a lower-is-better requirement the lower scores) only.
  A single pair (which the protocol's rules do not define) is the median-score record for
  "interval" and a seeded random record for "random"."""
  scores = ctx.scores(name, ctx.train_split)
  candidates = np.arange(len(scores))
  if half is not None:
    requirement = dataset_registry.requirement_of(name)
    quality = -scores if requirement is not None and requirement.lower_better else scores
    median = np.median(quality)
    candidates = np.flatnonzero(quality >= median if half == "best" else quality < median)
  if size == 1:
    ranked = candidates[np.argsort(scores[candidates], kind="stable")]
    if method == "random":
      return np.random.default_rng(seed).choice(candidates, 1)
    return ranked[[(len(ranked) - 1) // 2]]
  return candidates[prompts_lib.select_prompt(scores[candidates], size, method, seed)]


def group_means(values: dict[str, float]) -> dict[str, float | None]:
  """{group: mean of the finite values of its requirements} for GROUPS (None if it has none)."""
  named = summary.groups(list(values))
  out = {}
  for group in GROUPS:
    finite = [values[n] for n in named[group] if values[n] is not None and math.isfinite(values[n])]
    out[group] = float(np.mean(finite)) if finite else None
  return out


def number(value: Any) -> str:
  return "nan" if value is None or not math.isfinite(value) else f"{value:+.3f}"


def text_table(title: str, columns: Sequence[str], rows: dict[str, Sequence[Any]],
               cell_width: int) -> str:
  """A plain-text table: `title`, a header of `columns`, one line per row name (numbers signed to
  three decimals, None as 'nan')."""
  width = max(len(n) for n in rows)
  lines = [title, f"{'requirement':<{width}}  " + " ".join(f"{c:>{cell_width}}" for c in columns)]
  lines += [f"{name:<{width}}  " + " ".join(f"{number(v):>{cell_width}}" for v in values)
            for name, values in rows.items()]
  return "\n".join(lines)


def write(out_dir: str | os.PathLike, name: str, result: dict[str, Any], table: str,
          figure: Any) -> dict[str, str]:
  """Writes out_dir/analyses/<name>.json (NaN as null), .txt (the table) and .png (the figure);
  returns their paths."""
  folder = os.path.join(os.fspath(out_dir), ANALYSES_DIR)
  os.makedirs(folder, exist_ok=True)
  paths = {kind: os.path.join(folder, f"{name}.{kind}") for kind in ("json", "txt", "png")}
  with open(paths["json"], "w") as f:
    json.dump(report.jsonable(result), f, indent=2, allow_nan=False)
  with open(paths["txt"], "w") as f:
    f.write(table + "\n")
  figure.savefig(paths["png"])
  return paths


def new_figure(width: float, height: float) -> Any:
  """A matplotlib Figure without pyplot (safe without a display)."""
  # Optional and heavy: matplotlib loads only when a figure is made.
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure

  figure = Figure(figsize=(width, height), dpi=100)
  FigureCanvasAgg(figure)
  return figure
