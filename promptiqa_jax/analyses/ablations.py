"""What each part of the training recipe contributes: the recipe and its ablations (the config's
ABLATIONS, e.g. configs/synthetic.py:no_scaling), each trained with the recipe's own budget over
several seeds (train.seed and data.seed), and the final evaluations' summaries compared as mean and
standard deviation over the seeds (run-to-run spread is about 0.05 SRCC, so one run per variant
says little).

Runs go to ROOT/<variant>/seed<k>/ (variant "recipe" is the unablated config); a run whose
eval/final.json exists is read, not trained again, so an interrupted study resumes.
"""
from __future__ import annotations

import json
import os
from typing import Any, Sequence

import numpy as np

from promptiqa_jax import trainer
from promptiqa_jax.analyses import common
from promptiqa_jax.config_files import load_config

RECIPE = "recipe"
# The summary keys compared (eval/final.json "summary").
KEYS = ("train_requirements_own_srcc", "heldout_in_family_own_srcc",
        "heldout_in_family_flipped_srcc", "heldout_in_family_own_minus_mismatched_srcc",
        "heldout_out_of_family_own_srcc", "heldout_out_of_family_own_minus_mismatched_srcc")


def variant_config(config_spec: str, variant: str, seed: int, overrides: dict[str, Any]) -> Any:
  """The config of one run: `config_spec` ("path.py[:arg]") with `variant` added to its argument,
  `overrides` (flattened, e.g. {"data.data_dir": ...}) applied, and both seeds set to `seed`."""
  path, _, arg = config_spec.partition(":")
  parts = [p for p in arg.split(",") if p] + ([] if variant == RECIPE else [variant])
  config = load_config(f"{path}:{','.join(parts)}")
  config.update_from_flattened_dict(dict(overrides))
  config.train.seed = int(seed)
  config.data.seed = int(seed)
  return config


def run(config_spec: str, root: str | os.PathLike, variants: Sequence[str],
        seeds: Sequence[int], overrides: dict[str, Any] | None = None) -> dict[str, Any]:
  """Trains (or reads) every (variant, seed) run; returns {"variants": {variant: {"runs": {seed:
  summary}, "mean": {key: value}, "std": {key: value}}}, "keys", "seeds"}."""
  variants = [RECIPE] + [v for v in variants if v != RECIPE]
  out: dict[str, Any] = {"analysis": "ablations", "config": config_spec, "seeds": list(seeds),
                         "keys": list(KEYS), "variants": {}}
  for variant in variants:
    runs = {}
    for seed in seeds:
      workdir = os.path.join(os.fspath(root), variant, f"seed{seed}")
      final = os.path.join(workdir, "eval", "final.json")
      if not os.path.isfile(final):
        trainer.train_and_evaluate(variant_config(config_spec, variant, seed, overrides or {}),
                                   workdir)
      with open(final) as f:
        runs[int(seed)] = json.load(f)["summary"]
    values = {k: np.array([np.nan if r.get(k) is None else r[k] for r in runs.values()])
              for k in KEYS}
    out["variants"][variant] = {
        "runs": runs,
        "mean": {k: float(np.nanmean(v)) if np.isfinite(v).any() else None
                 for k, v in values.items()},
        "std": {k: float(np.nanstd(v)) if np.isfinite(v).any() else None
                for k, v in values.items()},
    }
  return out


def _short(key: str) -> str:
  return key.replace("heldout_", "").replace("_srcc", "").replace("own_minus_mismatched", "gap")


def table(result: dict[str, Any]) -> str:
  width = max(len(v) for v in result["variants"])
  lines = [f"Final test-split summaries, mean +- std over seeds {result['seeds']}",
           f"{'variant':<{width}}  " + " ".join(f"{_short(k):>24}" for k in result["keys"])]
  for variant, row in result["variants"].items():
    cells = [f"{common.number(row['mean'][k])} +- {common.number(row['std'][k])[1:]}"
             for k in result["keys"]]
    lines.append(f"{variant:<{width}}  " + " ".join(f"{c:>24}" for c in cells))
  return "\n".join(lines)


def figure(result: dict[str, Any]) -> Any:
  fig = common.new_figure(8, 4)
  axes = fig.add_subplot()
  keys, variants = result["keys"], list(result["variants"])
  x = np.arange(len(keys))
  width = 0.8 / len(variants)
  for i, variant in enumerate(variants):
    row = result["variants"][variant]
    values = [np.nan if row["mean"][k] is None else row["mean"][k] for k in keys]
    errors = [0.0 if row["std"][k] is None else row["std"][k] for k in keys]
    axes.bar(x - 0.4 + (i + 0.5) * width, values, width=width, yerr=errors, label=variant)
  axes.set_xticks(x, [_short(k) for k in keys], rotation=30, ha="right", fontsize=7)
  axes.set_ylabel("SRCC (mean over seeds)")
  axes.axhline(0, color="grey", linewidth=0.6)
  axes.set_title("Training ablations", fontsize=9)
  axes.legend(fontsize=7)
  fig.tight_layout()
  return fig
