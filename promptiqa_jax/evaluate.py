"""Evaluation: each dataset scored with a fixed prompt from its training split, and prompt controls.

  python -m promptiqa_jax.evaluate --config configs/synthetic.py --workdir DIR
  python -m promptiqa_jax.evaluate --config configs/synthetic.py --workdir DIR --split test \
      --checkpoint MODEL_DIR --config.data.prompt_size=5

The protocol is the reference's (spec section 7): per dataset of `config.data.eval`, P =
`prompt_size` image-score pairs from its training split (`prompt_sampling`: "interval" or
"random"), every image of the evaluated split scored with that prompt, and SRCC, PLCC (Pearson of
the raw predictions, NO logistic fit), KRCC and RMSE (normalised score units) against its
normalised ground truth.

Evaluators, chosen by `config.eval.evaluators`, each add named sections to the result:

  per_dataset          "datasets": {name: metrics}, own prompt (and a scatter plot per dataset)
  prompt_controls      on the control datasets (`config.eval.controls_on`; by default the held-out
                       requirements of a multi-requirement dataset such as synthetic_iqa):
                       "heldout"            own prompt (held-out requirements only)
                       "flipped_prompt"     the prompt's scores flipped s -> 1 - s, metrics against
                                            the flipped ground truth 1 - y
                       "mismatched_prompt"  scored with every other eval dataset's prompt in turn,
                                            metrics against its own ground truth, averaged over
                                            those prompts ("prompts" = how many)
                       "mismatched_prompt_srcc"  {name: {prompt dataset: SRCC}}, the pairs behind it
                       "constant_prompt"    its own prompt images with every score 0.5
  supervised_ceiling   "supervised_ceiling": a ridge regression on the same model's image features,
                       fitted to the control dataset's own training-split labels (standardised
                       features, penalty chosen by k-fold CV on the training split), reported on the
                       evaluated split: what a fully supervised model with these features reaches

and the result gets a "summary" of means (`summarize`). Metrics maps are
{"srcc", "plcc", "krcc", "rmse", "n"} (see promptiqa_jax.metrics), with "note" where a value is
NaN. In the JSON files NaN is written as null.

Image features are computed once per record of each (dataset, split) and shared by every prompt
tried on it and by every dataset name that reads the same records: the requirements of
synthetic_iqa ("synthetic_iqa:psnr", "synthetic_iqa:ssim", ...) differ only in the score column.

Files (process 0 only): DIR/eval/<name>.json (name "step_N" in training, "final" from this
program), DIR/eval/plots/<dataset>_<name>.png.

config.eval fields (all optional; `eval_settings` fills the defaults):
  evaluators         "auto" (per_dataset, plus prompt_controls and supervised_ceiling when an
                     eval dataset is a held-out requirement), a list of EVALUATORS names, or the
                     same as a comma-separated string
  controls_on        "heldout" (datasets naming a held-out requirement) or "all" (every eval
                     dataset)
  ceiling_folds      5: folds of the ridge penalty's cross-validation
  ceiling_penalties  (1e-6, ..., 1e3): per-sample ridge penalties tried
  logistic_plcc      False: also report "plcc_logistic" (4-parameter logistic fit, then Pearson)
  plots              True: write the scatter plots (evaluate's `plots` argument overrides it)
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import sys
import time
from typing import Any, Optional, Protocol, Sequence

import jax
import ml_collections
import numpy as np
from absl import logging

from promptiqa_jax import metrics as metrics_lib
from promptiqa_jax.data import prompts as prompts_lib
from promptiqa_jax.data import sources

EVAL_DEFAULTS = {
    "evaluators": "auto",
    "controls_on": "heldout",
    "ceiling_folds": 5,
    "ceiling_penalties": tuple(10.0 ** k for k in range(-6, 4)),
    "logistic_plcc": False,
    "plots": True,
}
CONTROLS_ON = ("heldout", "all")
# Where evaluate puts its files under the workdir.
EVAL_DIR = "eval"
PLOTS_DIR = "plots"
# The constant prompt's score.
CONSTANT_SCORE = 0.5
METRIC_NOTES = {
    "plcc": "Pearson correlation of the raw predictions, no logistic fit",
    "rmse": "in normalised score units ([0, 1])",
    "krcc": "Kendall tau-b",
}


class FeatureModel(Protocol):
  """What evaluation needs of a model (promptiqa_jax.inference.PromptIQA provides it)."""

  def image_features(self, images: np.ndarray) -> np.ndarray:
    """float32 `[N, S, S, 3]` normalised images -> features `[N, D]`."""

  def encode_prompt_features(self, features: np.ndarray, scores: Sequence[float]) -> Any:
    """features `[P, D]`, scores `[P]` -> an encoded prompt."""

  def score_features(self, features: np.ndarray, prompt: Any) -> np.ndarray:
    """features `[N, D]` and an encoded prompt -> scores `[N]`."""


def eval_settings(eval_config: Optional[Any] = None) -> ml_collections.ConfigDict:
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


# ---------------------------------------------------------------------------------------------
# Supervised ceiling: ridge regression on image features.


@dataclasses.dataclass(frozen=True)
class Ridge:
  """y ~ ((x - mean) / scale) @ weights + bias, fitted by `fit_ridge`."""

  mean: np.ndarray     # [D]
  scale: np.ndarray    # [D]
  weights: np.ndarray  # [D]
  bias: float

  def predict(self, x: np.ndarray) -> np.ndarray:
    """features `[N, D]` -> predictions `[N]`."""
    return ((np.asarray(x, np.float64) - self.mean) / self.scale) @ self.weights + self.bias


def _standardise(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  mean = x.mean(0)
  scale = x.std(0)
  # A feature constant over the training records carries nothing; leave it unscaled (it is 0).
  scale = np.where(scale > 0, scale, 1.0)
  return (x - mean) / scale, mean, scale


def _ridge_paths(x: np.ndarray, y: np.ndarray,
                 penalties: Sequence[float]) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
  """Closed-form ridge on standardised `x [n, D]` for every penalty at once (one SVD).

  Minimises mean((y - x w - b)^2) + penalty * |w|^2: w = V diag(s / (s^2 + n penalty)) U^T (y - b).
  Returns (weights [K, D], mean [D], scale [D], bias).
  """
  xs, mean, scale = _standardise(x)
  bias = float(y.mean())
  u, s, vt = np.linalg.svd(xs, full_matrices=False)
  uty = u.T @ (y - bias)
  shrink = s[None] / (s[None] ** 2 + len(x) * np.asarray(penalties, np.float64)[:, None])
  return (shrink * uty[None]) @ vt, mean, scale, bias


def fit_ridge(x: np.ndarray, y: np.ndarray, penalty: float) -> Ridge:
  """Ridge regression of `y [n]` on standardised features `x [n, D]` with a per-sample `penalty`."""
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  weights, mean, scale, bias = _ridge_paths(x, y, [penalty])
  return Ridge(mean, scale, weights[0], bias)


def ridge_cv(x: np.ndarray, y: np.ndarray, penalties: Sequence[float], folds: int = 5,
             seed: int = 0) -> tuple[float, np.ndarray]:
  """The penalty with the lowest k-fold CV mean squared error on (`x [n, D]`, `y [n]`).

  Folds are a seeded shuffle of the records, standardised with each fold's training part.
  Returns (best penalty, CV MSE [K] per penalty). ValueError if n < 2 * folds.
  """
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  if len(x) < 2 * folds:
    raise ValueError(f"{len(x)} training records are too few for {folds}-fold cross-validation")
  parts = np.array_split(np.random.default_rng(seed).permutation(len(x)), folds)
  errors = np.zeros(len(penalties))
  for held in parts:
    train = np.setdiff1d(np.arange(len(x)), held)
    weights, mean, scale, bias = _ridge_paths(x[train], y[train], penalties)
    pred = ((x[held] - mean) / scale) @ weights.T + bias  # [n_held, K]
    errors += np.sum(np.square(pred - y[held, None]), axis=0)
  errors /= len(x)
  return float(np.asarray(penalties)[int(np.argmin(errors))]), errors


# ---------------------------------------------------------------------------------------------
# Features and scores of the evaluated datasets.


def _records_key(name: str) -> tuple[str, Optional[str]]:
  """Names with the same key read the same records (requirements of one dataset build)."""
  builder, builder_config, _ = sources.parse_name(name)
  return builder, builder_config


def requirement_of(name: str) -> Optional[Any]:
  """The dataset module's Requirement (with .heldout, .lower_better) a name selects, or None."""
  builder, _, requirement = sources.parse_name(name)
  if requirement is None:
    return None
  module = sys.modules[sources.builder_class(builder).__module__]
  for candidate in getattr(module, "REQUIREMENTS", ()):
    if candidate.name == requirement:
      return candidate
  raise ValueError(f"Dataset name {name!r}: {builder} has no requirement {requirement!r}")


