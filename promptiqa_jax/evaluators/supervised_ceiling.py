"""The supervised ceiling: what a fully supervised model with the same image features reaches.

Section "supervised_ceiling": per control dataset, a ridge regression on the model's image
features fitted to the dataset's own training-split labels (standardised features, penalty from
`config.eval.ceiling_penalties` chosen by `ceiling_folds`-fold CV on the training split), reported
on the evaluated split with the chosen "penalty".
"""
from __future__ import annotations

from typing import Any

from promptiqa_jax.evaluators import ridge
from promptiqa_jax.evaluators.common import EvalContext, Evaluator


class SupervisedCeiling(Evaluator):
  """"supervised_ceiling": ridge on the model's image features, per control dataset."""

  name = "supervised_ceiling"

  def train_feature_names(self, ctx: EvalContext) -> list[str]:
    return ctx.control_names()

  def run(self, ctx: EvalContext) -> dict[str, dict[str, Any]]:
    out = {}
    for name in ctx.control_names():
      train_x = ctx.features.full(name, ctx.train_split)
      train_y = ctx.scores(name, ctx.train_split)
      try:
        penalty, _ = ridge.ridge_cv(train_x, train_y, ctx.settings.ceiling_penalties,
                                    int(ctx.settings.ceiling_folds),
                                    seed=int(ctx.data_config.seed))
      except ValueError as err:
        raise ValueError(f"Supervised ceiling of {name!r} (split {ctx.train_split!r}): "
                         f"{err}") from err
      fitted = ridge.fit_ridge(train_x, train_y, penalty)
      result = ctx.metrics(fitted.predict(ctx.eval_features(name)), ctx.scores(name, ctx.split))
      result["penalty"] = penalty
      out[name] = result
    return {"supervised_ceiling": out}
