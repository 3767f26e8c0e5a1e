"""How alike synthetic_iqa's requirements are: SRCC between every pair over the same records, and
how far each lies from the random family and the training requirements (`family_span`).

  python -m promptiqa_jax.data.datasets.synthetic_iqa --data-dir DIR [--split test]
"""
from __future__ import annotations

import argparse
from typing import Any, Sequence

import numpy as np
from scipy import stats

from promptiqa_jax.data.datasets.synthetic_iqa.builder import Builder, prepare, split_arrays
from promptiqa_jax.data.datasets.synthetic_iqa.requirements import (REQUIREMENTS,
                                                                  random_requirement_scores)


def requirement_correlations(data_dir: str, split: str = "test",
                             **options: Any) -> tuple[tuple[str, ...], np.ndarray]:
  """SRCC between every pair of requirements over the same records of a built split.

  options: the build options (as for `prepare`) naming which config under data_dir to read.
  Returns (requirement names [R], SRCC matrix [R, R]); signs as measured (a DMOS-like requirement
  against a MOS-like one is negative when they agree).
  """
  builder = Builder(data_dir=data_dir, **options)
  if not builder.is_prepared():
    raise FileNotFoundError(f"synthetic_iqa ({builder.builder_config.name}) is not built under "
                            f"{data_dir!r}; run prepare() or `promptiqa-jax prepare synthetic_iqa` "
                            "first")
  # The normalised scores, as training and evaluation see them (clipping included).
  scores = split_arrays(builder, split)["scores"]
  matrix = stats.spearmanr(scores).statistic
  return tuple(r.name for r in REQUIREMENTS), np.asarray(matrix)


def _ranks(x: np.ndarray) -> np.ndarray:
  """Column-wise ranks, standardised: a Pearson correlation of these is Spearman's."""
  ranks = stats.rankdata(x, axis=0)
  return (ranks - ranks.mean(axis=0)) / ranks.std(axis=0)


def family_span(scores: np.ndarray, levels: np.ndarray, draws: int = 3000,
                seed: int = 0) -> dict[str, dict[str, float]]:
  """How far each requirement lies from what training covers, on the same records: the largest
  |SRCC| against `draws` requirements of the random family and against any training requirement.

  scores: [N, R] (REQUIREMENTS order); levels: [N, T]. Returns {name: {"random_family": ...,
  "training": ...}} (a training requirement is compared with the other training ones).
  """
  family = np.stack([random_requirement_scores(levels, np.random.default_rng([seed, k]))
                     for k in range(draws)], axis=1)
  family, ranked = _ranks(family), _ranks(scores)
  out = {}
  for i, requirement in enumerate(REQUIREMENTS):
    others = [j for j, r in enumerate(REQUIREMENTS) if not r.heldout and j != i]
    out[requirement.name] = {
        "random_family": float(np.max(np.abs(ranked[:, i] @ family)) / len(scores)),
        "training": float(np.max(np.abs(ranked[:, i] @ ranked[:, others])) / len(scores)),
    }
  return out


def correlation_table(names: Sequence[str], matrix: np.ndarray) -> str:
  """The SRCC matrix as a markdown table."""
  lines = ["| | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
  for name, row in zip(names, matrix):
    lines.append(f"| {name} | " + " | ".join(f"{v:+.2f}" for v in row) + " |")
  return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
  """Command line: build (if needed), then print the requirement SRCC table of one split."""
  parser = argparse.ArgumentParser(description="Build synthetic_iqa (if needed) and print the SRCC "
                                               "between its requirements as a markdown table.")
  parser.add_argument("--data-dir", required=True)
  parser.add_argument("--split", default="test")
  parser.add_argument("--image-size", type=int, default=64)
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args(argv)
  prepare(args.data_dir, image_size=args.image_size, seed=args.seed)
  names, matrix = requirement_correlations(args.data_dir, args.split, image_size=args.image_size,
                                           seed=args.seed)
  print(correlation_table(names, matrix))
  arrays = split_arrays(Builder(data_dir=args.data_dir, image_size=args.image_size, seed=args.seed),
                        args.split)
  span = family_span(arrays["scores"], arrays["levels"])
  print("\n| requirement | held out | out of family | closest random draw, abs SRCC | "
        "closest training requirement, abs SRCC |\n|---|---|---|---|---|")
  for r in REQUIREMENTS:
    print(f"| {r.name} | {'yes' if r.heldout else ''} | {'yes' if r.out_of_family else ''} | "
          f"{span[r.name]['random_family']:.2f} | {span[r.name]['training']:.2f} |")