class _Features:
  """Image features `[D]` of dataset records, computed at most once per (records, split, index).

  `full` featurises a whole split through the evaluation batches (sharded over processes, then
  gathered); `rows` featurises the records it is asked for that are not known yet. Call `full`
  for a split before `rows` on it, or the rows asked before are featurised a second time.
  """

  def __init__(self, model: FeatureModel, data_config: Any, records: dict[Any, Any]):
    self._model = model
    self._config = data_config
    self._records = records
    self._full: dict[tuple[Any, ...], np.ndarray] = {}
    self._rows: dict[tuple[Any, ...], dict[int, np.ndarray]] = {}

  def full(self, name: str, split: str) -> np.ndarray:
    """Features `[N, D]` of every record of `split`, in record order."""
    key = (_records_key(name), split)
    if key not in self._full:
      start = time.time()
      self._full[key] = self._compute_split(name, split)
      logging.info("Features of %s (%s): %d images in %.1f s", name, split, len(self._full[key]),
                   time.time() - start)
    return self._full[key]

  def rows(self, name: str, split: str, indices: Sequence[int]) -> np.ndarray:
    """Features `[len(indices), D]` of the records at `indices` of `split`."""
    key = (_records_key(name), split)
    if key in self._full:
      return self._full[key][np.asarray(indices, np.int64)]
    known = self._rows.setdefault(key, {})
    missing = sorted({int(i) for i in indices} - set(known))
    if missing:
      source = sources.open_dataset(name, split, self._config.data_dir, self._records)
      size = int(self._config.image_size)
      images = np.stack([sources.load_image(source, record, index, size)
                         for record, index in zip(source.read(missing), missing)])
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
  from jax.experimental import multihost_utils

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
    if not self.names:
      raise ValueError("config.data.eval is empty: name the datasets to evaluate")
    if len(set(self.names)) != len(self.names):
      raise ValueError(f"config.data.eval names a dataset twice: {self.names}")
    for name in self.names:
      if sources.parse_name(name)[2] == sources.RANDOM_REQUIREMENT:
        raise ValueError(f"config.data.eval: {name!r} draws a random requirement per group "
                         "(training only); name the requirements to evaluate")
    self._records: dict[Any, Any] = {}
    self.features = _Features(model, data_config, self._records)
    self._scores: dict[tuple[str, str], np.ndarray] = {}
    self.prompts: dict[str, DatasetPrompt] = {}  # the prompts drawn so far
    self.predictions: dict[str, np.ndarray] = {}  # own-prompt predictions [N] per dataset

  def control_names(self) -> list[str]:
    """The datasets the prompt controls and the ceiling run on (config.eval.controls_on)."""
    if self.settings.controls_on == "all":
      return list(self.names)
    return [n for n in self.names if getattr(requirement_of(n), "heldout", False)]

  def scores(self, name: str, split: str) -> np.ndarray:
    """Normalised ground truth `[N]` of eval dataset `name` on `split`, in record order.

    The records are read once for all eval names that share them (each requirement a column).
    """
    if (name, split) not in self._scores:
      siblings = [n for n in self.names if _records_key(n) == _records_key(name)]
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
    """Predictions `[N]` under the dataset's own prompt."""
    if name not in self.predictions:
      prompt = self.prompt(name)
      self.predictions[name] = self.predict(name, prompt.features, prompt.scores)
    return self.predictions[name]

  def metrics(self, pred: np.ndarray, target: np.ndarray) -> dict[str, Any]:
    return metrics_lib.quality_metrics(pred, target, logistic=bool(self.settings.logistic_plcc))


