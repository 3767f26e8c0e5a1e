"""Scores on the user's own scale: a prompt labelled MOS 1-5 or 0-100, mapped to the model's [0, 1].

The model reads prompt scores in [0, 1] and predicts in [0, 1]. `ScoreRange(1, 5)` maps a raw
score s to (s - 1) / (5 - 1) and a prediction back to 1 + p * (5 - 1). The direction is the
prompt's: a DMOS prompt stays lower-is-better, as the reference keeps it.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np


@dataclasses.dataclass(frozen=True)
class ScoreRange:
  """The closed interval [low, high] of a raw score scale; `low < high`, both finite."""

  low: float = 0.0
  high: float = 1.0

  def __post_init__(self):
    if not (math.isfinite(self.low) and math.isfinite(self.high) and self.low < self.high):
      raise ValueError(f"a score range needs finite LO < HI, got {self.low}, {self.high}")

  @classmethod
  def parse(cls, text: str) -> "ScoreRange":
    """`"LO,HI"` (e.g. `"1,5"`, `"0,100"`) -> ScoreRange; ValueError saying the expected form."""
    parts = text.split(",")
    try:
      low, high = (float(part) for part in parts)
    except ValueError:
      raise ValueError(f"score range {text!r}: expected LO,HI, e.g. 1,5 or 0,100") from None
    return cls(low, high)

  def __str__(self) -> str:
    return f"[{self.low:g}, {self.high:g}]"

  def contains(self, value: float) -> bool:
    return math.isfinite(value) and self.low <= value <= self.high

  def normalise(self, scores: Any) -> np.ndarray:
    """Raw scores -> [0, 1] (float64; callers check the range first)."""
    return (np.asarray(scores, np.float64) - self.low) / (self.high - self.low)

  def to_raw(self, scores: Any) -> np.ndarray:
    """[0, 1] scores (model predictions) -> this scale (float64)."""
    return self.low + np.asarray(scores, np.float64) * (self.high - self.low)


UNIT = ScoreRange()
