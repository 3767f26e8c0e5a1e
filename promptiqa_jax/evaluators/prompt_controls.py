"""Prompt controls: does the model read its prompt? Run on the control datasets
(`config.eval.controls_on`; by default the held-out requirements of a multi-requirement dataset
such as synthetic_iqa). Sections:

  heldout                 own prompt (held-out requirements only)
  flipped_prompt          the prompt's scores flipped s -> 1 - s, metrics against the flipped
                          ground truth 1 - y
  mismatched_prompt       scored with every other eval dataset's prompt in turn, metrics against
                          its own ground truth, averaged over those prompts ("prompts" = how many)
  mismatched_prompt_srcc  {name: {prompt dataset: SRCC}}, the pairs behind it
  constant_prompt         its own prompt images with every score CONSTANT_SCORE
"""
from __future__ import annotations

from typing import Any

import numpy as np

from promptiqa_jax import metrics as metrics_lib
from promptiqa_jax.evaluators.common import EvalContext, Evaluator, is_heldout

# The constant prompt's score: the middle of the normalised range.
CONSTANT_SCORE = 0.5


class PromptControls(Evaluator):
  """"heldout", "flipped_prompt", "mismatched_prompt", "mismatched_prompt_srcc",
  "constant_prompt" (see the module docstring)."""

  name = "prompt_controls"

  def run(self, ctx: EvalContext) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {
        "heldout": {name: ctx.own_metrics(name) for name in ctx.names if is_heldout(name)},
        "flipped_prompt": {}, "mismatched_prompt": {}, "mismatched_prompt_srcc": {},
        "constant_prompt": {}}
    for name in ctx.control_names():
      truth = ctx.scores(name, ctx.split)
      prompt = ctx.prompt(name)
      flipped = ctx.predict(name, prompt.features, 1.0 - prompt.scores)
      out["flipped_prompt"][name] = ctx.metrics(flipped, 1.0 - truth)
      constant = ctx.predict(name, prompt.features, np.full_like(prompt.scores, CONSTANT_SCORE))
      out["constant_prompt"][name] = ctx.metrics(constant, truth)
      others = {}
      for other in ctx.names:
        if other != name:
          borrowed = ctx.prompt(other)
          others[other] = ctx.metrics(ctx.predict(name, borrowed.features, borrowed.scores), truth)
      if others:
        out["mismatched_prompt"][name] = metrics_lib.mean_metrics(list(others.values()))
        out["mismatched_prompt_srcc"][name] = {k: v["srcc"] for k, v in others.items()}
    return out