# ---------------------------------------------------------------------------------------------
# Evaluators.


class Evaluator:
  """Adds named sections ({section: {dataset: metrics}}) to the result."""

  name = ""

  def train_feature_names(self, ctx: EvalContext) -> list[str]:
    """Datasets whose whole training split it featurises (computed before any prompt)."""
    del ctx
    return []

  def run(self, ctx: EvalContext) -> dict[str, dict[str, Any]]:
    raise NotImplementedError


class PerDataset(Evaluator):
  """"datasets": every eval dataset scored with its own prompt."""

  name = "per_dataset"

  def run(self, ctx: EvalContext) -> dict[str, dict[str, Any]]:
    return {"datasets": {name: ctx.metrics(ctx.own_predictions(name), ctx.scores(name, ctx.split))
                         for name in ctx.names}}


class PromptControls(Evaluator):
  """"heldout", "flipped_prompt", "mismatched_prompt", "mismatched_prompt_srcc",
  "constant_prompt" (see the module docstring)."""

  name = "prompt_controls"

  def run(self, ctx: EvalContext) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {
        "heldout": {}, "flipped_prompt": {}, "mismatched_prompt": {},
        "mismatched_prompt_srcc": {}, "constant_prompt": {}}
    for name in ctx.names:
      if getattr(requirement_of(name), "heldout", False):
        out["heldout"][name] = ctx.metrics(ctx.own_predictions(name), ctx.scores(name, ctx.split))
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


