"""Raw and normalised scores of synthetic_iqa's records under every requirement (build time)."""
from __future__ import annotations

from typing import Callable

import numpy as np

from promptiqa_jax.data.datasets.synthetic_iqa import fr_measures
from promptiqa_jax.data.datasets.synthetic_iqa.requirements import REQUIREMENTS
from promptiqa_jax.data.datasets.synthetic_iqa.rules import RULES
from promptiqa_jax.data.requirements import Requirement

# Full-reference measures: (reference [S, S, 3], distorted [N, S, S, 3]) uint8 -> raw [N].
FR_MEASURES: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "psnr": fr_measures.psnr,
    "ssim": fr_measures.ssim,
    "ciede2000": fr_measures.ciede2000,
    "ms_ssim": fr_measures.ms_ssim,
    "gmsd": fr_measures.gmsd,
}


def raw_scores(requirement: Requirement, reference: np.ndarray, distorted: np.ndarray,
               severities: np.ndarray) -> np.ndarray:
  """Raw scores `[N]` of one requirement (see `score_records` for the shapes)."""
  if requirement.kind == "full_reference":
    return FR_MEASURES[requirement.name](reference, distorted)
  quality = RULES[requirement.name].quality(severities, reference, distorted)
  low, high = requirement.raw_range
  return low + (high - low) * ((1.0 - quality) if requirement.lower_better else quality)


def score_records(reference: np.ndarray, distorted: np.ndarray,
                  severities: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Scores the distorted versions of one pristine crop under every requirement.

  reference: [S, S, 3] uint8; distorted: [N, S, S, 3] uint8; severities: [N, T] (0 = absent).
  Returns (scores [N, R] float32 in [0, 1], scores_raw [N, R] float32), order REQUIREMENTS.
  """
  raw = np.stack([raw_scores(r, reference, distorted, severities) for r in REQUIREMENTS], axis=1)
  scores = np.stack([r.normalise(raw[:, i]) for i, r in enumerate(REQUIREMENTS)], axis=1)
  return scores, raw.astype(np.float32)
