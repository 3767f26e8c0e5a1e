"""Full-reference quality measures, batched over the distorted versions of one pristine image.

Every function takes the pristine image `reference: [S, S, 3]` uint8 and its distorted versions
`distorted: [N, S, S, 3]` uint8 and returns one value per version, `[N]` float64. They follow the
published definitions, with three liberties that small images (the benchmark's default is 64 px)
need: filters run with reflected borders instead of dropping a border (a 11x11 window would drop a
third of a 32-pixel image), GMSD skips its 2x downsampling, and MS-SSIM uses as many scales as leave
at least 8 pixels (its published weights renormalised over those scales).
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage
from skimage import color

_LUMA = np.array([0.299, 0.587, 0.114])
# Wang et al. (2004) constants for 8-bit images; window: Gaussian sigma 1.5, 11 taps.
_C1 = (0.01 * 255.0) ** 2
_C2 = (0.03 * 255.0) ** 2
_SSIM_SIGMA = 1.5
_SSIM_TRUNCATE = 3.5
# Wang, Simoncelli, Bovik (2003) scale weights, finest first.
_MS_SSIM_WEIGHTS = np.array([0.0448, 0.2856, 0.3001, 0.2363, 0.1333])
_MS_SSIM_MIN_SIDE = 8
_CIEDE2000_KL = 2.0
# Xue et al. (2014) GMSD constant for 8-bit images.
_GMSD_C = 170.0
# Prewitt kernels over (batch, row, column), divided by 3 as in GMSD; the batch axis stays unmixed.
_PREWITT_X = np.array([[1, 0, -1]] * 3, np.float64)[None] / 3.0
_PREWITT_Y = np.transpose(_PREWITT_X, (0, 2, 1))


def _luma(images: np.ndarray) -> np.ndarray:
  """uint8 `[..., H, W, 3]` -> float64 `[..., H, W]` luma (BT.601), 0..255."""
  return images.astype(np.float64) @ _LUMA


def psnr(reference: np.ndarray, distorted: np.ndarray) -> np.ndarray:
  """PSNR in dB over all RGB values `[N]`; capped at 100 dB for a bit-identical version."""
  diff = distorted.astype(np.float64) - reference.astype(np.float64)[None]
  mse = np.mean(diff ** 2, axis=(1, 2, 3))
  return np.where(mse > 0, 10.0 * np.log10(255.0 ** 2 / np.maximum(mse, 1e-12)), 100.0)


def _blur(x: np.ndarray) -> np.ndarray:
  """Gaussian window over the two trailing axes of `[N, H, W]`."""
  return ndimage.gaussian_filter(x, sigma=(0, _SSIM_SIGMA, _SSIM_SIGMA), mode="reflect",
                                 truncate=_SSIM_TRUNCATE)


def _ssim_terms(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Mean luminance and contrast-structure terms `[N]` of SSIM between `[N, H, W]` stacks."""
  mu_x, mu_y = _blur(x), _blur(y)
  var_x = _blur(x * x) - mu_x ** 2
  var_y = _blur(y * y) - mu_y ** 2
  cov = _blur(x * y) - mu_x * mu_y
  luminance = (2 * mu_x * mu_y + _C1) / (mu_x ** 2 + mu_y ** 2 + _C1)
  contrast_structure = (2 * cov + _C2) / (var_x + var_y + _C2)
  return luminance, contrast_structure


def ssim(reference: np.ndarray, distorted: np.ndarray) -> np.ndarray:
  """Mean SSIM of the luma `[N]` (colour-blind by design: it sees structure, not hue)."""
  y = _luma(distorted)
  x = np.broadcast_to(_luma(reference), y.shape)
  luminance, contrast_structure = _ssim_terms(x, y)
  return np.mean(luminance * contrast_structure, axis=(1, 2))


def ms_ssim(reference: np.ndarray, distorted: np.ndarray) -> np.ndarray:
  """Multi-scale SSIM of the luma `[N]`: contrast-structure at each scale, luminance at the coarsest."""
  y = _luma(distorted)
  x = np.broadcast_to(_luma(reference), y.shape).copy()
  scales = 1
  while scales < len(_MS_SSIM_WEIGHTS) and min(x.shape[1:]) // 2 ** scales >= _MS_SSIM_MIN_SIDE:
    scales += 1
  weights = _MS_SSIM_WEIGHTS[:scales] / _MS_SSIM_WEIGHTS[:scales].sum()
  result = np.ones(len(y))
  for scale in range(scales):
    luminance, contrast_structure = _ssim_terms(x, y)
    # Negative contrast-structure (anti-correlated detail) would make a fractional power complex.
    cs = np.maximum(np.mean(contrast_structure, axis=(1, 2)), 0.0)
    result *= cs ** weights[scale]
    if scale == scales - 1:
      result *= np.mean(luminance, axis=(1, 2)) ** weights[scale]
    else:
      x, y = _halve(x), _halve(y)
  return result


def _halve(x: np.ndarray) -> np.ndarray:
  """2x2 average pooling of `[N, H, W]` (odd trailing rows/columns dropped)."""
  n, h, w = x.shape
  x = x[:, : h - h % 2, : w - w % 2]
  return x.reshape(n, h // 2, 2, w // 2, 2).mean(axis=(2, 4))


def ciede2000(reference: np.ndarray, distorted: np.ndarray) -> np.ndarray:
  """Mean CIEDE2000 colour difference `[N]` (CIELAB, D65), 0 = identical; lower is better.

  With the parametric lightness factor kL = 2 (as colour tolerancing in textiles uses it): chroma
  and hue errors count fully, lightness errors half, which keeps this measure from re-ranking
  images the way PSNR does (with kL = 1 the two agree at SRCC ~0.95 on this benchmark).
  """
  lab_dist = color.rgb2lab(distorted)
  lab_ref = np.broadcast_to(color.rgb2lab(reference), lab_dist.shape)
  return np.mean(color.deltaE_ciede2000(lab_ref, lab_dist, kL=_CIEDE2000_KL), axis=(1, 2))


def gmsd(reference: np.ndarray, distorted: np.ndarray) -> np.ndarray:
  """Gradient magnitude similarity deviation `[N]` of the luma; 0 = identical, lower is better.

  Without the published 2x downsampling (meant for ~512-pixel images seen from afar): these images
  are small and the model enlarges them, so their finest gradients stay visible.
  """
  y = _luma(distorted)
  x = _luma(reference)[None]
  grad_x, grad_y = _gradient_magnitude(x), _gradient_magnitude(y)
  similarity = (2 * grad_x * grad_y + _GMSD_C) / (grad_x ** 2 + grad_y ** 2 + _GMSD_C)
  return np.std(similarity, axis=(1, 2))


def _gradient_magnitude(x: np.ndarray) -> np.ndarray:
  """Prewitt gradient magnitude of `[N, H, W]`."""
  gx = ndimage.correlate(x, _PREWITT_X, mode="reflect")
  gy = ndimage.correlate(x, _PREWITT_Y, mode="reflect")
  return np.sqrt(gx ** 2 + gy ** 2)