class SupervisedCeiling(Evaluator):
  """"supervised_ceiling": ridge on the model's image features, per control dataset."""

  name = "supervised_ceiling"

  def train_feature_names(self, ctx: EvalContext) -> list[str]:
    return ctx.control_names()

  def run(self, ctx: EvalContext) -> dict[str, dict[str, Any]]:
    out = {}
    for name in ctx.control_names():
      train_x = ctx.features.full(name, ctx.train_split)
      train_y = ctx.scores(name, ctx.train_split)
      try:
        penalty, _ = ridge_cv(train_x, train_y, ctx.settings.ceiling_penalties,
                              int(ctx.settings.ceiling_folds), seed=int(ctx.data_config.seed))
      except ValueError as err:
        raise ValueError(f"Supervised ceiling of {name!r} (split {ctx.train_split!r}): "
                         f"{err}") from err
      ridge = fit_ridge(train_x, train_y, penalty)
      result = ctx.metrics(ridge.predict(ctx.eval_features(name)), ctx.scores(name, ctx.split))
      result["penalty"] = penalty
      out[name] = result
    return {"supervised_ceiling": out}


EVALUATORS: dict[str, type[Evaluator]] = {
    cls.name: cls for cls in (PerDataset, PromptControls, SupervisedCeiling)}


def evaluator_names(settings: ml_collections.ConfigDict, names: Sequence[str]) -> list[str]:
  """The evaluators to run: config.eval.evaluators, or for "auto" by the datasets' kind."""
  chosen = settings.evaluators
  if isinstance(chosen, str) and chosen == "auto":
    chosen = ["per_dataset"]
    if any(getattr(requirement_of(n), "heldout", False) for n in names):
      chosen += ["prompt_controls", "supervised_ceiling"]
  elif isinstance(chosen, str):
    chosen = [c.strip() for c in chosen.split(",") if c.strip()]
  chosen = list(chosen)
  unknown = [c for c in chosen if c not in EVALUATORS]
  if unknown or not chosen:
    raise ValueError(f"config.eval.evaluators: unknown or none ({unknown or chosen}); choose from "
                     f"{sorted(EVALUATORS)} or 'auto'")
  return chosen


