"""Evaluation: each dataset scored with a fixed prompt from its training split, and prompt controls.

The protocol is the reference's (spec section 7): per dataset of `config.data.eval`, P =
`prompt_size` image-score pairs from its training split (`prompt_sampling`: "interval" or
"random"), every image of the evaluated split scored with that prompt, and SRCC, PLCC (Pearson of
the raw predictions, NO logistic fit), KRCC and RMSE (normalised score units) against its
normalised ground truth. Metrics maps are {"srcc", "plcc", "krcc", "rmse", "n"} (see
promptiqa_jax.metrics), with "note" where a value is NaN.

Evaluators, chosen by `config.eval.evaluators`, one module each, add named sections to the result:

  per_dataset          "datasets": own prompt, per eval dataset (per_dataset.py)
  prompt_controls      flipped, mismatched and constant prompts on the control datasets
                       (prompt_controls.py)
  supervised_ceiling   ridge regression on the same model's image features (supervised_ceiling.py)

and the result gets a "summary" of means (`summary.summarize`). common.py holds what they share
(settings, the feature cache, the context); report.py the files and the table; release_prompts.py
the release's per-batch flipped prompt; final.py a training run's final evaluation of both of its
models. A new evaluator is a module with an `Evaluator` subclass, added to EVALUATORS.

config.eval fields (all optional; `common.eval_settings` fills the defaults):
  evaluators         "auto" (per_dataset, plus prompt_controls and supervised_ceiling when an
                     eval dataset is a held-out requirement), a list of EVALUATORS names, or the
                     same as a comma-separated string
  controls_on        "heldout" (datasets naming a held-out requirement) or "all" (every eval
                     dataset)
  ceiling_folds      5: folds of the ridge penalty's cross-validation
  ceiling_penalties  (1e-6, ..., 1e3): per-sample ridge penalties tried
  logistic_plcc      False: also report "plcc_logistic" (4-parameter logistic fit, then Pearson)
  plots              True: write the scatter plots (evaluate's `plots` argument overrides it)
  release_prompt_flips  False: own-prompt predictions as the release makes them, each evaluated
                     batch with the prompt re-encoded from images flipped by a fresh seeded draw
                     (release_prompts.py); the result's "prompt" and "prompts" then record the
                     flips
"""
from __future__ import annotations

import os
import time
from typing import Any, Sequence

import jax
import ml_collections
from absl import logging

from promptiqa_jax.evaluators import report, summary
from promptiqa_jax.evaluators.common import (EvalContext, Evaluator, FeatureModel, eval_settings,
                                             is_heldout)
from promptiqa_jax.evaluators.per_dataset import PerDataset
from promptiqa_jax.evaluators.prompt_controls import PromptControls
from promptiqa_jax.evaluators.supervised_ceiling import SupervisedCeiling
from promptiqa_jax.data import sources
from promptiqa_jax.inference import PromptIQA

EVALUATORS: dict[str, type[Evaluator]] = {
    cls.name: cls for cls in (PerDataset, PromptControls, SupervisedCeiling)}


def evaluator_names(settings: ml_collections.ConfigDict, names: Sequence[str]) -> list[str]:
  """The evaluators to run: config.eval.evaluators, or for "auto" by the datasets' kind."""
  chosen = settings.evaluators
  if isinstance(chosen, str) and chosen == "auto":
    chosen = ["per_dataset"]
    if any(is_heldout(n) for n in names):
      chosen += ["prompt_controls", "supervised_ceiling"]
  elif isinstance(chosen, str):
    chosen = [c.strip() for c in chosen.split(",") if c.strip()]
  chosen = list(chosen)
  unknown = [c for c in chosen if c not in EVALUATORS]
  if unknown or not chosen:
    raise ValueError(f"config.eval.evaluators: unknown or none ({unknown or chosen}); choose from "
                     f"{sorted(EVALUATORS)} or 'auto'")
  return chosen


def evaluate(model: FeatureModel, data_config: Any, eval_config: Any | None = None, *,
             split: str | None = None, step: int | None = 0,
             out_dir: str | os.PathLike | None = None, name: str | None = None,
             plots: bool | None = None) -> dict[str, Any]:
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
  ctx = EvalContext(model, data_config, settings, split)
  chosen = [EVALUATORS[n]() for n in evaluator_names(settings, ctx.names)]
  start = time.time()
  # Whole training splits first, so prompt features come out of them instead of a second pass.
  for evaluator in chosen:
    for dataset in evaluator.train_feature_names(ctx):
      ctx.features.full(dataset, ctx.train_split)
  # Then the evaluated split's, the slow part, with a progress line per dataset.
  for index, dataset in enumerate(ctx.names, 1):
    ctx.eval_features(dataset)
    if jax.process_index() == 0:
      print(f"evaluating {split}: {index}/{len(ctx.names)} {dataset} "
            f"({time.time() - start:.1f} s)", flush=True)
  result: dict[str, Any] = {
      "step": step, "split": split,
      "prompt": {"split": ctx.train_split, "size": int(data_config.prompt_size),
                 "sampling": str(data_config.prompt_sampling), "seed": int(data_config.seed)},
      "evaluators": [e.name for e in chosen], "metric_notes": dict(report.METRIC_NOTES)}
  for evaluator in chosen:
    result.update(evaluator.run(ctx))
  result["summary"] = summary.summarize(result)
  result["prompts"] = {n: {"indices": p.indices, "scores": p.scores}
                       for n, p in ctx.prompts.items()}
  if settings.release_prompt_flips:
    result["prompt"]["release_prompt_flips"] = True
    for n, flips in ctx.prompt_flips.items():
      result["prompts"][n]["flips"] = flips
  logging.info("Evaluated %d datasets on %s in %.1f s", len(ctx.names), split, time.time() - start)

  if out_dir is not None and jax.process_index() == 0:
    name = name or f"step_{step}"
    path = report.write_results(result, out_dir, name)
    if settings.plots if plots is None else plots:
      report.write_plots(ctx, result, out_dir, name)
    logging.info("Wrote %s", path)
  return result


def evaluate_checkpoint(config: Any, workdir: str | os.PathLike,
                        checkpoint: str | os.PathLike | None = None, split: str | None = None,
                        name: str = "evaluate", step: int | None = None,
                        plots: bool | None = None) -> dict[str, Any]:
  """Loads the model from `checkpoint` (default: the workdir's best, else final, model), evaluates
  it with `config` (config.data, config.eval), writes WORKDIR/eval/<name>.json and prints the
  table (process 0). Returns the result."""
  model = PromptIQA.from_checkpoint(checkpoint or workdir,
                                    batch_size=int(config.data.eval_batch_size))
  data = sources.local_data_config(config.data, config.data.eval)
  result = evaluate(model, data, config.get("eval"), split=split, step=step,
                    out_dir=workdir, name=name, plots=plots)
  if jax.process_index() == 0:
    print(report.format_table(result))
  return result
