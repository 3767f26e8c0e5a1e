"""The scoring API: encode a prompt once, score many images with it.

    from promptiqa_jax import PromptIQA
    model = PromptIQA.from_pretrained()                     # the authors' release, converted once
    prompt = model.encode_prompt(["a.jpg", "b.jpg", "c.jpg"], [0.2, 0.5, 0.9])
    scores = model.score(["query1.jpg", "query2.jpg"], prompt)   # numpy [2] in [0, 1]

Images are file paths, uint8 arrays `[N, H, W, 3]` (resized and normalised the reference way), or
float32 arrays `[N, size, size, 3]` already in [-1, 1], taken as they are. Batches are padded to a
fixed size, so each jitted function compiles once, and split over all local devices.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import types
from typing import Any, Iterable, Iterator, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from promptiqa_jax import functional
from promptiqa_jax.data import preprocess
from promptiqa_jax.models.config import ModelConfig
from promptiqa_jax.models.promptiqa import PromptIQANet
from promptiqa_jax.models.vit import wide
from promptiqa_jax.score_range import UNIT, ScoreRange

Images = Sequence[str | os.PathLike] | np.ndarray
# Config fields that say how the model computes, not what it is: a prompt encoded under one
# setting is still this model's prompt under another (the dtype is checked on its own).
_EXECUTION_FIELDS = ("dtype", "remat", "attention")


@dataclasses.dataclass(frozen=True)
class Prompt:
  """An encoded prompt: `vectors` `[P, D]` (the reference's cached prompt feature), `fused`
  `[P, D]` (after prompt fusion, which does not depend on the query), the `scores` `[P]` in
  [0, 1] as the model read them, the prompt images' `names` and the `score_range` the scores
  were given on (predictions map back to it with `to_raw`)."""

  vectors: np.ndarray
  fused: np.ndarray
  scores: np.ndarray
  names: tuple[str, ...] = ()
  score_range: ScoreRange = UNIT

  def __len__(self) -> int:
    return len(self.scores)

  def to_raw(self, scores: Any) -> np.ndarray:
    """Scores in [0, 1] (this prompt's predictions) -> the prompt's own scale: float64."""
    return self.score_range.to_raw(scores)


def validate_scores(scores: Any, count: int | None = None,
                    score_range: ScoreRange = UNIT) -> np.ndarray:
  """Prompt scores on `score_range` -> float32 `[P]` in [0, 1]; ValueError naming the entry for
  NaN, inf or a score outside the range."""
  scores = np.asarray(scores, dtype=np.float64).reshape(-1)
  if count is not None and len(scores) != count:
    raise ValueError(f"{count} prompt images but {len(scores)} scores")
  # The model reads a prompt of any length; prompt files ask for 2 pairs (score_io), since one pair
  # cannot show a direction, but the analyses measure what a single pair carries.
  if len(scores) < 1:
    raise ValueError("a prompt needs at least 1 image-score pair, got none")
  for index, value in enumerate(scores):
    if not score_range.contains(value):
      raise ValueError(f"prompt entry {index}: score {value} is not a number in {score_range}")
  return score_range.normalise(scores).astype(np.float32)


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


def _names(images: Images, names: Sequence[str] | None) -> tuple[str, ...]:
  """The prompt images' names: as given, else their paths, else their positions."""
  if names is not None:
    return tuple(str(name) for name in names)
  if isinstance(images, (list, tuple)):
    return tuple(os.fspath(path) for path in images)
  return tuple(f"image {index}" for index in range(len(images)))


@functools.lru_cache(maxsize=8)
def _compiled_functions(config: ModelConfig) -> types.SimpleNamespace:
  """The jitted `functional` entry points of a config, shared by every PromptIQA object of that
  config (so a second object, e.g. after a checkpoint reload, compiles nothing). The batched
  ones take `(variables, batch, prompt)`, the order `_stream` calls them in."""
  score_features, score = functional.score_from_features(config), functional.scorer(config)
  return types.SimpleNamespace(
      features=jax.jit(functional.image_features(config)),
      encode=jax.jit(functional.prompt_from_features(config)),
      score_features=jax.jit(lambda variables, features, fused: score_features(
          variables, fused, features)),
      score=jax.jit(lambda variables, images, fused: score(variables, fused, images)),
      group_forward=jax.jit(PromptIQANet(config).apply))


class PromptIQA:
  """A PromptIQA model with its weights, ready to score images with a prompt.

  `dtype` ("float32" or "bfloat16") overrides the config's compute dtype; parameters stay
  float32. Batches of `batch_size` (rounded up to a multiple of the device count) are split over
  `devices` (default: all local devices).
  """

  def __init__(self, variables: Any, config: ModelConfig, batch_size: int = 16,
               dtype: str | None = None, devices: Sequence[jax.Device] | None = None):
    if dtype is not None:
      config = dataclasses.replace(config, dtype=dtype)
      config.validate()
    self.config = config
    self.devices = list(devices if devices is not None else jax.local_devices())
    mesh = Mesh(np.array(self.devices), ("batch",))
    self._replicated = NamedSharding(mesh, PartitionSpec())
    # Every batch's leading axis is split over the devices.
    self.batch_sharding = NamedSharding(mesh, PartitionSpec("batch"))
    self.batch_size = -(-batch_size // len(self.devices)) * len(self.devices)
    self.variables = variables
    self._fns = _compiled_functions(config)
    # Image features and prompts are float32, or float64 under a float64 (verification) config.
    self._features_dtype = np.dtype(wide(config.dtype))

  @property
  def variables(self) -> Any:
    return self._variables

  @variables.setter
  def variables(self, variables: Any) -> None:
    self._variables = jax.device_put(variables, self._replicated)
    self.__dict__.pop("identity", None)

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
    """Loads a model directory written by `convert`, training, `save` or `from_pretrained`."""
    from promptiqa_jax.checkpoint import load_model

    variables, config = load_model(directory)
    return cls(variables, config, **kwargs)

  @classmethod
  def from_pretrained(cls, repo_id: str | None = None, *, filename: str | None = None,
                      revision: str | None = None, config: ModelConfig | None = None,
                      cache_dir: str | os.PathLike | None = None, local_files_only: bool = False,
                      **kwargs: Any) -> "PromptIQA":
    """The authors' release from the Hugging Face Hub (default `Zevin2023/PromptIQA`,
    `best_model.pth.tar` at `main`), downloaded, verified and converted on first use, then loaded
    from the converted cache (no torch, no network). `config` is the file's architecture
    (default: the paper's). See `promptiqa_jax.hub.pretrained_model_dir`."""
    from promptiqa_jax import hub

    directory = hub.pretrained_model_dir(hub.HubFile.of(repo_id, revision, filename), config,
                                         cache_dir=cache_dir, local_files_only=local_files_only)
    # The cache holds float32 copies; a config's compute dtype applies at load time.
    kwargs.setdefault("dtype", config.dtype if config is not None else None)
    return cls.from_checkpoint(directory, **kwargs)

  def save(self, directory: str | os.PathLike) -> None:
    from promptiqa_jax.checkpoint import save_model

    save_model(directory, jax.device_get(self.variables), self.config)

  @functools.cached_property
  def identity(self) -> str:
    """A digest of the architecture and every weight: equal for the same model however loaded
    (converted, from a directory, from the Hub), different after any change of weights."""
    digest = hashlib.blake2b(digest_size=16)
    fields = {k: v for k, v in self.config.to_dict().items() if k not in _EXECUTION_FIELDS}
    digest.update(json.dumps(fields, sort_keys=True).encode())
    leaves = jax.tree_util.tree_flatten_with_path(jax.device_get(self.variables))[0]
    for path, leaf in sorted(leaves, key=lambda item: jax.tree_util.keystr(item[0])):
      leaf = np.ascontiguousarray(leaf)
      digest.update(f"{jax.tree_util.keystr(path)}:{leaf.dtype}:{leaf.shape}".encode())
      digest.update(leaf.data)
    return digest.hexdigest()

  def _stream(self, fn, batches: Iterable[np.ndarray], *args: Any) -> Iterator[np.ndarray]:
    """`fn(variables, batch, *args)` over batches of at most `batch_size`, padded to it and split
    over the devices; yields each batch's output in order. One batch stays in flight: the next
    one is prepared (decoded, by a caller's generator) while the devices compute."""
    pending = None
    for batch in batches:
      count = len(batch)
      if count > self.batch_size:
        raise ValueError(f"a batch of {count} images; at most batch_size={self.batch_size}")
      if count < self.batch_size:
        batch = np.concatenate([batch, np.zeros((self.batch_size - count,) + batch.shape[1:],
                                                batch.dtype)])
      output = fn(self.variables, jax.device_put(batch, self.batch_sharding), *args)
      if pending is not None:
        yield np.asarray(pending[0])[:pending[1]]
      pending = output, count
    if pending is not None:
      yield np.asarray(pending[0])[:pending[1]]

  def _batched(self, fn, inputs: np.ndarray, *args: Any) -> np.ndarray:
    """Runs `fn(variables, batch, *args)` over fixed-size batches of `inputs`, padding the last."""
    if len(inputs) == 0:
      full = jax.ShapeDtypeStruct((self.batch_size,) + inputs.shape[1:], inputs.dtype)
      shape = jax.eval_shape(fn, self.variables, full, *args)
      return np.zeros((0,) + shape.shape[1:], shape.dtype)
    chunks = (inputs[start:start + self.batch_size]
              for start in range(0, len(inputs), self.batch_size))
    return np.concatenate(list(self._stream(fn, chunks, *args)))

  def image_features(self, images: Images) -> np.ndarray:
    """Image features f(x): `[N, D]`."""
    return self._batched(self._fns.features, to_model_input(images, self.config.image_size))

  def encode_prompt(self, images: Images, scores: Sequence[float],
                    score_range: ScoreRange | tuple[float, float] | None = None,
                    names: Sequence[str] | None = None) -> Prompt:
    """Encodes P image-score pairs once; reuse the result for any number of queries.

    `scores` are on `score_range` (`(low, high)`, default [0, 1]) and mapped to [0, 1]; `names`
    (default: the paths, when images are paths) are kept with the prompt for saving.
    """
    score_range = _as_range(score_range)
    validate_scores(scores, count=len(images), score_range=score_range)
    return self.encode_prompt_features(self.image_features(images), scores, score_range,
                                       _names(images, names))

  def encode_prompt_features(self, features: np.ndarray, scores: Sequence[float],
                             score_range: ScoreRange | tuple[float, float] | None = None,
                             names: Sequence[str] | None = None) -> Prompt:
    """As `encode_prompt`, from image features `[P, D]` already computed."""
    score_range = _as_range(score_range)
    scores = validate_scores(scores, count=len(features), score_range=score_range)
    vectors, fused = self._fns.encode(self.variables,
                                      np.asarray(features, self._features_dtype), scores)
    names = tuple(names) if names is not None else _names(features, None)
    return Prompt(np.asarray(vectors), np.asarray(fused), scores, names, score_range)

  def _fused(self, prompt: Prompt) -> jax.Array:
    return jax.device_put(np.asarray(prompt.fused, self._features_dtype), self._replicated)

  def score_features(self, features: np.ndarray, prompt: Prompt) -> np.ndarray:
    """Scores from image features `[N, D]` already computed: `[N]`. Evaluations that try many
    prompts on the same images compute the (costly) features once and call this per prompt."""
    features = np.asarray(features, self._features_dtype)
    return self._batched(self._fns.score_features, features, self._fused(prompt))

  def score(self, images: Images, prompt: Prompt) -> np.ndarray:
    """Predicted quality in [0, 1] of each image under the prompt's requirement: `[N]`
    (`prompt.to_raw(scores)` maps them to the prompt's own scale)."""
    return self._batched(self._fns.score, to_model_input(images, self.config.image_size),
                         self._fused(prompt))

  def score_batches(self, batches: Iterable[np.ndarray], prompt: Prompt) -> Iterator[np.ndarray]:
    """Scores a stream of model-input batches (float32 `[n <= batch_size, S, S, 3]`), yielding
    each batch's scores `[n]` in order while the next batch is being produced."""
    size = self.config.image_size
    inputs = (to_model_input(batch, size) for batch in batches)
    return self._stream(self._fns.score, inputs, self._fused(prompt))

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


def _as_range(score_range: ScoreRange | tuple[float, float] | None) -> ScoreRange:
  if score_range is None:
    return UNIT
  return score_range if isinstance(score_range, ScoreRange) else ScoreRange(*score_range)
