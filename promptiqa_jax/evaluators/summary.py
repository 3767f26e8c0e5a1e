"""The summary of an evaluation: mean SRCC over groups of datasets, each named by what it averages.

Groups (config dataset names of a multi-requirement dataset, see promptiqa_jax.data.requirements):
  train_requirements        requirements training uses
  heldout                   every held-out requirement
  heldout_in_family         held-out requirements of the training family's form
  heldout_out_of_family     held-out requirements no training requirement or random draw covers

Keys, for each held-out group G (NaN left out of means; None when a group has no value):
  all_datasets_own_srcc            every eval dataset, own prompt
  train_requirements_own_srcc      the training requirements, own prompt
  G_own_srcc                       own prompt
  G_mismatched_srcc                other eval datasets' prompts (mean over those prompts)
  G_own_minus_mismatched_srcc      mean over the group of (own - mismatched)
  G_flipped_srcc                   prompt scores flipped, against the flipped ground truth
  G_constant_srcc                  prompt scores all 0.5
  G_ceiling_srcc                   the supervised ceiling (ridge on the same image features)
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from promptiqa_jax.data import datasets as dataset_registry

# Result section -> the summary key's suffix.
_CONTROLS = (("mismatched_prompt", "mismatched"), ("flipped_prompt", "flipped"),
             ("constant_prompt", "constant"), ("supervised_ceiling", "ceiling"))


def _mean_srcc(section: dict[str, Any], names: Sequence[str]) -> float | None:
  values = [section[n]["srcc"] for n in names if n in section]
  finite = [v for v in values if v is not None and math.isfinite(v)]
  return float(np.mean(finite)) if finite else None


def groups(names: Sequence[str]) -> dict[str, list[str]]:
  """The config dataset names of each summary group (module docstring), in `names`' order."""
  requirements = {n: dataset_registry.requirement_of(n) for n in names}
  heldout = [n for n, r in requirements.items() if r is not None and r.heldout]
  return {
      "train_requirements": [n for n, r in requirements.items() if r is not None and not r.heldout],
      "heldout": heldout,
      "heldout_in_family": [n for n in heldout if not requirements[n].out_of_family],
      "heldout_out_of_family": [n for n in heldout if requirements[n].out_of_family],
  }


def _heldout_group(result: dict[str, Any], group: str, names: list[str]) -> dict[str, Any]:
  datasets = result.get("datasets", {})
  mismatched = result.get("mismatched_prompt", {})
  gaps = [datasets[n]["srcc"] - mismatched[n]["srcc"] for n in names if n in mismatched]
  gaps = [g for g in gaps if g is not None and math.isfinite(g)]
  out = {f"{group}_own_srcc": _mean_srcc(datasets, names)}
  for section, suffix in _CONTROLS:
    out[f"{group}_{suffix}_srcc"] = _mean_srcc(result.get(section, {}), names)
  out[f"{group}_own_minus_mismatched_srcc"] = float(np.mean(gaps)) if gaps else None
  return out


def summarize(result: dict[str, Any]) -> dict[str, Any]:
  """The summary of an evaluation result (module docstring)."""
  datasets = result.get("datasets", {})
  named = groups(list(datasets))
  summary = {
      "all_datasets_own_srcc": _mean_srcc(datasets, list(datasets)),
      "train_requirements_own_srcc": _mean_srcc(datasets, named["train_requirements"]),
  }
  for group in ("heldout", "heldout_in_family", "heldout_out_of_family"):
    summary.update(_heldout_group(result, group, named[group]))
  return summary
