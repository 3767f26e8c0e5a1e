"""IQA agreement metrics between predicted and ground-truth scores: SRCC, PLCC, KRCC, RMSE.

PLCC here is the plain Pearson correlation of the raw predictions, with NO logistic fitting, as the
PromptIQA reference reports it. Much of the IQA literature first maps the predictions through a
4-parameter logistic; that variant is `plcc_logistic`, opt-in, and never what `plcc` means.

Every function takes 1-D `pred [N]` and `target [N]` and returns a float. They do not raise on data
a trained-from-scratch model produces during training (constant predictions, a NaN, tiny N): the
undefined value is NaN, and `quality_metrics` says why in a "note".
"""
from __future__ import annotations

import math
import warnings
from typing import Any, Callable

import numpy as np
from scipy import optimize, stats

METRICS = ("srcc", "plcc", "krcc", "rmse")


def _pair(pred: Any, target: Any) -> tuple[np.ndarray, np.ndarray]:
  pred = np.asarray(pred, np.float64).reshape(-1)
  target = np.asarray(target, np.float64).reshape(-1)
  if pred.shape != target.shape:
    raise ValueError(f"{len(pred)} predictions but {len(target)} ground-truth scores")
  return pred, target


def _problem(pred: np.ndarray, target: np.ndarray) -> str | None:
  """Why a correlation of the two is undefined, or None when it is defined."""
  if len(pred) < 2:
    return f"n = {len(pred)}: correlations need at least 2 images"
  if not np.all(np.isfinite(pred)):
    return f"{int(np.sum(~np.isfinite(pred)))} predictions are NaN or infinite"
  if not np.all(np.isfinite(target)):
    return f"{int(np.sum(~np.isfinite(target)))} ground-truth scores are NaN or infinite"
  if np.ptp(pred) == 0:
    return "the predictions are constant: correlations are undefined"
  if np.ptp(target) == 0:
    return "the ground truth is constant: correlations are undefined"
  return None


def _correlation(fn: Callable[..., Any], pred: Any, target: Any) -> float:
  pred, target = _pair(pred, target)
  if _problem(pred, target) is not None:
    return math.nan
  with warnings.catch_warnings():
    # Near-constant inputs can still warn; the value (possibly NaN) is what we report.
    warnings.simplefilter("ignore")
    return float(fn(pred, target)[0])


def srcc(pred: Any, target: Any) -> float:
  """Spearman rank correlation of `pred [N]` and `target [N]` (ties get average ranks)."""
  return _correlation(stats.spearmanr, pred, target)


def plcc(pred: Any, target: Any) -> float:
  """Pearson linear correlation of the RAW predictions `pred [N]` with `target [N]`.

  No logistic fitting (as the PromptIQA reference); see `plcc_logistic` for the fitted variant.
  """
  return _correlation(stats.pearsonr, pred, target)


def krcc(pred: Any, target: Any) -> float:
  """Kendall rank correlation (tau-b, which accounts for ties) of `pred [N]` and `target [N]`."""
  return _correlation(stats.kendalltau, pred, target)


def rmse(pred: Any, target: Any) -> float:
  """Root mean squared error of `pred [N]` against `target [N]`, in the scores' own units (the
  normalised [0, 1] scale in evaluations); NaN for N = 0 or non-finite values."""
  pred, target = _pair(pred, target)
  if len(pred) == 0 or not (np.all(np.isfinite(pred)) and np.all(np.isfinite(target))):
    return math.nan
  return float(np.sqrt(np.mean(np.square(pred - target))))


def logistic_4(x: np.ndarray, b1: float, b2: float, b3: float, b4: float) -> np.ndarray:
  """The IQA literature's 4-parameter logistic: b2 + (b1 - b2) / (1 + exp(-(x - b3) / |b4|))."""
  return b2 + (b1 - b2) / (1.0 + np.exp(-(x - b3) / (np.abs(b4) + 1e-12)))


def plcc_logistic(pred: Any, target: Any) -> float:
  """Pearson correlation after mapping `pred [N]` through a 4-parameter logistic fitted to
  `target [N]` (least squares, the common IQA practice). Opt-in: the reference's PLCC has no fit.

  NaN when the fit is not possible (N < 5, constant or non-finite inputs) or does not converge.
  """
  pred, target = _pair(pred, target)
  if len(pred) < 5 or _problem(pred, target) is not None:
    return math.nan
  start = [target.max(), target.min(), float(np.mean(pred)), float(np.std(pred))]
  try:
    with warnings.catch_warnings():
      warnings.simplefilter("ignore")
      params, _ = optimize.curve_fit(logistic_4, pred, target, p0=start, maxfev=20000)
  except (RuntimeError, ValueError):
    return math.nan
  return plcc(logistic_4(pred, *params), target)


def quality_metrics(pred: Any, target: Any, logistic: bool = False) -> dict[str, Any]:
  """SRCC, PLCC (Pearson, no logistic fit), KRCC and RMSE of `pred [N]` against `target [N]`.

  Returns {"srcc", "plcc", "krcc", "rmse": float (NaN where undefined), "n": N}, plus "note" (why
  some are NaN) when any is, and "plcc_logistic" when `logistic`.
  """
  pred, target = _pair(pred, target)
  out: dict[str, Any] = {"srcc": srcc(pred, target), "plcc": plcc(pred, target),
                         "krcc": krcc(pred, target), "rmse": rmse(pred, target), "n": len(pred)}
  if logistic:
    out["plcc_logistic"] = plcc_logistic(pred, target)
  problem = _problem(pred, target)
  if problem is not None:
    out["note"] = problem
  elif any(math.isnan(out[k]) for k in METRICS):
    out["note"] = "scipy returned NaN (near-constant inputs)"
  return out


def mean_metrics(results: list[dict[str, Any]]) -> dict[str, Any]:
  """The mean of each metric over several `quality_metrics` results (NaNs left out of the mean;
  NaN when all are NaN), with "n" from the first and "prompts" = how many were averaged."""
  if not results:
    raise ValueError("mean_metrics needs at least one result")
  out: dict[str, Any] = {}
  for key in METRICS + ("plcc_logistic",):
    if key in results[0]:
      values = np.array([r[key] for r in results], np.float64)
      finite = values[np.isfinite(values)]
      out[key] = float(np.mean(finite)) if finite.size else math.nan
  out["n"] = results[0]["n"]
  out["prompts"] = len(results)
  notes = sorted({r["note"] for r in results if "note" in r})
  if notes:
    out["note"] = "; ".join(notes)
  return out
