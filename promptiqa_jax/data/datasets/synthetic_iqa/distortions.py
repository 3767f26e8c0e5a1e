"""Parametric image distortions for the synthetic IQA benchmark.

Each distortion type has a continuous severity `s`: 0 means absent; a record at level L (1..5) has
`s` drawn in [L - 0.5, L + 0.5), so images at one level still differ in strength (as real datasets'
images at one level differ in quality). The severity maps to the distortion's parameter by
geometric or linear interpolation between its value at level 1 and at level 5. Spatial parameters
(blur sigma, pixel block) are given for a 64-pixel image and scale with larger image sides, so a
level looks the same at every `image_size` from 64 up; smaller images keep the 64-pixel values
(scaled down, a level-1 pixel block would vanish under one pixel).
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import cv2
import numpy as np

# Metadata order of `levels` and of severities: never reorder (records store vectors in this order).
DISTORTIONS: tuple[str, ...] = (
    "blur", "noise", "jpeg", "contrast", "desaturate", "darken", "brighten", "pixelate")
NUM_LEVELS = 5
# Pairs that never occur together: an image is not both under- and over-exposed.
EXCLUSIVE = (("darken", "brighten"),)
# Types that need colour in the content (desaturating a grey image changes nothing).
COLOUR_ONLY = ("desaturate",)
# The side length the spatial parameters below are stated for.
_REFERENCE_SIDE = 64


@dataclasses.dataclass(frozen=True)
class _Param:
  """A distortion parameter: its value at level 1 and at level 5, and how it runs in between."""
  at_1: float
  at_5: float
  geometric: bool

  def __call__(self, severity: float) -> float:
    t = (severity - 1.0) / (NUM_LEVELS - 1)
    if self.geometric:
      return float(self.at_1 * (self.at_5 / self.at_1) ** t)
    return float(self.at_1 + (self.at_5 - self.at_1) * t)


_PARAMS = {
    "blur": _Param(0.5, 2.5, geometric=True),          # Gaussian sigma, pixels at 64 px
    "noise": _Param(3.0, 30.0, geometric=True),        # white-noise sigma, 8-bit units
    "jpeg": _Param(60.0, 6.0, geometric=True),         # JPEG quality
    "contrast": _Param(0.75, 0.15, geometric=False),   # contrast kept around the mean luma
    "desaturate": _Param(0.8, 0.1, geometric=False),   # chroma kept
    "darken": _Param(1.25, 3.0, geometric=True),       # exposure divided by
    "brighten": _Param(1.2, 2.5, geometric=True),      # exposure multiplied by (highlights clip)
    "pixelate": _Param(2.0, 6.0, geometric=True),      # block side, pixels at 64 px
}
# Camera-pipeline order: optics, exposure, sensor noise, tone and colour processing, resampling,
# compression. A fixed order keeps a record reproducible from its severities and noise stream.
_APPLY_ORDER = ("blur", "darken", "brighten", "noise", "contrast", "desaturate", "pixelate", "jpeg")
_LUMA = np.array([0.299, 0.587, 0.114], np.float32)


def _blur(x: np.ndarray, p: float, rng: np.random.Generator) -> np.ndarray:
  del rng
  return cv2.GaussianBlur(x, (0, 0), sigmaX=p, borderType=cv2.BORDER_REFLECT_101)


def _noise(x: np.ndarray, p: float, rng: np.random.Generator) -> np.ndarray:
  return x + rng.normal(0.0, p, size=x.shape).astype(np.float32)


def _jpeg(x: np.ndarray, p: float, rng: np.random.Generator) -> np.ndarray:
  del rng
  bgr = np.ascontiguousarray(_to_uint8(x)[..., ::-1])
  ok, data = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, max(1, int(round(p)))])
  if not ok:
    raise RuntimeError("OpenCV failed to JPEG-encode a distorted image")
  return cv2.imdecode(data, cv2.IMREAD_COLOR)[..., ::-1].astype(np.float32)


def _contrast(x: np.ndarray, p: float, rng: np.random.Generator) -> np.ndarray:
  del rng
  mean = float(np.mean(x @ _LUMA))
  return mean + p * (x - mean)


def _desaturate(x: np.ndarray, p: float, rng: np.random.Generator) -> np.ndarray:
  del rng
  luma = (x @ _LUMA)[..., None]
  return luma + max(p, 0.0) * (x - luma)


def _darken(x: np.ndarray, p: float, rng: np.random.Generator) -> np.ndarray:
  del rng
  return x / p


def _brighten(x: np.ndarray, p: float, rng: np.random.Generator) -> np.ndarray:
  del rng
  return np.minimum(x * p, 255.0)


def _pixelate(x: np.ndarray, p: float, rng: np.random.Generator) -> np.ndarray:
  del rng
  # Exact block means over a grid of round(S / p) blocks per side (sizes differ by at most one
  # pixel), so strength grows smoothly with p; resampling (area down, nearest up) instead misaligns
  # the blocks at non-integer factors and makes a 1.7-pixel block look worse than a 2-pixel one.
  side = x.shape[0]
  blocks = min(side, max(1, int(round(side / p))))
  starts = (np.arange(blocks) * side) // blocks
  sizes = np.diff(np.append(starts, side))
  sums = np.add.reduceat(np.add.reduceat(x, starts, axis=0), starts, axis=1)
  means = sums / (sizes[:, None, None] * sizes[None, :, None])
  return np.repeat(np.repeat(means, sizes, axis=0), sizes, axis=1)


_APPLY: dict[str, Callable[[np.ndarray, float, np.random.Generator], np.ndarray]] = {
    "blur": _blur, "noise": _noise, "jpeg": _jpeg, "contrast": _contrast,
    "desaturate": _desaturate, "darken": _darken, "brighten": _brighten, "pixelate": _pixelate,
}
_SPATIAL = ("blur", "pixelate")


def _to_uint8(x: np.ndarray) -> np.ndarray:
  return np.clip(np.round(x), 0, 255).astype(np.uint8)


def parameter(distortion: str, severity: float, side: int) -> float:
  """The distortion's parameter (see `_PARAMS`) at a continuous severity, for a `side`-pixel image."""
  value = _PARAMS[distortion](severity)
  return value * max(side, _REFERENCE_SIDE) / _REFERENCE_SIDE if distortion in _SPATIAL else value


