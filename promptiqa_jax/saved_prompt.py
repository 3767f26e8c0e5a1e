"""Encoded prompts saved to a file and loaded back, so a prompt is encoded once, ever.

    save_prompt("sharp_is_good.npz", model.encode_prompt(paths, scores), model)
    prompt = load_prompt("sharp_is_good.npz", model)      # no image is read, nothing encoded

The file (numpy .npz, read with `allow_pickle=False`) holds the prompt vectors, the fused prompt,
the scores the model read (in [0, 1]) with the scale they were given on, the prompt images' names,
and the identity of the model that encoded it (`PromptIQA.identity`, a digest of architecture
and weights) with its compute dtype. Loading into another model, or under another dtype, is an
error: the vectors are that model's.
"""
from __future__ import annotations

import os
import zipfile

import numpy as np

from promptiqa_jax.inference import Prompt, PromptIQA
from promptiqa_jax.score_range import ScoreRange

FORMAT = "promptiqa_jax.prompt.v1"
_KEYS = ("format", "vectors", "fused", "scores", "names", "score_range", "model", "dtype")


class SavedPromptError(ValueError):
  """A saved prompt that cannot be used with this model; the message names the file."""


def save_prompt(path: str | os.PathLike, prompt: Prompt, model: PromptIQA) -> None:
  """Writes `prompt`, encoded by `model`, to `path` (.npz)."""
  with open(path, "wb") as f:
    np.savez(f, format=np.str_(FORMAT), vectors=prompt.vectors, fused=prompt.fused,
             scores=prompt.scores, names=np.array(prompt.names, dtype=np.str_),
             score_range=np.array([prompt.score_range.low, prompt.score_range.high]),
             model=np.str_(model.identity), dtype=np.str_(model.config.dtype))


def load_prompt(path: str | os.PathLike, model: PromptIQA) -> Prompt:
  """Reads a prompt saved by `save_prompt` for use with `model`; SavedPromptError when the file
  is not a saved prompt or another model (or dtype) encoded it."""
  try:
    data = np.load(path, allow_pickle=False)
  except (OSError, ValueError, zipfile.BadZipFile) as err:
    raise SavedPromptError(f"{path}: cannot read a saved prompt ({err})") from err
  if not isinstance(data, np.lib.npyio.NpzFile):
    raise SavedPromptError(f"{path}: a single array, not a saved prompt ({FORMAT})")
  with data:
    missing = sorted(set(_KEYS) - set(data.files))
    if missing:
      raise SavedPromptError(f"{path}: not a saved prompt (no {', '.join(missing)})")
    if str(data["format"]) != FORMAT:
      raise SavedPromptError(f"{path}: saved prompt format {str(data['format'])!r}; this version "
                             f"reads {FORMAT!r}")
    fields = {key: data[key] for key in _KEYS}
  if str(fields["model"]) != model.identity:
    raise SavedPromptError(
        f"{path}: encoded by another model (identity {fields['model']}, this model's is "
        f"{model.identity}); encode the prompt again with this model")
  if str(fields["dtype"]) != model.config.dtype:
    raise SavedPromptError(f"{path}: encoded at dtype {fields['dtype']}, this model computes in "
                           f"{model.config.dtype}; load the model with dtype="
                           f"{str(fields['dtype'])!r} or encode the prompt again")
  low, high = (float(v) for v in fields["score_range"])
  return Prompt(fields["vectors"], fields["fused"], fields["scores"],
                tuple(str(name) for name in fields["names"]), ScoreRange(low, high))
