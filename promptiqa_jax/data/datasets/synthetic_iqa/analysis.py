"""How alike synthetic_iqa's requirements are: SRCC between every pair over the same records.

  python -m promptiqa_jax.data.datasets.synthetic_iqa --data-dir DIR [--split test]
"""
from __future__ import annotations

import argparse
from typing import Any, Sequence

import numpy as np
from scipy import stats

from promptiqa_jax.data.datasets.synthetic_iqa.builder import Builder, prepare, split_arrays
from promptiqa_jax.data.datasets.synthetic_iqa.requirements import REQUIREMENTS


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