# ---------------------------------------------------------------------------------------------
# The summary, the files and the table.


def _mean_srcc(section: dict[str, Any], names: Sequence[str]) -> Optional[float]:
  values = [section[n]["srcc"] for n in names if n in section]
  finite = [v for v in values if v is not None and math.isfinite(v)]
  return float(np.mean(finite)) if finite else None


def summarize(result: dict[str, Any]) -> dict[str, Any]:
  """Means of SRCC over datasets (NaN left out; None when there is none), each named by what it
  averages:

    all_datasets_own_srcc               every eval dataset, own prompt
    train_requirements_own_srcc         datasets naming a requirement that is not held out
    heldout_own_srcc                    the held-out requirements, own prompt
    heldout_mismatched_srcc             the held-out requirements, mismatched prompts
    heldout_own_minus_mismatched_srcc   mean over held-out requirements of (own - mismatched)
    heldout_flipped_srcc                flipped prompts, against the flipped ground truth
    heldout_constant_srcc               prompts of constant score 0.5
    heldout_ceiling_srcc                the supervised ceiling
  """
  datasets = result.get("datasets", {})
  heldout = [n for n in datasets if getattr(requirement_of(n), "heldout", False)]
  train = [n for n in datasets if requirement_of(n) is not None and n not in heldout]
  mismatched = result.get("mismatched_prompt", {})
  gaps = [datasets[n]["srcc"] - mismatched[n]["srcc"] for n in heldout if n in mismatched]
  gaps = [g for g in gaps if math.isfinite(g)]
  return {
      "all_datasets_own_srcc": _mean_srcc(datasets, list(datasets)),
      "train_requirements_own_srcc": _mean_srcc(datasets, train),
      "heldout_own_srcc": _mean_srcc(datasets, heldout),
      "heldout_mismatched_srcc": _mean_srcc(mismatched, heldout),
      "heldout_own_minus_mismatched_srcc": float(np.mean(gaps)) if gaps else None,
      "heldout_flipped_srcc": _mean_srcc(result.get("flipped_prompt", {}), heldout),
      "heldout_constant_srcc": _mean_srcc(result.get("constant_prompt", {}), heldout),
      "heldout_ceiling_srcc": _mean_srcc(result.get("supervised_ceiling", {}), heldout),
  }


def _jsonable(value: Any) -> Any:
  """NaN and inf -> None (JSON has no NaN), numpy scalars -> Python numbers."""
  if isinstance(value, dict):
    return {str(k): _jsonable(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_jsonable(v) for v in value]
  if isinstance(value, np.ndarray):
    return _jsonable(value.tolist())
  if isinstance(value, (np.integer,)):
    return int(value)
  if isinstance(value, (float, np.floating)):
    return float(value) if math.isfinite(value) else None
  return value


def write_results(result: dict[str, Any], out_dir: str | os.PathLike, name: str) -> str:
  """Writes `result` to out_dir/eval/<name>.json (atomically; NaN as null); returns the path."""
  folder = os.path.join(os.fspath(out_dir), EVAL_DIR)
  os.makedirs(folder, exist_ok=True)
  path = os.path.join(folder, f"{name}.json")
  # Readers (a dashboard, a sweep script) may poll the file while training writes the next one.
  temporary = path + ".tmp"
  with open(temporary, "w") as f:
    json.dump(_jsonable(result), f, indent=2, allow_nan=False)
  os.replace(temporary, path)
  return path


def _file_safe(text: str) -> str:
  return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)


