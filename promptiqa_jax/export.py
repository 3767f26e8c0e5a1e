"""A scorer for programs without this package: the model as `jax.export` StableHLO, prompt baked in.

    promptiqa-jax export --checkpoint DIR --prompt prompt.json --out scorer/

writes three files:
  scorer/scorer.jaxexport  serialized `jax.export.Exported`:
                           (weights: list of arrays, images f32[b, S, S, 3]) -> scores f32[b],
                           b symbolic (any batch size), the prompt a constant inside
  scorer/weights.npz       the weights, arrays w0000, w0001, ... in the order the function takes
  scorer/scorer.json       how to call it: input size and preprocessing, the prompt's names and
                           scores, its score range, the platforms, the model's identity

Any JAX program loads it with JAX and numpy alone:

    exported = jax.export.deserialize(open("scorer/scorer.jaxexport", "rb").read())
    with np.load("scorer/weights.npz") as w:
      weights = [w[f"w{i:04d}"] for i in range(len(w.files))]
    scores = exported.call(weights, images)   # images: float32 [N, S, S, 3] in [-1, 1]

The weights are arguments rather than constants so that the artifact stays small and clear of
serialization size limits (the paper model's weights are 1.3 GB).
"""
from __future__ import annotations

import json
import os
from typing import Sequence

import jax
import numpy as np
from jax import export as jax_export

from promptiqa_jax import functional
from promptiqa_jax.inference import Prompt, PromptIQA

FUNCTION_FILE = "scorer.jaxexport"
WEIGHTS_FILE = "weights.npz"
MANIFEST_FILE = "scorer.json"
PREPROCESSING = ("RGB, resized to SxS with OpenCV bicubic (INTER_CUBIC) from uint8, /255, "
                 "then (x - 0.5) / 0.5: float32 in [-1, 1], NHWC")


def export_scorer(model: PromptIQA, prompt: Prompt, directory: str | os.PathLike,
                  platforms: Sequence[str] | None = None) -> str:
  """Writes `model` scoring with `prompt` to `directory` (new, or without a scorer yet); returns
  the path of the serialized function. `platforms` default to this process's backend; e.g.
  ("cpu", "cuda") serves both from one file."""
  directory = os.path.abspath(directory)
  if os.path.exists(os.path.join(directory, FUNCTION_FILE)):
    raise FileExistsError(f"{directory} already holds a scorer; choose another directory")
  leaves, treedef = jax.tree_util.tree_flatten(jax.device_get(model.variables))
  fused = np.asarray(prompt.fused)
  score = functional.scorer(model.config)

  def scorer(weights, images):
    return score(jax.tree_util.tree_unflatten(treedef, weights), fused, images)

  size = model.config.image_size
  batch, = jax_export.symbolic_shape("b")
  weight_specs = [jax.ShapeDtypeStruct(np.shape(leaf), np.asarray(leaf).dtype) for leaf in leaves]
  image_spec = jax.ShapeDtypeStruct((batch, size, size, 3), np.float32)
  platforms = tuple(platforms or (jax.default_backend(),))
  exported = jax_export.export(jax.jit(scorer), platforms=platforms)(weight_specs, image_spec)
  os.makedirs(directory, exist_ok=True)
  with open(os.path.join(directory, WEIGHTS_FILE), "wb") as f:
    np.savez(f, **{f"w{index:04d}": np.asarray(leaf) for index, leaf in enumerate(leaves)})
  manifest = {
      "call": "jax.export.deserialize(bytes).call(weights, images) -> scores float32 [N] in [0, 1]",
      "images": {"shape": ["N", size, size, 3], "dtype": "float32", "preprocessing":
                 PREPROCESSING.replace("SxS", f"{size}x{size}")},
      "weights": f"{WEIGHTS_FILE}: w0000..w{len(leaves) - 1:04d}, in this order",
      "prompt": {"names": list(prompt.names), "scores": prompt.scores.tolist(),
                 "score_range": [prompt.score_range.low, prompt.score_range.high]},
      "platforms": list(platforms),
      "dtype": model.config.dtype,
      "model_identity": model.identity,
  }
  with open(os.path.join(directory, MANIFEST_FILE), "w") as f:
    json.dump(manifest, f, indent=1)
  # The function file last: its presence marks a complete artifact.
  path = os.path.join(directory, FUNCTION_FILE)
  with open(path, "wb") as f:
    f.write(exported.serialize())
  return path
