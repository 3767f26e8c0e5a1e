"""How quality grows with the number of prompt pairs at inference: SRCC per requirement vs P.

Each requirement's prompt is P pairs of its training split picked by interval sampling (the
evaluation protocol's rule; P = 1 takes the median-score pair), and the evaluated split is scored
with it. The model and everything else stay fixed.
"""
from __future__ import annotations

from typing import Any, Sequence

from promptiqa_jax.analyses import common
from promptiqa_jax.evaluators.common import EvalContext

DEFAULT_SIZES = (1, 2, 3, 5, 10, 15, 20)


def run(ctx: EvalContext, sizes: Sequence[int] = DEFAULT_SIZES) -> dict[str, Any]:
  """{"sizes": [K], "srcc": {name: [K]}, "groups": {group: [K]}, "split", "sampling"}."""
  sizes = sorted({int(s) for s in sizes})
  srcc = {name: [common.srcc_with_prompt(ctx, name, common.pick(ctx, name, size))
                 for size in sizes] for name in ctx.names}
  by_size = [common.group_means({n: v[k] for n, v in srcc.items()}) for k in range(len(sizes))]
  groups = {g: [means[g] for means in by_size] for g in common.GROUPS}
  return {"analysis": "prompt_size", "split": ctx.split, "sampling": "interval", "sizes": sizes,
          "srcc": srcc, "groups": groups}


def table(result: dict[str, Any]) -> str:
  rows = {**result["srcc"], **{f"mean: {g}": v for g, v in result["groups"].items()}}
  return common.text_table(f"SRCC on split {result['split']!r} vs prompt size P (interval sampling)",
                           [f"P={p}" for p in result["sizes"]], rows, cell_width=7)


def figure(result: dict[str, Any]) -> Any:
  fig = common.new_figure(6, 4)
  axes = fig.add_subplot()
  for values in result["srcc"].values():
    axes.plot(result["sizes"], values, color="lightgrey", linewidth=0.8)
  for group, values in result["groups"].items():
    if any(v is not None for v in values):
      axes.plot(result["sizes"], [float("nan") if v is None else v for v in values], marker="o",
                label=group)
  axes.set_xscale("log")
  axes.set_xticks(result["sizes"], [str(s) for s in result["sizes"]])
  axes.set_xlabel("prompt pairs P")
  axes.set_ylabel(f"SRCC ({result['split']})")
  axes.set_title("SRCC vs prompt size (grey: each requirement)", fontsize=9)
  axes.legend(fontsize=7)
  fig.tight_layout()
  return fig
