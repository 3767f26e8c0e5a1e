"""Procedural pristine contents: seeded images with the statistics of natural scenes (1/f spectra,
edges, smooth gradients, repeated texture) that widen what training sees beyond the 17 bundled
photographs, offline and reproducibly. Each generator maps a seed to a uint8 `[S, S, 3]` image.
"""
from __future__ import annotations

from typing import Callable

import cv2
import numpy as np

SIDE = 384


def _pink_noise(rng: np.random.Generator, side: int, beta: float) -> np.ndarray:
  """Noise `[side, side]` in [0, 1] with a 1 / f**beta amplitude spectrum (beta 1-2: natural)."""
  fy = np.fft.fftfreq(side)[:, None]
  fx = np.fft.rfftfreq(side)[None, :]
  radius = np.sqrt(fx * fx + fy * fy)
  radius[0, 0] = 1.0
  spectrum = (rng.normal(size=radius.shape) + 1j * rng.normal(size=radius.shape)) / radius ** beta
  spectrum[0, 0] = 0.0
  field = np.fft.irfft2(spectrum, s=(side, side))
  return (field - field.min()) / (np.ptp(field) + 1e-12)


def _palette(values: np.ndarray, colours: np.ndarray) -> np.ndarray:
  """Values `[H, W]` in [0, 1] -> RGB `[H, W, 3]` float by linear interpolation through `colours`
  `[K, 3]` (0-255)."""
  stops = np.linspace(0.0, 1.0, len(colours))
  return np.stack([np.interp(values, stops, colours[:, c]) for c in range(3)], axis=-1)


def _to_uint8(image: np.ndarray) -> np.ndarray:
  return np.clip(np.round(image), 0, 255).astype(np.uint8)


def terrain(rng: np.random.Generator, side: int = SIDE) -> np.ndarray:
  """A landscape: fractal hills under a sky gradient with a horizon."""
  hills = _pink_noise(rng, side, 2.2)
  colours = np.array([[40, 70, 30], [90, 120, 50], [150, 140, 90], [120, 110, 100], [235, 235, 240]])
  ground = _palette(hills, colours) * (0.85 + 0.3 * _pink_noise(rng, side, 1.0)[..., None])
  rows = np.arange(side)[:, None] / side
  horizon = 0.3 + 0.2 * rng.uniform() + 0.1 * (hills[side // 2] - 0.5)[None, :]
  sky_top, sky_low = rng.uniform([60, 110, 180], [110, 160, 230]), np.array([200, 215, 230])
  sky = sky_top + (sky_low - sky_top) * np.clip(rows / horizon, 0, 1)[..., None]
  image = np.where((rows < horizon)[..., None], sky, ground)
  return _to_uint8(cv2.GaussianBlur(image, (3, 3), 0.7))


def clouds(rng: np.random.Generator, side: int = SIDE) -> np.ndarray:
  """A smooth sky: soft clouds over a blue gradient (mostly flat content)."""
  cover = np.clip((_pink_noise(rng, side, 2.5) - 0.45) * 2.5, 0, 1)[..., None]
  rows = (np.arange(side)[:, None, None] / side)
  blue = np.array([70, 120, 200]) + rows * np.array([80, 70, 40])
  return _to_uint8(blue * (1 - cover) + np.array([245, 245, 250]) * cover * (0.85 + 0.15 * rows))


def mosaic(rng: np.random.Generator, side: int = SIDE) -> np.ndarray:
  """Voronoi cells of varied colour with dark grout and a fine surface texture."""
  points = rng.uniform(0, side, (int(rng.integers(40, 120)), 2))
  yy, xx = np.mgrid[0:side, 0:side]
  distances = np.stack([np.hypot(yy - y, xx - x) for y, x in points])
  order = np.sort(distances, axis=0)
  cell = np.argmin(distances, axis=0)
  colours = rng.uniform(30, 230, (len(points), 3))
  image = colours[cell] * (0.9 + 0.2 * _pink_noise(rng, side, 0.8)[..., None])
  grout = (order[1] - order[0]) < 2.5
  image[grout] = 35
  return _to_uint8(image)


def shapes(rng: np.random.Generator, side: int = SIDE) -> np.ndarray:
  """Objects on a gradient: overlapping discs, boxes and polygons, the far ones out of focus."""
  top, bottom = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
  image = top + (bottom - top) * (np.arange(side)[:, None, None] / side)
  image = np.repeat(image, side, axis=1).astype(np.float32)
  for depth in range(int(rng.integers(8, 20))):
    layer = np.zeros_like(image)
    mask = np.zeros((side, side), np.uint8)
    centre = tuple(int(v) for v in rng.integers(0, side, 2))
    size = int(rng.integers(side // 20, side // 5))
    kind = rng.integers(3)
    if kind == 0:
      cv2.circle(mask, centre, size, 255, -1)
    elif kind == 1:
      cv2.rectangle(mask, centre, (centre[0] + size, centre[1] + int(size * rng.uniform(0.5, 2))),
                    255, -1)
    else:
      corners = rng.integers(-size, size, (int(rng.integers(3, 7)), 2)) + np.array(centre)
      cv2.fillPoly(mask, [corners.astype(np.int32)], 255)
    layer[:] = rng.uniform(0, 255, 3)
    shade = 0.75 + 0.5 * (np.arange(side)[None, :, None] / side)
    alpha = (mask / 255.0)[..., None]
    if depth < 4:  # the first shapes are far away: out of focus
      alpha = cv2.GaussianBlur(alpha, (0, 0), 4.0)[..., None]
    image = image * (1 - alpha) + layer * shade * alpha
  return _to_uint8(image)


def weave(rng: np.random.Generator, side: int = SIDE) -> np.ndarray:
  """Woven fabric: two interlaced stripe families with colour and thickness variation."""
  yy, xx = np.mgrid[0:side, 0:side].astype(np.float64)
  period = rng.uniform(6, 14)
  warp = 0.5 + 0.5 * np.sin(2 * np.pi * xx / period + 3 * _pink_noise(rng, side, 2.0))
  weft = 0.5 + 0.5 * np.sin(2 * np.pi * yy / period + 3 * _pink_noise(rng, side, 2.0))
  over = (np.floor(xx / period) + np.floor(yy / period)) % 2 == 0
  a, b = rng.uniform(40, 220, 3), rng.uniform(40, 220, 3)
  image = np.where(over[..., None], a * warp[..., None], b * weft[..., None])
  return _to_uint8(image * (0.8 + 0.4 * _pink_noise(rng, side, 1.5)[..., None]))


def marble(rng: np.random.Generator, side: int = SIDE) -> np.ndarray:
  """Veined stone: a sine of a turbulent field."""
  yy, xx = np.mgrid[0:side, 0:side] / side
  turbulence = _pink_noise(rng, side, 1.8)
  veins = np.abs(np.sin((xx * rng.uniform(2, 6) + yy * rng.uniform(1, 4) + 5 * turbulence) * np.pi))
  colours = np.array([rng.uniform(20, 90, 3), rng.uniform(120, 200, 3), [235, 232, 225]])
  return _to_uint8(_palette(veins ** 0.6, colours))


GENERATORS: dict[str, Callable[[np.random.Generator], np.ndarray]] = {
    "terrain": terrain, "clouds": clouds, "mosaic": mosaic, "shapes": shapes, "weave": weave,
    "marble": marble,
}


def generate(name: str, seed: int) -> np.ndarray:
  """The procedural content `name` (a GENERATORS key, optionally "name-k" for variant k)."""
  kind, _, variant = name.partition("-")
  return GENERATORS[kind](np.random.default_rng([seed, int(variant or 0)]))
