"""Rule-based requirements of synthetic_iqa: quality from the distortions' severities (and, for
one rule, the pristine crop's content), computed at build time.

Every rule maps severities `[N, T]` (0 = absent, up to 5.5: level 5 plus its jitter; order
DISTORTIONS), the pristine crop `[S, S, 3]` uint8 and the distorted images `[N, S, S, 3]` uint8 to
quality `[N]` in (0, 1];
`scoring.raw_scores` maps quality onto the requirement's raw range, reversed for a DMOS-like one.

WeightedRule is the form the training's random family also has (a product of per-distortion
penalties, monotone in every severity, blind to content). The other three are deliberately outside
that form, so that held-out requirements built on them test whether a prompt carries a requirement
no training draw resembles: GrainRule is non-monotone in one distortion, ExposureRule judges the
picture's brightness (the same darkening helps one content and hurts another), MaskedRule lets the
content's texture hide some distortions and reveal others.
"""
from __future__ import annotations

import dataclasses

import cv2
import numpy as np

from promptiqa_jax.data.datasets.synthetic_iqa.distortions import DISTORTIONS, NUM_LEVELS

# The highest severity: level 5 plus its jitter.
MAX_SEVERITY = NUM_LEVELS + 0.5
_LUMA = np.array([0.299, 0.587, 0.114])


def _weights(weights: dict[str, float], default: float) -> np.ndarray:
  unknown = set(weights) - set(DISTORTIONS)
  if unknown:
    raise ValueError(f"Unknown distortions {sorted(unknown)}; known: {DISTORTIONS}")
  return np.array([weights.get(t, default) for t in DISTORTIONS])


def _relative(severities: np.ndarray) -> np.ndarray:
  return np.asarray(severities, np.float64) / MAX_SEVERITY


@dataclasses.dataclass(frozen=True)
class WeightedRule:
  """quality = prod_t (1 - w_t * (s_t / 5.5) ** exponent): the random family's form."""
  weights: dict[str, float]
  exponent: float
  default_weight: float

  def quality(self, severities: np.ndarray, reference: np.ndarray,
              distorted: np.ndarray) -> np.ndarray:
    del reference, distorted  # Content-blind.
    w = _weights(self.weights, self.default_weight)
    return np.prod(1.0 - w * _relative(severities) ** self.exponent, axis=-1)


@dataclasses.dataclass(frozen=True)
class GrainRule:
  """Light noise reads as film grain and is preferred; none looks plastic, heavy noise is bad.

  quality = grain(s_noise) * prod_{t != noise} (1 - w * (s_t / 5.5)), grain(s) =
  exp(-((s - best) / width) ** 2): rising then falling in the noise severity, which no product of
  monotone penalties can follow.
  """
  best: float
  width: float
  other_weight: float

  def quality(self, severities: np.ndarray, reference: np.ndarray,
              distorted: np.ndarray) -> np.ndarray:
    del reference, distorted
    severities = np.asarray(severities, np.float64)
    noise = DISTORTIONS.index("noise")
    grain = np.exp(-((severities[:, noise] - self.best) / self.width) ** 2)
    others = np.delete(_relative(severities), noise, axis=1)
    return grain * np.prod(1.0 - self.other_weight * others, axis=-1)


@dataclasses.dataclass(frozen=True)
class ExposureRule:
  """A well-exposed picture is best: quality = exp(-((mean luma - target) / width) ** 2) of the
  distorted image itself, times light penalties for the non-exposure distortions.

  Darkening improves an over-bright scene and hurts a dark one: the sign of a distortion's effect
  depends on the content, and no monotone, content-blind rule can follow that.
  """
  target: float
  width: float
  other_weight: float

  def quality(self, severities: np.ndarray, reference: np.ndarray,
              distorted: np.ndarray) -> np.ndarray:
    del reference
    luma = distorted.astype(np.float64) @ _LUMA
    brightness = luma.reshape(len(distorted), -1).mean(axis=1)
    exposure = np.isin(DISTORTIONS, ("darken", "brighten"))
    others = _relative(severities)[:, ~exposure]
    return (np.exp(-((brightness - self.target) / self.width) ** 2)
            * np.prod(1.0 - self.other_weight * others, axis=-1))


def texture_activity(reference: np.ndarray, window: int = 5) -> float:
  """Mean local standard deviation of the luma (8-bit units) in `window`-pixel boxes: how busy the
  content is."""
  luma = reference.astype(np.float64) @ _LUMA
  mean = cv2.blur(luma, (window, window), borderType=cv2.BORDER_REFLECT)
  square = cv2.blur(luma * luma, (window, window), borderType=cv2.BORDER_REFLECT)
  return float(np.mean(np.sqrt(np.maximum(square - mean * mean, 0.0))))


@dataclasses.dataclass(frozen=True)
class MaskedRule:
  """Visibility depends on the content: texture masks noise, blocking and pixelation (their
  penalties scaled by h / (h + activity)) and reveals blur (scaled by activity / (h + activity)),
  with `activity` the pristine crop's `texture_activity`; the other distortions count as in a
  weighted rule. The same severities score differently on a flat sky and a gravel bed, which no
  content-blind rule can follow.
  """
  weights: dict[str, float]
  masked: tuple[str, ...]
  revealed: tuple[str, ...]
  half_activity: float
  default_weight: float

  def quality(self, severities: np.ndarray, reference: np.ndarray,
              distorted: np.ndarray) -> np.ndarray:
    del distorted
    activity = texture_activity(reference)
    masking = self.half_activity / (self.half_activity + activity)
    w = _weights(self.weights, self.default_weight)
    w = np.where(np.isin(DISTORTIONS, self.masked), w * masking, w)
    w = np.where(np.isin(DISTORTIONS, self.revealed), w * (1.0 - masking), w)
    return np.prod(1.0 - w * _relative(severities), axis=-1)


RULES = {
    "blur_matters": WeightedRule({"blur": 0.95}, exponent=1.3, default_weight=0.2),
    "noise_dmos": WeightedRule({"noise": 0.95, "jpeg": 0.4}, exponent=1.0, default_weight=0.15),
    "compression_mos": WeightedRule({"jpeg": 0.9, "pixelate": 0.85, "blur": 0.35}, exponent=0.8,
                                    default_weight=0.1),
    # Exposure only lightly: PSNR already ranks images mostly by their exposure errors, and a rule
    # that weighted exposure heavily would re-rank the test images like PSNR does (SRCC ~0.9).
    "vividness_dmos": WeightedRule(
        {"contrast": 0.9, "desaturate": 0.8, "darken": 0.3, "brighten": 0.3}, exponent=1.2,
        default_weight=0.15),
    "grain_preference": GrainRule(best=2.0, width=1.2, other_weight=0.3),
    "exposure_target": ExposureRule(target=118.0, width=35.0, other_weight=0.2),
    "masked_artifacts": MaskedRule(
        {"noise": 0.95, "jpeg": 0.95, "pixelate": 0.95, "blur": 0.95},
        masked=("noise", "jpeg", "pixelate"), revealed=("blur",), half_activity=3.0,
        default_weight=0.1),
}
