"""The paper's questions answered on a trained model or by training: each analysis writes
WORKDIR/analyses/<name>.json, a table (.txt, also printed) and a plot (.png).

  prompt_size.py   SRCC per requirement vs the number of prompt pairs P at inference
  sampling.py      interval vs random prompts, and prompts from only the best or worst half
  ablations.py     the training recipe without each of its parts, over several seeds
  common.py        SRCC under a chosen prompt, requirement-group means, the files

The program is `python -m promptiqa_jax.analyze` (see there).
"""
from __future__ import annotations

import os
from typing import Any

from promptiqa_jax.evaluators.common import EvalContext, eval_settings
from promptiqa_jax.inference import PromptIQA


def open_context(config: Any, model_dir: str | os.PathLike, split: str) -> EvalContext:
  """An evaluation context for the model in `model_dir` (a model directory or a training workdir)
  on config.data.eval, scoring `split`; its features are computed once and shared by every prompt
  an analysis tries."""
  model = PromptIQA.from_checkpoint(model_dir, batch_size=int(config.data.eval_batch_size))
  ctx = EvalContext(model, config.data, eval_settings(config.get("eval")), split)
  for name in ctx.names:
    ctx.features.full(name, ctx.train_split)
  return ctx
