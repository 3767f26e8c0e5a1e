"""The scoring API: encode a prompt once, score many images with it.

    from promptiqa_jax import PromptIQA
    model = PromptIQA.from_checkpoint("converted/")
    prompt = model.encode_prompt(["a.jpg", "b.jpg", "c.jpg"], [0.2, 0.5, 0.9])
    scores = model.score(["query1.jpg", "query2.jpg"], prompt)   # numpy [2] in [0, 1]

Images are file paths, uint8 arrays `[N, H, W, 3]` (resized and normalised the reference way), or
float32 arrays `[N, size, size, 3]` already in [-1, 1], taken as they are. Batches are padded to a
fixed size so each jitted function compiles once.
"""
from __future__ import annotations

import dataclasses
import functools
import os
import types
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from promptiqa_jax.data import preprocess
from promptiqa_jax.models.config import ModelConfig
from promptiqa_jax.models.promptiqa import PromptIQANet
from promptiqa_jax.models.vit import wide

Images = Sequence[str | os.PathLike] | np.ndarray


@dataclasses.dataclass(frozen=True)
class Prompt:
  """An encoded prompt: `vectors` `[P, D]` (the reference's cached prompt feature), `fused`
  `[P, D]` (after prompt fusion, which does not depend on the query) and the `scores` `[P]`."""

  vectors: np.ndarray
  fused: np.ndarray
  scores: np.ndarray

  def __len__(self) -> int:
    return len(self.scores)


def validate_scores(scores: Any, count: int | None = None) -> np.ndarray:
  """Prompt scores as float32 `[P]`; ValueError naming the entry for NaN, inf or outside [0, 1]."""
  scores = np.asarray(scores, dtype=np.float64).reshape(-1)
  if count is not None and len(scores) != count:
    raise ValueError(f"{count} prompt images but {len(scores)} scores")
  if len(scores) < 2:
    raise ValueError(f"a prompt needs at least 2 image-score pairs, got {len(scores)}")
  for index, value in enumerate(scores):
    if not np.isfinite(value) or not 0.0 <= value <= 1.0:
      raise ValueError(f"prompt entry {index}: score {value} is not a number in [0, 1]")
  return scores.astype(np.float32)


def to_model_input(images: Images, size: int) -> np.ndarray:
  """Paths, uint8 `[N, H, W, 3]` or normalised float `[N, size, size, 3]` -> float32 model input."""
  if isinstance(images, (str, os.PathLike)):
    raise TypeError(f"pass a list of image paths, not a single path ({images!r})")
  if not isinstance(images, (list, tuple)):
    array = np.asarray(images)
    if array.ndim != 4 or array.shape[-1] != 3:
      raise ValueError(f"image arrays must be [N, H, W, 3], got shape {array.shape}")
    if array.dtype == np.uint8:
      return _stack([preprocess.preprocess(image, size) for image in array], size)
    if not np.issubdtype(array.dtype, np.floating):
      raise ValueError(f"image arrays must be uint8 (0-255) or float (normalised to [-1, 1]), "
                       f"got {array.dtype}")
    if array.shape[1:3] != (size, size):
      raise ValueError(f"float images must be [N, {size}, {size}, 3] already normalised to [-1, 1]; "
                       f"got {array.shape} (pass uint8 to have them resized)")
    return array.astype(np.float32)
  return _stack([preprocess.preprocess(preprocess.load_image(path), size) for path in images], size)


def _stack(images: list[np.ndarray], size: int) -> np.ndarray:
  """`[size, size, 3]` images -> `[N, size, size, 3]`, N = 0 included."""
  return np.stack(images) if images else np.zeros((0, size, size, 3), np.float32)


@functools.lru_cache(maxsize=8)
def _compiled_functions(config: ModelConfig) -> types.SimpleNamespace:
  """The jitted entry points of a config, shared by every PromptIQA object of that config (so a
  second object, e.g. after a checkpoint reload, compiles nothing)."""
  module = PromptIQANet(config)

  def features(variables, images):
    return module.apply(variables, images, method=PromptIQANet.image_features)

  def encode(variables, features, scores):
    vectors = module.apply(variables, features, scores, method=PromptIQANet.prompt_vectors)
    return vectors, module.apply(variables, vectors, method=PromptIQANet.fuse_prompt)

  def score_features(variables, image_features, fused):
    return module.apply(variables, image_features, fused, method=PromptIQANet.score_with_fused)

  return types.SimpleNamespace(features=jax.jit(features), encode=jax.jit(encode),
                               score_features=jax.jit(score_features),
                               group_forward=jax.jit(module.apply))


