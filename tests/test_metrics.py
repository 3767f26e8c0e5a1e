"""IQA metrics against scipy and hand-computed values, and their behaviour on degenerate inputs."""
import math
import warnings

import numpy as np
import pytest
from scipy import stats

from promptiqa_jax import metrics


def test_hand_computed_values():
  pred, target = [1, 2, 3, 4], [1, 3, 2, 4]
  # One swapped neighbour pair: sum d^2 = 2, so SRCC = 1 - 6 * 2 / (4 * 15) = 0.8; 5 concordant
  # and 1 discordant pairs, KRCC = 4 / 6; centred vectors (-1.5, -.5, .5, 1.5) and
  # (-1.5, .5, -.5, 1.5), PLCC = 4 / 5; errors (0, 1, 1, 0), RMSE = sqrt(1 / 2).
  result = metrics.quality_metrics(pred, target)
  assert result == pytest.approx({"srcc": 0.8, "plcc": 0.8, "krcc": 4 / 6,
                                  "rmse": math.sqrt(0.5), "n": 4})
  assert "note" not in result


def test_against_scipy_with_ties():
  rng = np.random.default_rng(0)
  target = rng.uniform(size=50)
  pred = np.round(target + rng.normal(scale=0.2, size=50), 1)  # ties in the predictions
  assert metrics.srcc(pred, target) == pytest.approx(stats.spearmanr(pred, target)[0])
  assert metrics.plcc(pred, target) == pytest.approx(stats.pearsonr(pred, target)[0])
  assert metrics.krcc(pred, target) == pytest.approx(stats.kendalltau(pred, target)[0])
  assert metrics.rmse(pred, target) == pytest.approx(np.sqrt(np.mean((pred - target) ** 2)))


def test_plcc_is_not_logistic_fitted():
  x = np.linspace(-3, 3, 40)
  target = 1 / (1 + np.exp(-3 * x))
  assert metrics.plcc(x, target) < 0.95  # Pearson of the raw predictions
  assert metrics.plcc_logistic(x, target) == pytest.approx(1.0, abs=1e-6)
  assert "plcc_logistic" in metrics.quality_metrics(x, target, logistic=True)
  assert "plcc_logistic" not in metrics.quality_metrics(x, target)


@pytest.mark.parametrize("pred,target,note", [
    ([0.5, 0.5, 0.5], [0.1, 0.2, 0.3], "predictions are constant"),
    ([0.1, 0.2, 0.3], [0.4, 0.4, 0.4], "ground truth is constant"),
    ([0.1, np.nan, 0.3], [0.1, 0.2, 0.3], "1 predictions are NaN"),
    ([0.3], [0.2], "n = 1"),
    ([], [], "n = 0"),
])
def test_undefined_correlations_are_nan_with_a_note(pred, target, note):
  with warnings.catch_warnings():
    warnings.simplefilter("error")  # nothing may warn either
    result = metrics.quality_metrics(pred, target, logistic=True)
  assert all(math.isnan(result[k]) for k in ("srcc", "plcc", "krcc", "plcc_logistic"))
  assert note in result["note"]
  assert result["n"] == len(pred)


def test_rmse_where_correlations_are_undefined():
  assert metrics.rmse([0.5, 0.5], [0.2, 0.6]) == pytest.approx(math.sqrt((0.09 + 0.01) / 2))
  assert metrics.rmse([0.3], [0.2]) == pytest.approx(0.1)
  assert math.isnan(metrics.rmse([], []))
  assert math.isnan(metrics.rmse([np.inf, 0], [0, 0]))


def test_two_images_are_enough():
  assert metrics.quality_metrics([0.1, 0.9], [0.8, 0.2])["srcc"] == pytest.approx(-1)


def test_mismatched_lengths_raise():
  with pytest.raises(ValueError, match="3 predictions but 2 ground-truth"):
    metrics.quality_metrics([1, 2, 3], [1, 2])


def test_mean_metrics_leaves_nan_out():
  first = metrics.quality_metrics([1, 2, 3], [1, 2, 3])
  constant = metrics.quality_metrics([1, 1, 1], [1, 2, 3])
  mean = metrics.mean_metrics([first, constant])
  assert mean["srcc"] == 1.0 and mean["prompts"] == 2 and mean["n"] == 3
  assert mean["rmse"] == pytest.approx((first["rmse"] + constant["rmse"]) / 2)
  assert "constant" in mean["note"]
