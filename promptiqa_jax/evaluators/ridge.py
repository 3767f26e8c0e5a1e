"""Ridge regression on image features, in closed form, with the penalty chosen by k-fold CV."""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np


@dataclasses.dataclass(frozen=True)
class Ridge:
  """y ~ ((x - mean) / scale) @ weights + bias, fitted by `fit_ridge`."""

  mean: np.ndarray     # [D]
  scale: np.ndarray    # [D]
  weights: np.ndarray  # [D]
  bias: float

  def predict(self, x: np.ndarray) -> np.ndarray:
    """features `[N, D]` -> predictions `[N]`."""
    return ((np.asarray(x, np.float64) - self.mean) / self.scale) @ self.weights + self.bias


def _standardise(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  mean = x.mean(0)
  scale = x.std(0)
  # A feature constant over the training records carries nothing; leave it unscaled (it is 0).
  scale = np.where(scale > 0, scale, 1.0)
  return (x - mean) / scale, mean, scale


def _ridge_paths(x: np.ndarray, y: np.ndarray,
                 penalties: Sequence[float]) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
  """Closed-form ridge on standardised `x [n, D]` for every penalty at once (one SVD).

  Minimises mean((y - x w - b)^2) + penalty * |w|^2: w = V diag(s / (s^2 + n penalty)) U^T (y - b).
  Returns (weights [K, D], mean [D], scale [D], bias).
  """
  xs, mean, scale = _standardise(x)
  bias = float(y.mean())
  u, s, vt = np.linalg.svd(xs, full_matrices=False)
  uty = u.T @ (y - bias)
  shrink = s[None] / (s[None] ** 2 + len(x) * np.asarray(penalties, np.float64)[:, None])
  return (shrink * uty[None]) @ vt, mean, scale, bias


def fit_ridge(x: np.ndarray, y: np.ndarray, penalty: float) -> Ridge:
  """Ridge regression of `y [n]` on standardised features `x [n, D]` with a per-sample `penalty`."""
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  weights, mean, scale, bias = _ridge_paths(x, y, [penalty])
  return Ridge(mean, scale, weights[0], bias)


def ridge_cv(x: np.ndarray, y: np.ndarray, penalties: Sequence[float], folds: int = 5,
             seed: int = 0) -> tuple[float, np.ndarray]:
  """The penalty with the lowest k-fold CV mean squared error on (`x [n, D]`, `y [n]`).

  Folds are a seeded shuffle of the records, standardised with each fold's training part.
  Returns (best penalty, CV MSE [K] per penalty). ValueError if n < 2 * folds.
  """
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  if len(x) < 2 * folds:
    raise ValueError(f"{len(x)} training records are too few for {folds}-fold cross-validation")
  parts = np.array_split(np.random.default_rng(seed).permutation(len(x)), folds)
  errors = np.zeros(len(penalties))
  for held in parts:
    train = np.setdiff1d(np.arange(len(x)), held)
    weights, mean, scale, bias = _ridge_paths(x[train], y[train], penalties)
    pred = ((x[held] - mean) / scale) @ weights.T + bias  # [n_held, K]
    errors += np.sum(np.square(pred - y[held, None]), axis=0)
  errors /= len(x)
  return float(np.asarray(penalties)[int(np.argmin(errors))]), errors
