"""What every evaluator shares: the config.eval settings, the model protocol, the feature cache, and
the context that hands evaluators each eval dataset's ground truth, prompt and predictions.

Image features are computed once per record of each (dataset, split) and shared by every prompt
tried on it and by every dataset name that reads the same records: the requirements of
synthetic_iqa ("synthetic_iqa:psnr", "synthetic_iqa:ssim", ...) differ only in the score column.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any, Protocol, Sequence

import jax
import ml_collections
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from promptiqa_jax import metrics as metrics_lib
from promptiqa_jax.data import datasets as dataset_registry
from promptiqa_jax.data import pipeline
from promptiqa_jax.data import prompts as prompts_lib
from promptiqa_jax.data import sources
from promptiqa_jax.data.requirements import RANDOM_REQUIREMENT
from promptiqa_jax.evaluators import release_prompts

EVAL_DEFAULTS = {
    "evaluators": "auto",
    "controls_on": "heldout",
    "ceiling_folds": 5,
    "ceiling_penalties": tuple(10.0 ** k for k in range(-6, 4)),
    "logistic_plcc": False,
    "plots": True,
    "release_prompt_flips": False,
}
CONTROLS_ON = ("heldout", "all")


def eval_settings(eval_config: Any | None = None) -> ml_collections.ConfigDict:
  """`config.eval` (or None) with EVAL_DEFAULTS filled in and checked; ValueError naming the
  field."""
  values = dict(EVAL_DEFAULTS)
  if eval_config is not None:
    unknown = sorted(set(eval_config.keys()) - set(EVAL_DEFAULTS))
    if unknown:
      raise ValueError(f"Unknown config.eval field(s) {unknown}; known: {sorted(EVAL_DEFAULTS)}")
    values.update({k: eval_config[k] for k in EVAL_DEFAULTS if k in eval_config})
  settings = ml_collections.ConfigDict(values)
  if settings.controls_on not in CONTROLS_ON:
    raise ValueError(f"config.eval.controls_on must be one of {CONTROLS_ON}, got "
                     f"{settings.controls_on!r}")
  if int(settings.ceiling_folds) < 2:
    raise ValueError(f"config.eval.ceiling_folds must be at least 2, got {settings.ceiling_folds}")
  if not settings.ceiling_penalties or min(settings.ceiling_penalties) < 0:
    raise ValueError(f"config.eval.ceiling_penalties must be non-negative numbers, got "
                     f"{settings.ceiling_penalties}")
  return settings


class FeatureModel(Protocol):
  """What evaluation needs of a model (promptiqa_jax.inference.PromptIQA provides it)."""

  def image_features(self, images: np.ndarray) -> np.ndarray:
    """float32 `[N, S, S, 3]` normalised images -> features `[N, D]`."""

  def encode_prompt_features(self, features: np.ndarray, scores: Sequence[float]) -> Any:
    """features `[P, D]`, scores `[P]` -> an encoded prompt."""

  def score_features(self, features: np.ndarray, prompt: Any) -> np.ndarray:
    """features `[N, D]` and an encoded prompt -> scores `[N]`."""


def records_key(name: str) -> tuple[str, str | None]:
  """Names with the same key read the same records (requirements of one dataset build)."""
  builder, builder_config, _ = dataset_registry.parse_name(name)
  return builder, builder_config


def is_heldout(name: str) -> bool:
  """Whether a config dataset name selects a held-out requirement (evaluation only)."""
  requirement = dataset_registry.requirement_of(name)
  return requirement is not None and requirement.heldout


class FeatureCache:
  """Image features `[D]` of dataset records, computed at most once per (records, split, index,
  orientation).

  `full` featurises a whole split through the evaluation batches (sharded over processes, then
  gathered); `rows` featurises the records it is asked for that are not known yet, upright or
  flipped. Call `full` for a split before `rows` on it, or the rows asked before are featurised a
  second time.
  """

  def __init__(self, model: FeatureModel, data_config: Any, records: dict[Any, Any]):
    self._model = model
    self._config = data_config
    self._records = records
    self._full: dict[tuple[Any, ...], np.ndarray] = {}
    self._rows: dict[tuple[Any, ...], dict[int, np.ndarray]] = {}

  def full(self, name: str, split: str) -> np.ndarray:
    """Features `[N, D]` of every record of `split`, in record order."""
    key = (records_key(name), split)
    if key not in self._full:
      start = time.time()
      self._full[key] = self._compute_split(name, split)
      logging.info("Features of %s (%s): %d images in %.1f s", name, split, len(self._full[key]),
                   time.time() - start)
    return self._full[key]

  def rows(self, name: str, split: str, indices: Sequence[int],
           flip: str = "none") -> np.ndarray:
    """Features `[len(indices), D]` of the records at `indices` of `split`, their images flipped
    as training flips them with config.data.flip = `flip` ("none": upright)."""
    key = (records_key(name), split)
    axis = pipeline.FLIP_AXES[flip]
    if axis is None and key in self._full:
      return self._full[key][np.asarray(indices, np.int64)]
    known = self._rows.setdefault(key + (axis,), {})
    missing = sorted({int(i) for i in indices} - set(known))
    if missing:
      source = sources.open_dataset(name, split, self._config.data_dir, self._records)
      size = int(self._config.image_size)
      images = np.stack([sources.load_image(source, record, index, size)
                         for record, index in zip(source.read(missing), missing)])
      if axis is not None:
        images = np.flip(images, axis + 1)  # FLIP_AXES index [H, W, 3]; these are [n, H, W, 3]
      for index, row in zip(missing, np.asarray(self._model.image_features(images))):
        known[index] = row
    return np.stack([known[int(i)] for i in indices])

  def _compute_split(self, name: str, split: str) -> np.ndarray:
    process_index, process_count = jax.process_index(), jax.process_count()
    batches = prompts_lib.eval_batches(self._config, name, split, process_index=process_index,
                                       process_count=process_count)
    if batches.num_examples == 0:
      raise ValueError(f"Dataset {name!r} has no records in split {split!r}")
    # Whole batches, padding included (index -1): the model pads to its batch size anyway, and
    # every process then holds the same number of rows for the gather, even one whose share of
    # a tiny split is all padding.
    features, indices = [], []
    for batch in batches:
      features.append(np.asarray(self._model.image_features(batch["image"]), np.float32))
      indices.append(batch["index"])
    features, indices = np.concatenate(features), np.concatenate(indices)
    if process_count > 1:
      features, indices = _gather(features, indices)
    real = indices >= 0
    out = np.zeros((batches.num_examples, features.shape[1]), np.float32)
    out[indices[real]] = features[real]
    if len(np.unique(indices[real])) != batches.num_examples:
      raise RuntimeError(f"Features of {name!r} ({split}): got {len(np.unique(indices[real]))} "
                         f"of {batches.num_examples} records")
    return out


def _gather(features: np.ndarray, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Every process's (features [n, D], indices [n]), n equal on all processes -> all of them
  ([process_count * n, D], [process_count * n]), on every process."""
  all_features = np.asarray(multihost_utils.process_allgather(features))
  all_indices = np.asarray(multihost_utils.process_allgather(indices))
  return all_features.reshape(-1, features.shape[1]), all_indices.reshape(-1)