def scatter_plot(pred: np.ndarray, target: np.ndarray, title: str,
                 path: str | os.PathLike) -> None:
  """A PNG of predictions `[N]` against ground truth `[N]` (no pyplot: safe without a display)."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure

  figure = Figure(figsize=(4, 4), dpi=100)
  FigureCanvasAgg(figure)
  axes = figure.add_subplot()
  axes.scatter(target, pred, s=6, alpha=0.6)
  axes.plot([0, 1], [0, 1], color="grey", linewidth=0.8, linestyle="--")
  axes.set_xlabel("ground truth (normalised)")
  axes.set_ylabel("prediction")
  axes.set_title(title, fontsize=8)
  figure.tight_layout()
  figure.savefig(os.fspath(path))


def write_plots(ctx: EvalContext, result: dict[str, Any], out_dir: str | os.PathLike,
                name: str) -> list[str]:
  """A scatter plot per dataset with own-prompt predictions: out_dir/eval/plots/<dataset>_<name>.png
  (the dataset name with characters other than letters, digits, "_", "-", "." as "_")."""
  folder = os.path.join(os.fspath(out_dir), EVAL_DIR, PLOTS_DIR)
  os.makedirs(folder, exist_ok=True)
  paths = []
  for dataset, pred in ctx.predictions.items():
    stats = result.get("datasets", {}).get(dataset)
    title = f"{dataset} ({ctx.split}, {name})"
    if stats is not None:
      title += f"\nSRCC {stats['srcc']:.3f}  PLCC {stats['plcc']:.3f}  n {stats['n']}"
    path = os.path.join(folder, f"{_file_safe(dataset)}_{name}.png")
    scatter_plot(pred, ctx.scores(dataset, ctx.split), title, path)
    paths.append(path)
  return paths


_TABLE_SECTIONS = (
    ("datasets", "own prompt"),
    ("heldout", "held-out requirements, own prompt"),
    ("flipped_prompt", "prompt scores flipped, against flipped truth"),
    ("mismatched_prompt", "other datasets' prompts, mean"),
    ("constant_prompt", "prompt scores all 0.5"),
    ("supervised_ceiling", "ridge on the image features, own training labels"),
)


def _number(value: Any, signed: bool = True) -> str:
  if value is None or (isinstance(value, float) and not math.isfinite(value)):
    return "nan"
  return f"{value:+.3f}" if signed else f"{value:.3f}"


def format_table(result: dict[str, Any]) -> str:
  """The result as a plain-text table: one block per section, then the summary."""
  step = result.get("step")
  lines = [f"Evaluation on split {result.get('split')!r}"
           + (f" at step {step}" if step is not None else "")
           + "; PLCC is Pearson without logistic fitting"]
  width = max([len(n) for key, _ in _TABLE_SECTIONS for n in result.get(key, {})] + [10])
  for key, description in _TABLE_SECTIONS:
    section = result.get(key)
    if not section:
      continue
    lines.append("")
    lines.append(f"{key} ({description})")
    lines.append(f"  {'dataset':<{width}}  {'SRCC':>7} {'PLCC':>7} {'KRCC':>7} {'RMSE':>7} "
                 f"{'n':>6}")
    for name, row in section.items():
      lines.append(f"  {name:<{width}}  {_number(row['srcc']):>7} {_number(row['plcc']):>7} "
                   f"{_number(row['krcc']):>7} {_number(row['rmse'], False):>7} {row['n']:>6}"
                   + (f"  ({row['note']})" if "note" in row else ""))
  summary = {k: v for k, v in result.get("summary", {}).items() if v is not None}
  if summary:
    lines.append("")
    lines.append("summary (mean SRCC)")
    width = max(len(k) for k in summary)
    lines += [f"  {k:<{width}}  {_number(v):>7}" for k, v in summary.items()]
  return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Entry points.


def evaluate(model: FeatureModel, data_config: Any, eval_config: Optional[Any] = None, *,
             split: Optional[str] = None, step: Optional[int] = 0,
             out_dir: Optional[str | os.PathLike] = None, name: Optional[str] = None,
             plots: Optional[bool] = None) -> dict[str, Any]:
  """Evaluates `model` on every dataset of `data_config.eval` (see the module docstring).

  data_config: config.data (eval, eval_split, train_split, prompt_size, prompt_sampling, seed,
    image_size, eval_batch_size, data_dir, num_workers). eval_config: config.eval or None.
  split: the evaluated split (default data_config.eval_split). step: recorded in the result.
  out_dir: the workdir; when given, process 0 writes out_dir/eval/<name>.json (name default
    "step_<step>") and, with `plots` (default config.eval.plots),
    out_dir/eval/plots/<dataset>_<name>.png.
  Returns the result (NaN where a metric is undefined), the same on every process.
  """
  settings = eval_settings(eval_config)
  split = str(split or data_config.eval_split)
  model_size = getattr(getattr(model, "config", None), "image_size", None)
  if model_size is not None and int(model_size) != int(data_config.image_size):
    raise ValueError(f"config.data.image_size is {data_config.image_size} but the model takes "
                     f"{model_size}x{model_size} images; set --config.data.image_size={model_size}")
  ctx = EvalContext(model, data_config, settings, split)
  chosen = [EVALUATORS[n]() for n in evaluator_names(settings, ctx.names)]
  start = time.time()
  # Whole training splits first, so prompt features come out of them instead of a second pass.
  for evaluator in chosen:
    for dataset in evaluator.train_feature_names(ctx):
      ctx.features.full(dataset, ctx.train_split)
  result: dict[str, Any] = {
      "step": step, "split": split,
      "prompt": {"split": ctx.train_split, "size": int(data_config.prompt_size),
                 "sampling": str(data_config.prompt_sampling), "seed": int(data_config.seed)},
      "evaluators": [e.name for e in chosen], "metric_notes": dict(METRIC_NOTES)}
  for evaluator in chosen:
    result.update(evaluator.run(ctx))
  result["summary"] = summarize(result)
  result["prompts"] = {n: {"indices": p.indices, "scores": p.scores}
                       for n, p in ctx.prompts.items()}
  logging.info("Evaluated %d datasets on %s in %.1f s", len(ctx.names), split, time.time() - start)

  if out_dir is not None and jax.process_index() == 0:
    name = name or f"step_{step}"
    path = write_results(result, out_dir, name)
    if settings.plots if plots is None else plots:
      write_plots(ctx, result, out_dir, name)
    logging.info("Wrote %s", path)
  return result


def _define_flags() -> None:
  # Defined only when run as a program: the training program imports this module and has its own
  # --config and --workdir.
  from absl import flags
  from ml_collections import config_flags

  config_flags.DEFINE_config_file("config", None, "Experiment config file (get_config).",
                                  lock_config=True)
  flags.DEFINE_string("workdir", None, "Training workdir; results go to WORKDIR/eval/.")
  flags.DEFINE_string("checkpoint", None, "Model directory (default: the workdir's model).")
  flags.DEFINE_string("split", None, "Split to evaluate (default config.data.eval_split).")
  flags.DEFINE_string("name", "final", "Result name: WORKDIR/eval/NAME.json.")
  flags.DEFINE_integer("step", None, "Training step to record in the result, if known.")
  flags.DEFINE_bool("plots", None, "Write a scatter plot per dataset (default config.eval.plots).")
  flags.mark_flags_as_required(["config", "workdir"])


def run(config: Any, workdir: str | os.PathLike, checkpoint: Optional[str | os.PathLike] = None,
        split: Optional[str] = None, name: str = "final", step: Optional[int] = None,
        plots: Optional[bool] = None) -> dict[str, Any]:
  """The program: loads the model from `checkpoint` (default: the workdir), evaluates it with
  `config` (config.data, config.eval), writes WORKDIR/eval/<name>.json and prints the table
  (process 0). Returns the result."""
  from promptiqa_jax.inference import PromptIQA

  model = PromptIQA.from_checkpoint(checkpoint or workdir,
                                    batch_size=int(config.data.eval_batch_size))
  result = evaluate(model, config.data, config.get("eval"), split=split, step=step,
                    out_dir=workdir, name=name, plots=plots)
  if jax.process_index() == 0:
    print(format_table(result))
  return result


def main(argv: Sequence[str]) -> None:
  from absl import app
  from absl import flags

  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  FLAGS = flags.FLAGS
  run(FLAGS.config, FLAGS.workdir, FLAGS.checkpoint, FLAGS.split, FLAGS.name, FLAGS.step,
      FLAGS.plots)


if __name__ == "__main__":
  from absl import app

  _define_flags()
  app.run(main)
