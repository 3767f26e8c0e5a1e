"""Comparing one Adam update computed two ways (two frameworks, two device layouts).

Two float32 computations of a gradient agree only up to rounding, which grows with the size of the
sums (summation order differs between frameworks and between device layouts). Adam's first step
then moves each parameter by u = -lr * g / (|g| + eps), g being the gradient with the coupled weight
decay: about lr against the sign of g wherever |g| >> eps. Where g is within rounding of 0 (a bias
that softmax ignores, a gradient that cancels its weight decay) its sign, and so u, is not
determined by either computation. The moments (1 - b1) g and (1 - b2) g^2 are compared with the
gradient tolerance; the step with that tolerance carried through u's slope lr * eps / (|g| + eps)^2,
so each element is held as tightly as its gradient determines it.
"""
from __future__ import annotations

import numpy as np

# Float32 gradient agreement measured on the tiny model: torch vs JAX within 8e-6 of each tensor's
# largest entry, 1 vs 8 devices within 1e-6; gradients that are 0 up to rounding (a bias under a
# softmax, a conv bias before BatchNorm) reach 2e-8.
GRAD_RTOL = 3e-5
GRAD_ATOL = 1e-7


def gradient_tolerance(grad: np.ndarray, atol: float = GRAD_ATOL) -> float:
  """How far two float32 computations of the gradient tensor `grad` may differ, elementwise."""
  return GRAD_RTOL * float(np.abs(grad).max()) + atol


def first_step_tolerance(grad: np.ndarray, tolerance: float, lr: float, eps: float) -> np.ndarray:
  """How far Adam's first step can differ, elementwise, when `grad` is known to +-`tolerance`.

  The largest slope of u over the interval, times its width; never more than 2 lr (opposite steps).
  Float32 rounding of the updated parameter is left to the caller.
  """
  nearest = np.maximum(np.abs(grad) - tolerance, 0.0)
  return lr * np.minimum(2.0, eps * tolerance / (nearest + eps) ** 2)


def compare_first_step(before: dict[str, np.ndarray], grads: dict[str, np.ndarray],
                       expected: dict[str, dict[str, np.ndarray]],
                       actual: dict[str, dict[str, np.ndarray]], lr: float, b1: float, b2: float,
                       eps: float, step_rtol: float = 0.0,
                       grad_atol: float = GRAD_ATOL) -> dict[str, float]:
  """Worst error / tolerance of the first Adam step, over every tensor (passing: all <= 1).

  before: parameters before the step; grads: the reference gradients, weight decay included;
  expected, actual: {"params": ..., "mu": ..., "nu": ...} after the step, the same keys throughout.
  step_rtol: a further tolerance on the step relative to lr, for implementations that round the
  same formula differently. grad_atol: the absolute part of the gradient tolerance, for
  computations that sum a gradient in other pieces (one process vs ranks).
  Returns the worst ratios of mu, nu, the step (after - before) and the parameters; and, over the
  elements whose gradient fixes the step to 1e-4 lr, their fraction and largest step error in lr.
  """
  worst = {"mu": 0.0, "nu": 0.0, "step": 0.0, "params": 0.0, "determined_step_error_over_lr": 0.0}
  determined = total = 0
  for key, p0 in before.items():
    g = grads[key].astype(np.float64)
    tol = gradient_tolerance(g, grad_atol)
    exp = {k: v[key].astype(np.float64) for k, v in expected.items()}
    act = {k: v[key].astype(np.float64) for k, v in actual.items()}
    worst["mu"] = max(worst["mu"], _ratio(act["mu"], exp["mu"], (1 - b1) * tol))
    worst["nu"] = max(worst["nu"], _ratio(act["nu"], exp["nu"],
                                           (1 - b2) * (2 * np.abs(g) * tol + tol**2)))
    adam_tol = first_step_tolerance(g, tol, lr, eps)
    p0 = p0.astype(np.float64)
    # Float32 rounding on each side: of u (a few operations at magnitude lr) and of p0 + u.
    scale = np.maximum(np.maximum(np.abs(p0), np.abs(exp["params"])), lr).astype(np.float32)
    step_tol = adam_tol + step_rtol * lr + 4 * np.spacing(scale).astype(np.float64)
    step_error = np.abs((act["params"] - p0) - (exp["params"] - p0))
    worst["step"] = max(worst["step"], float(np.max(step_error / step_tol)))
    worst["params"] = max(worst["params"], _ratio(act["params"], exp["params"], step_tol))
    fixed = adam_tol <= 1e-4 * lr
    if fixed.any():
      worst["determined_step_error_over_lr"] = max(worst["determined_step_error_over_lr"],
                                                   float(step_error[fixed].max()) / lr)
    determined += int(np.count_nonzero(fixed))
    total += g.size
  worst["determined_fraction"] = determined / total
  return worst


def _ratio(actual: np.ndarray, expected: np.ndarray, tolerance) -> float:
  return float(np.max(np.abs(actual - expected) / tolerance))
