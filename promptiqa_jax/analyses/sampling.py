"""Does the way the prompt's pairs are picked matter? Interval sampling (the protocol's rule)
against random prompts (mean and spread over several seeds), and prompts drawn only from the best
or only from the worst half of the training split (by quality, so a lower-is-better requirement's
best half has the lower scores). All prompts have P pairs.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from promptiqa_jax.analyses import common
from promptiqa_jax.evaluators.common import EvalContext

COLUMNS = ("interval", "random_mean", "random_std", "best_half", "worst_half")


def run(ctx: EvalContext, size: int, random_prompts: int = 10) -> dict[str, Any]:
  """{"srcc": {name: {column: value}}, "random_srcc": {name: [random_prompts]}, "groups":
  {group: {column: mean}}, "size", "split"}; columns COLUMNS."""
  srcc, random_srcc = {}, {}
  for name in ctx.names:
    draws = [common.srcc_with_prompt(ctx, name, common.pick(ctx, name, size, "random", seed))
             for seed in range(random_prompts)]
    random_srcc[name] = draws
    srcc[name] = {
        "interval": common.srcc_with_prompt(ctx, name, common.pick(ctx, name, size)),
        "random_mean": float(np.nanmean(draws)) if np.isfinite(draws).any() else float("nan"),
        "random_std": float(np.nanstd(draws)) if np.isfinite(draws).any() else float("nan"),
        "best_half": common.srcc_with_prompt(ctx, name, common.pick(ctx, name, size, half="best")),
        "worst_half": common.srcc_with_prompt(ctx, name,
                                              common.pick(ctx, name, size, half="worst")),
    }
  groups = {}
  for group in common.GROUPS:
    groups[group] = {c: common.group_means({n: v[c] for n, v in srcc.items()})[group]
                     for c in COLUMNS}
  return {"analysis": "sampling", "split": ctx.split, "size": int(size),
          "random_prompts": int(random_prompts), "srcc": srcc, "random_srcc": random_srcc,
          "groups": groups}


def table(result: dict[str, Any]) -> str:
  rows = {**result["srcc"], **{f"mean: {g}": v for g, v in result["groups"].items()}}
  return common.text_table(
      f"SRCC on split {result['split']!r} by prompt sampling, P = {result['size']} "
      f"(random: {result['random_prompts']} seeds)", COLUMNS,
      {name: [row[c] for c in COLUMNS] for name, row in rows.items()}, cell_width=11)


def figure(result: dict[str, Any]) -> Any:
  fig = common.new_figure(7, 4)
  axes = fig.add_subplot()
  names = list(result["srcc"])
  x = np.arange(len(names))
  for offset, column in zip((-0.3, -0.1, 0.1, 0.3), ("interval", "random_mean", "best_half",
                                                       "worst_half")):
    values = [result["srcc"][n][column] for n in names]
    errors = [result["srcc"][n]["random_std"] for n in names] if column == "random_mean" else None
    axes.bar(x + offset, values, width=0.2, yerr=errors, label=column.replace("_mean", ""))
  axes.set_xticks(x, [n.split(":")[-1] for n in names], rotation=60, ha="right", fontsize=7)
  axes.set_ylabel(f"SRCC ({result['split']})")
  axes.set_title(f"Prompt sampling, P = {result['size']}", fontsize=9)
  axes.axhline(0, color="grey", linewidth=0.6)
  axes.legend(fontsize=7)
  fig.tight_layout()
  return fig