class PromptIQA:
  """A PromptIQA model with its weights, ready to score images with a prompt."""

  def __init__(self, variables: Any, config: ModelConfig, batch_size: int = 16):
    self.config = config
    self.batch_size = batch_size
    self.variables = jax.device_put(variables)
    self._fns = _compiled_functions(config)
    # Image features and prompts are float32, or float64 under a float64 (verification) config.
    self._features_dtype = np.dtype(wide(config.dtype))

  @classmethod
  def from_torch(cls, path: str | os.PathLike, config: ModelConfig | None = None,
                 **kwargs: Any) -> "PromptIQA":
    """Loads a release checkpoint (`best_model.pth.tar`); `config` defaults to the paper's."""
    from promptiqa_jax.interop.convert import load_torch_checkpoint, torch_to_flax

    config = config or ModelConfig.paper()
    state, _ = load_torch_checkpoint(path)
    return cls(torch_to_flax(state, config), config, **kwargs)

  @classmethod
  def from_checkpoint(cls, directory: str | os.PathLike, **kwargs: Any) -> "PromptIQA":
    """Loads a model directory written by `convert`, training, or `save`."""
    from promptiqa_jax.checkpoint import load_model

    variables, config = load_model(directory)
    return cls(variables, config, **kwargs)

  def save(self, directory: str | os.PathLike) -> None:
    from promptiqa_jax.checkpoint import save_model

    save_model(directory, jax.device_get(self.variables), self.config)

  def _batched(self, fn, inputs: np.ndarray, *args: Any) -> np.ndarray:
    """Runs `fn(variables, batch, *args)` over fixed-size batches, padding the last one."""
    if len(inputs) == 0:
      full = jax.ShapeDtypeStruct((self.batch_size,) + inputs.shape[1:], inputs.dtype)
      shape = jax.eval_shape(fn, self.variables, full, *args)
      return np.zeros((0,) + shape.shape[1:], shape.dtype)
    outputs = []
    for start in range(0, len(inputs), self.batch_size):
      batch = inputs[start:start + self.batch_size]
      count = len(batch)
      if count < self.batch_size:
        batch = np.concatenate([batch, np.zeros((self.batch_size - count,) + batch.shape[1:],
                                                batch.dtype)])
      outputs.append(np.asarray(fn(self.variables, batch, *args))[:count])
    return np.concatenate(outputs)

  def image_features(self, images: Images) -> np.ndarray:
    """Image features f(x): `[N, D]`."""
    return self._batched(self._fns.features, to_model_input(images, self.config.image_size))

  def encode_prompt(self, images: Images, scores: Sequence[float]) -> Prompt:
    """Encodes P image-score pairs once; reuse the result for any number of queries."""
    scores = validate_scores(scores, count=len(images))
    return self.encode_prompt_features(self.image_features(images), scores)

  def encode_prompt_features(self, features: np.ndarray, scores: Sequence[float]) -> Prompt:
    """As `encode_prompt`, from image features `[P, D]` already computed."""
    scores = validate_scores(scores, count=len(features))
    vectors, fused = self._fns.encode(self.variables,
                                      np.asarray(features, self._features_dtype), scores)
    return Prompt(np.asarray(vectors), np.asarray(fused), scores)

  def score_features(self, features: np.ndarray, prompt: Prompt) -> np.ndarray:
    """Scores from image features `[N, D]` already computed: `[N]`. Evaluations that try many
    prompts on the same images compute the (costly) features once and call this per prompt."""
    features = np.asarray(features, self._features_dtype)
    return self._batched(self._fns.score_features, features, jnp.asarray(prompt.fused))

  def score(self, images: Images, prompt: Prompt) -> np.ndarray:
    """Predicted quality in [0, 1] of each image under the prompt's requirement: `[N]`."""
    return self.score_features(self.image_features(images), prompt)

  def group_forward(self, images: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """The training-form forward in eval mode: `images [g, G, ...]`, `scores [g, G]` -> `[g, G]`.

    Each image is scored with the other G-1 pairs of its group as its prompt.
    """
    images = np.asarray(images)
    scores = np.asarray(scores, np.float32)
    if images.ndim != 5 or images.shape[:2] != scores.shape:
      raise ValueError(f"group_forward wants images [g, G, H, W, 3] and scores [g, G]; got "
                       f"{images.shape} and {scores.shape}")
    groups, group_size = scores.shape
    flat = to_model_input(images.reshape((-1,) + images.shape[2:]), self.config.image_size)
    flat = flat.reshape((groups, group_size) + flat.shape[1:])
    return np.asarray(self._fns.group_forward(self.variables, flat, scores))
