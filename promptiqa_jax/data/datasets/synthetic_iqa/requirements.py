"""The assessment requirements of synthetic_iqa: its RequirementTable and its random family.

No TFDS: configs and evaluators read the table through the dataset registry
(`promptiqa_jax.data.datasets.requirement_table("synthetic_iqa")`). How each requirement's raw score
is computed from images is `scoring.py`'s business, at build time.
"""
from __future__ import annotations

import numpy as np

from promptiqa_jax.data.datasets.synthetic_iqa.distortions import DISTORTIONS, NUM_LEVELS
from promptiqa_jax.data.requirements import Requirement, RequirementTable


REQUIREMENTS: tuple[Requirement, ...] = (
    Requirement("psnr", "full_reference", False, False,
                "PSNR (dB) over RGB against the pristine crop", (0.0, 50.0)),
    Requirement("ssim", "full_reference", False, False,
                "SSIM of the luma against the pristine crop (blind to colour)", (0.0, 1.0)),
    Requirement("ciede2000", "full_reference", True, False,
                "mean CIEDE2000 (kL = 2) colour difference to the pristine crop (DMOS-like)",
                (0.0, 40.0)),
    Requirement("ms_ssim", "full_reference", False, True,
                "multi-scale SSIM of the luma against the pristine crop", (0.0, 1.0)),
    Requirement("gmsd", "full_reference", True, False,
                "gradient magnitude similarity deviation to the pristine crop (DMOS-like)",
                (0.0, 0.5)),
    Requirement("blur_matters", "weighted", False, True,
                "MOS 0-100, blur weighted heavily, every other distortion lightly", (0.0, 100.0)),
    Requirement("noise_dmos", "weighted", True, False,
                "DMOS 0-100, noise matters most, JPEG somewhat, the rest lightly", (0.0, 100.0)),
    Requirement("compression_mos", "weighted", False, False,
                "MOS 1-5, JPEG and pixelation matter most, blur somewhat", (1.0, 5.0)),
    Requirement("vividness_dmos", "weighted", True, True,
                "DMOS 0-100, contrast and colour loss matter most, exposure lightly", (0.0, 100.0)),
    # Out of the random family's span (rules.py says why for each).
    Requirement("grain_preference", "non_monotone", False, True,
                "MOS 1-5, moderate noise is liked as film grain, none or heavy noise less",
                (1.0, 5.0), out_of_family=True),
    Requirement("exposure_target", "exposure", True, True,
                "DMOS 0-100, how far the picture's brightness is from mid-grey (the content's own "
                "exposure counts too)", (0.0, 100.0), out_of_family=True),
    Requirement("masked_artifacts", "content_masked", False, True,
                "MOS 0-100, texture hides noise, blocking and pixelation and reveals blur",
                (0.0, 100.0), out_of_family=True),
)


def random_requirement_scores(levels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """Scores `[G]` float32 in [0, 1] of one group under one random requirement drawn from `rng`.

  levels: [G, T] int (0 = absent, 1..5), order DISTORTIONS. One draw per call, shared by the whole
  group: a sensitivity w_t per distortion type (the largest in [0.6, 0.98]; sometimes spread
  evenly, sometimes focused on one or two types), a curve exponent p in [0.5, 2], and a direction.
  Quality is prod_t (1 - w_t * (level_t / 5) ** p), monotone non-increasing in every level; with
  probability 0.5 the score is 1 - quality (DMOS-like, lower is better). Uses only the levels, so
  the full-reference requirements stay outside the family (and records with equal levels tie).
  """
  levels = np.asarray(levels)
  if levels.ndim != 2 or levels.shape[1] != len(DISTORTIONS):
    raise ValueError(f"levels must be [G, {len(DISTORTIONS)}] (order {DISTORTIONS}), "
                     f"got {levels.shape}")
  if np.any(levels < 0) or np.any(levels > NUM_LEVELS):
    raise ValueError(f"levels must be in 0..{NUM_LEVELS}, got {levels.min()}..{levels.max()}")
  # A high focus exponent pushes most sensitivities towards 0, leaving one or two types dominant.
  focus = rng.uniform(0.5, 4.0)
  sensitivity = rng.uniform(0.0, 1.0, len(DISTORTIONS)) ** focus
  sensitivity *= rng.uniform(0.6, 0.98) / sensitivity.max()
  exponent = np.exp(rng.uniform(np.log(0.5), np.log(2.0)))
  lower_better = rng.uniform() < 0.5
  relative = levels.astype(np.float64) / NUM_LEVELS
  quality = np.prod(1.0 - sensitivity * relative ** exponent, axis=-1)
  return (1.0 - quality if lower_better else quality).astype(np.float32)


TABLE = RequirementTable("synthetic_iqa", REQUIREMENTS, random_requirement_scores)
