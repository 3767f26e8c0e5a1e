"""PromptIQA as pure functions of arrays, for JAX programs: jittable, vmappable, differentiable.

    score = functional.scorer(model.config)
    scores = jax.jit(score)(model.variables, prompt.fused, images)        # [N]
    loss = lambda x: -score(model.variables, prompt.fused, x).mean()      # a requirement-aware
    jax.grad(loss)(images)                                                # quality loss

`images` are `[N, S, S, 3]` at the model's input size S, normalised to [-1, 1]
(`data.preprocess.preprocess` does it the reference's way, outside JAX); inside a JAX program,
`jax.image.resize(..., "cubic")` resizes differentiably, close to but not bitwise OpenCV's bicubic.
Everything is evaluation mode (BatchNorm running statistics, no dropout). `PromptIQA` jits these
same functions, so they give its scores exactly.
"""
from __future__ import annotations

from typing import Any, Callable

import jax

from promptiqa_jax.models.config import ModelConfig
from promptiqa_jax.models.promptiqa import PromptIQANet

Variables = Any


def image_features(config: ModelConfig) -> Callable[[Variables, jax.Array], jax.Array]:
  """`(variables, images [N, S, S, 3]) -> features [N, D]`."""
  module = PromptIQANet(config)
  return lambda variables, images: module.apply(variables, images,
                                                method=PromptIQANet.image_features)


def prompt_from_features(config: ModelConfig) -> Callable[..., tuple[jax.Array, jax.Array]]:
  """`(variables, features [P, D], scores [P]) -> (vectors [P, D], fused [P, D])`."""
  module = PromptIQANet(config)

  def encode(variables, features, scores):
    vectors = module.apply(variables, features, scores, method=PromptIQANet.prompt_vectors)
    return vectors, module.apply(variables, vectors, method=PromptIQANet.fuse_prompt)

  return encode


def score_from_features(config: ModelConfig) -> Callable[..., jax.Array]:
  """`(variables, fused prompt [P, D], features [N, D]) -> scores [N]` in [0, 1]."""
  module = PromptIQANet(config)
  return lambda variables, fused, features: module.apply(
      variables, features, fused, method=PromptIQANet.score_with_fused)


def prompt_encoder(config: ModelConfig) -> Callable[[Variables, jax.Array, jax.Array], jax.Array]:
  """`(variables, images [P, S, S, 3], scores [P] in [0, 1]) -> fused prompt [P, D]`: a prompt
  made inside a JAX program (`PromptIQA.encode_prompt` gives the same `fused`)."""
  features, encode = image_features(config), prompt_from_features(config)
  return lambda variables, images, scores: encode(variables, features(variables, images), scores)[1]


def scorer(config: ModelConfig) -> Callable[[Variables, jax.Array, jax.Array], jax.Array]:
  """`(variables, fused prompt [P, D], images [N, S, S, 3]) -> scores [N]` in [0, 1].

  The prompt is `Prompt.fused` (or `prompt_encoder`'s output). Pure: vmap over a leading axis of
  images or of prompts, and differentiate with respect to the images.
  """
  features, score = image_features(config), score_from_features(config)
  return lambda variables, fused, images: score(variables, fused, features(variables, images))
