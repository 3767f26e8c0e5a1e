"""Input side of PromptIQA: datasets, preprocessing, the training stream and evaluation batches.

The entry points are loaded on first use, so that importing the package stays cheap (grain pulls in
jax, TFDS a good deal more):

  train_stream(config.data, process_index, process_count) -> pipeline.TrainStream
  eval_batches(config.data, dataset_name, split, batch_size) -> prompts.EvalBatches
  load_prompt(config.data, dataset_name) -> (images [P, H, W, 3], scores [P])
  select_prompt(scores, size, method, seed) -> indices [P]
  register_builder(builder_cls): make an extra TFDS builder resolvable by name
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "train_stream": "promptiqa_jax.data.pipeline",
    "TrainStream": "promptiqa_jax.data.pipeline",
    "TrainIterator": "promptiqa_jax.data.pipeline",
    "eval_batches": "promptiqa_jax.data.prompts",
    "EvalBatches": "promptiqa_jax.data.prompts",
    "load_prompt": "promptiqa_jax.data.prompts",
    "select_prompt": "promptiqa_jax.data.prompts",
    "register_builder": "promptiqa_jax.data.datasets",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
  if name in _EXPORTS:
    return getattr(importlib.import_module(_EXPORTS[name]), name)
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
