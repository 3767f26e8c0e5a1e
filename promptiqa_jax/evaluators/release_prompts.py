"""The release's way of using the evaluation prompt (`config.eval.release_prompt_flips`).

The reference builds a dataset's test prompt with its training transform and re-encodes it for
every test batch (spec section 7): each batch is scored with the same P pairs, but each prompt
image is flipped (upside down: its "horizontal" flip reverses H) with p = 0.5, drawn anew for
every batch, so its test numbers are slightly stochastic. Our default encodes the prompt once,
upright. With the option, own-prompt predictions follow the release's rule instead, seeded:

  B = config.data.eval_batch_size; batch b holds the evaluated split's records [b B, (b + 1) B)
  flips = np.random.default_rng([config.data.seed, FLIP_STREAM, zlib.crc32(name)])
          .random((num_batches, P)) < 0.5          # name: the config dataset name
  batch b is scored with the prompt whose image i is flipped as training flips it
  (config.data.flip; "vertical" reverses H, "none" flips nothing) where flips[b, i]

The draws depend on neither the model nor the number of processes, so two models evaluated with
one config see the same prompts. Each prompt image has two features, upright and flipped, each
computed once (`FeatureCache.rows`); a batch's prompt picks one of the two per image. The prompt
controls (flipped scores, mismatched and constant prompts) keep the fixed upright prompt.
"""
from __future__ import annotations

import zlib
from typing import Any

import numpy as np

# Second word of the flips' seed sequence, apart from the training stream's (data/pipeline.py).
FLIP_STREAM = 7


def flip_draws(seed: int, name: str, num_batches: int, prompt_size: int) -> np.ndarray:
  """Whether batch b flips prompt image i: bool `[num_batches, prompt_size]` (module docstring)."""
  rng = np.random.default_rng([int(seed), FLIP_STREAM, zlib.crc32(name.encode("utf-8"))])
  return rng.random((num_batches, prompt_size)) < 0.5


def predict(model: Any, features: np.ndarray, upright: np.ndarray, flipped: np.ndarray,
            scores: np.ndarray, flips: np.ndarray, batch_size: int) -> np.ndarray:
  """Predictions `[N]` for the evaluated split's features `[N, D]`, batch b scored with the prompt
  of `scores [P]` whose image i has feature `flipped[i]` where `flips[b, i]`, else `upright[i]`
  (both `[P, D]`); `flips` is `[ceil(N / batch_size), P]`."""
  if len(flips) != -(-len(features) // batch_size):
    raise ValueError(f"{len(flips)} rows of flips for {len(features)} records in batches of "
                     f"{batch_size}")
  out = np.empty([len(features)], np.float64)
  for batch, row in enumerate(flips):
    rows = slice(batch * batch_size, (batch + 1) * batch_size)
    prompt = model.encode_prompt_features(np.where(row[:, None], flipped, upright), scores)
    out[rows] = np.asarray(model.score_features(features[rows], prompt), np.float64)
  return out