def apply(image: np.ndarray, severities: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """Distorts uint8 `[S, S, 3]` by `severities` `[T]` (order DISTORTIONS, 0 = absent) -> same shape.

  `rng` feeds the noise only; the rest is a function of the image and the severities.
  """
  x = image.astype(np.float32)
  side = image.shape[0]
  for name in _APPLY_ORDER:
    severity = float(severities[DISTORTIONS.index(name)])
    if severity > 0:
      # Each stage sees an 8-bit image, as each step of a real pipeline stores one.
      x = _to_uint8(_APPLY[name](x, parameter(name, severity, side), rng)).astype(np.float32)
  return x.astype(np.uint8)


def sample_levels(rng: np.random.Generator, colour: bool, max_distortions: int = 3) -> np.ndarray:
  """Levels `[T]` int32 of one record: 1..max_distortions types at uniform levels 1..5, 0 elsewhere.

  Types are drawn without replacement among those the content allows (`COLOUR_ONLY` needs colour)
  and never two of an `EXCLUSIVE` pair.
  """
  allowed = [t for t in DISTORTIONS if colour or t not in COLOUR_ONLY]
  count = int(rng.integers(1, max_distortions + 1))
  chosen: list[str] = []
  for t in rng.permutation(allowed):
    if any(t in pair and other in chosen for pair in EXCLUSIVE for other in pair if other != t):
      continue
    chosen.append(str(t))
    if len(chosen) == count:
      break
  levels = np.zeros(len(DISTORTIONS), np.int32)
  for t in chosen:
    levels[DISTORTIONS.index(t)] = rng.integers(1, NUM_LEVELS + 1)
  return levels


def jitter(levels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """Continuous severities `[T]` float64 in [L - 0.5, L + 0.5) for levels L > 0; 0 where absent."""
  offsets = rng.uniform(-0.5, 0.5, size=levels.shape)
  return np.where(levels > 0, levels + offsets, 0.0)