@dataclasses.dataclass(frozen=True)
class DatasetPrompt:
  """The fixed prompt of one dataset: records `indices [P]` of its training split, their
  normalised `scores [P]` and image `features [P, D]`."""

  indices: np.ndarray
  scores: np.ndarray
  features: np.ndarray


class EvalContext:
  """What evaluators read: per eval dataset its features, ground truth, prompt and predictions.

  Everything is computed on first use and cached, so evaluators share the work.
  """

  def __init__(self, model: FeatureModel, data_config: Any, settings: ml_collections.ConfigDict,
               split: str):
    self.model = model
    self.data_config = data_config
    self.settings = settings
    self.split = split
    self.train_split = str(data_config.train_split)
    self.names: list[str] = list(data_config.eval)
    self._check()
    self._records: dict[Any, Any] = {}
    self.features = FeatureCache(model, data_config, self._records)
    self._scores: dict[tuple[str, str], np.ndarray] = {}
    self.prompts: dict[str, DatasetPrompt] = {}  # the prompts drawn so far
    self.predictions: dict[str, np.ndarray] = {}  # own-prompt predictions [N] per dataset
    # With config.eval.release_prompt_flips: per dataset, which prompt images each evaluated
    # batch flipped, bool [batches, P] (release_prompts).
    self.prompt_flips: dict[str, np.ndarray] = {}

  def _check(self) -> None:
    """ValueError, naming the config field, for evaluations that cannot run."""
    model_size = getattr(getattr(self.model, "config", None), "image_size", None)
    data_size = self.data_config.image_size
    if model_size is not None and int(model_size) != int(data_size):
      raise ValueError(f"config.data.image_size is {data_size} but the model takes "
                       f"{model_size}x{model_size} images; set --config.data.image_size="
                       f"{model_size}")
    if not self.names:
      raise ValueError("config.data.eval is empty: name the datasets to evaluate")
    if len(set(self.names)) != len(self.names):
      raise ValueError(f"config.data.eval names a dataset twice: {self.names}")
    for name in self.names:
      if dataset_registry.parse_name(name)[2] == RANDOM_REQUIREMENT:
        raise ValueError(f"config.data.eval: {name!r} draws a random requirement per group "
                         "(training only); name the requirements to evaluate")

  def control_names(self) -> list[str]:
    """The datasets the prompt controls and the ceiling run on (config.eval.controls_on)."""
    if self.settings.controls_on == "all":
      return list(self.names)
    return [n for n in self.names if is_heldout(n)]

  def scores(self, name: str, split: str) -> np.ndarray:
    """Normalised ground truth `[N]` of eval dataset `name` on `split`, in record order.

    The records are read once for all eval names that share them (each requirement a column).
    """
    if (name, split) not in self._scores:
      siblings = [n for n in self.names if records_key(n) == records_key(name)]
      opened = [sources.open_dataset(n, split, self.data_config.data_dir, self._records)
                for n in siblings]
      chunks: dict[str, list[np.ndarray]] = {n: [] for n in siblings}
      for start in range(0, len(opened[0]), 256):
        records = opened[0].read(range(start, min(start + 256, len(opened[0]))))
        for n, source in zip(siblings, opened):
          chunks[n].append(source.scores(records))
      for n in siblings:
        self._scores[(n, split)] = (np.concatenate(chunks[n]) if chunks[n]
                                    else np.zeros([0], np.float32))
    return self._scores[(name, split)]

  def eval_features(self, name: str) -> np.ndarray:
    """Features `[N, D]` of the evaluated split."""
    return self.features.full(name, self.split)

  def prompt(self, name: str) -> DatasetPrompt:
    """The dataset's fixed prompt from its training split (config.data.prompt_size,
    prompt_sampling; random sampling seeded with config.data.seed)."""
    if name not in self.prompts:
      config = self.data_config
      scores = self.scores(name, self.train_split)
      try:
        indices = prompts_lib.select_prompt(scores, int(config.prompt_size),
                                            str(config.prompt_sampling), int(config.seed))
      except ValueError as err:
        raise ValueError(f"Prompt for dataset {name!r} (split {self.train_split!r}): "
                         f"{err}") from err
      features = self.features.rows(name, self.train_split, indices)
      self.prompts[name] = DatasetPrompt(indices, scores[indices], features)
    return self.prompts[name]

  def predict(self, name: str, prompt_features: np.ndarray,
              prompt_scores: np.ndarray) -> np.ndarray:
    """Predictions `[N]` for the evaluated split of `name` under a prompt (features `[P, D]`,
    scores `[P]`)."""
    encoded = self.model.encode_prompt_features(prompt_features, prompt_scores)
    return np.asarray(self.model.score_features(self.eval_features(name), encoded), np.float64)

  def own_predictions(self, name: str) -> np.ndarray:
    """Predictions `[N]` under the dataset's own prompt: encoded once, upright, or with
    config.eval.release_prompt_flips as the release uses it (`_release_predictions`)."""
    if name not in self.predictions:
      prompt = self.prompt(name)
      if self.settings.release_prompt_flips:
        self.predictions[name] = self._release_predictions(name, prompt)
      else:
        self.predictions[name] = self.predict(name, prompt.features, prompt.scores)
    return self.predictions[name]

  def _release_predictions(self, name: str, prompt: DatasetPrompt) -> np.ndarray:
    """Predictions `[N]`, each evaluated batch scored with the prompt re-encoded with its images
    flipped by a fresh seeded draw (release_prompts)."""
    config = self.data_config
    features = self.eval_features(name)
    batch_size = int(config.eval_batch_size)
    flips = release_prompts.flip_draws(int(config.seed), name, -(-len(features) // batch_size),
                                       len(prompt.indices))
    self.prompt_flips[name] = flips
    flipped = self.features.rows(name, self.train_split, prompt.indices, str(config.flip))
    return release_prompts.predict(self.model, features, prompt.features, flipped, prompt.scores,
                                   flips, batch_size)

  def metrics(self, pred: np.ndarray, target: np.ndarray) -> dict[str, Any]:
    """Quality metrics of predictions `[N]` against ground truth `[N]` (see metrics_lib)."""
    return metrics_lib.quality_metrics(pred, target, logistic=bool(self.settings.logistic_plcc))

  def own_metrics(self, name: str) -> dict[str, Any]:
    """Metrics of `name` on the evaluated split under its own prompt."""
    return self.metrics(self.own_predictions(name), self.scores(name, self.split))


class Evaluator:
  """Adds named sections ({section: {dataset: metrics}}) to the result; `name` picks it in
  config.eval.evaluators."""

  name = ""

  def train_feature_names(self, ctx: EvalContext) -> list[str]:
    """Datasets whose whole training split it featurises (computed before any prompt)."""
    del ctx
    return []

  def run(self, ctx: EvalContext) -> dict[str, dict[str, Any]]:
    raise NotImplementedError
