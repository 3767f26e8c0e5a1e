"""The per-dataset evaluator: every eval dataset scored with its own prompt.

Section "datasets": {name: metrics}. The report draws a scatter plot per dataset from these
predictions.
"""
from __future__ import annotations

from typing import Any

from promptiqa_jax.evaluators.common import EvalContext, Evaluator


class PerDataset(Evaluator):
  """"datasets": every eval dataset scored with its own prompt."""

  name = "per_dataset"

  def run(self, ctx: EvalContext) -> dict[str, dict[str, Any]]:
    return {"datasets": {name: ctx.own_metrics(name) for name in ctx.names}}
