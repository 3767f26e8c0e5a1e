"""The contract of a dataset whose records carry several assessment requirements.

A plain IQA dataset has one score per image (`record["score"]`). A multi-requirement dataset such
as synthetic_iqa scores every image under several requirements at once and declares them in a
`RequirementTable` (class attribute `REQUIREMENTS` of its TFDS builder, and in the dataset registry,
`promptiqa_jax.data.datasets`, so that configs and evaluators read it without importing TFDS):

  record["scores"]   [R] normalised scores, in the table's order
  record["levels"]   [T] what the table's random family reads (the distortion levels)

Config names pick a requirement with a suffix ("synthetic_iqa:psnr"); "<dataset>:random" draws one
requirement per training group from the table's random family.

This module is plain numpy: importable anywhere, TFDS-free.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import numpy as np

# The requirement suffix that draws a requirement per group (training only).
RANDOM_REQUIREMENT = "random"

# levels [G, T], rng -> scores [G] float32 in [0, 1]: one requirement drawn for the whole group.
RandomFamily = Callable[[np.ndarray, np.random.Generator], np.ndarray]


@dataclasses.dataclass(frozen=True)
class Requirement:
  """One assessment requirement: what a record's `scores` entry means and how it is normalised.

  kind: how the dataset computes it (e.g. "full_reference", "weighted"). lower_better: DMOS-like.
  raw_range: (low, high) mapped to (0, 1) (clipped; the direction is kept).
  heldout: never used for training; evaluation only.
  out_of_family: (held-out ones) no training requirement and no draw of the random family covers
    it: evaluation reports it apart from the held-out requirements "in family".
  """
  name: str
  kind: str
  lower_better: bool
  heldout: bool
  description: str
  raw_range: tuple[float, float]
  out_of_family: bool = False

  def normalise(self, raw: np.ndarray) -> np.ndarray:
    """Raw scores `[N]` -> `[N]` float32 in [0, 1]."""
    low, high = self.raw_range
    return np.clip((np.asarray(raw, np.float64) - low) / (high - low), 0.0, 1.0).astype(np.float32)


@dataclasses.dataclass(frozen=True)
class RequirementTable:
  """The requirements of one multi-requirement dataset and its random family.

  requirements: in the order of `record["scores"]`. random_family: draws the scores of one group
  under one random requirement from the records' `levels` (see RandomFamily).
  """
  dataset: str
  requirements: tuple[Requirement, ...]
  random_family: RandomFamily

  def __post_init__(self):
    names = [r.name for r in self.requirements]
    if len(set(names)) != len(names) or RANDOM_REQUIREMENT in names:
      raise ValueError(f"{self.dataset}: requirement names must be unique and not "
                       f"{RANDOM_REQUIREMENT!r}, got {names}")
    trained = [r.name for r in self.requirements if r.out_of_family and not r.heldout]
    if trained:
      raise ValueError(f"{self.dataset}: out-of-family requirements must be held out: {trained}")

  @property
  def names(self) -> tuple[str, ...]:
    return tuple(r.name for r in self.requirements)

  def index(self, name: str) -> int:
    """Position of requirement `name` in `record["scores"]`; ValueError naming the known ones."""
    if name not in self.names:
      raise ValueError(f"Unknown requirement {name!r}; {self.dataset} has: "
                       f"{', '.join(self.names)} (or {RANDOM_REQUIREMENT!r} for training)")
    return self.names.index(name)

  def get(self, name: str) -> Requirement:
    return self.requirements[self.index(name)]

  def train(self) -> tuple[Requirement, ...]:
    """The requirements training may use (besides the random family)."""
    return tuple(r for r in self.requirements if not r.heldout)

  def heldout(self) -> tuple[Requirement, ...]:
    """The requirements kept for evaluation only."""
    return tuple(r for r in self.requirements if r.heldout)

  def config_names(self, requirements: Sequence[Requirement] | None = None) -> list[str]:
    """Config dataset names ("<dataset>:<requirement>") of `requirements` (default: all)."""
    return [f"{self.dataset}:{r.name}" for r in (self.requirements if requirements is None
                                                  else requirements)]

  def scores(self, records: Sequence[dict[str, Any]], name: str) -> np.ndarray:
    """Normalised scores `[len(records)]` float32 of requirement `name`."""
    column = self.index(name)
    return np.asarray([np.asarray(r["scores"])[column] for r in records], np.float32)

  def random_scores(self, records: Sequence[dict[str, Any]],
                    rng: np.random.Generator) -> np.ndarray:
    """Scores `[len(records)]` float32 of records read together (a group) under one requirement
    drawn from the random family with `rng`."""
    levels = np.stack([np.asarray(r["levels"]) for r in records])
    return np.asarray(self.random_family(levels, rng), np.float32)
