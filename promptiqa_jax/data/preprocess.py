"""Decode, resize and normalise images the reference way.

The reference reads with OpenCV, resizes to 224x224 with bicubic interpolation (cv2.INTER_CUBIC) on
the uint8 image, converts BGR to RGB, divides by 255 and maps to [-1, 1] with (x - 0.5) / 0.5.
Decoding here goes through Pillow, which verifies the whole file (a truncated JPEG is an error, not
a grey bottom half), refuses decompression bombs before decoding, and converts grayscale, RGBA,
palette and 16-bit images to 8-bit RGB. Then it turns the image upright by its EXIF orientation tag
as `cv2.imread(path, cv2.IMREAD_COLOR)` does: the tag of the file's EXIF block (JPEG APP1, PNG eXIf,
WebP EXIF) or of a TIFF's own directory, whatever the pixel format, and not an orientation in XMP
metadata (which Pillow's `getexif` also reads). Phone photos (SPAQ, users' images) carry such tags.
The resize is OpenCV's, so the pixels match the reference.
"""
from __future__ import annotations

import io
import os

import cv2
import numpy as np
from PIL import Image

# Images with more pixels than this are refused before decoding (decompression bombs); turning an
# image upright keeps its pixel count. 16k x 16k covers every IQA dataset's originals (the largest,
# SPAQ, are about 4k x 3k).
DEFAULT_MAX_PIXELS = 16384 * 16384

_ORIENTATION_TAG = 0x0112
# EXIF orientation -> the stored image turned upright, on [H, W, C] arrays (TIFF/EXIF 2.3: the
# tag says where the stored rows and columns belong; 1 and unknown values mean as stored).
_UPRIGHT = {
    2: lambda a: a[:, ::-1],                 # mirrored left-right
    3: lambda a: a[::-1, ::-1],              # rotated 180
    4: lambda a: a[::-1],                    # mirrored top-bottom
    5: lambda a: a.transpose(1, 0, 2),       # transposed
    6: lambda a: np.rot90(a, -1),            # rotated 90 clockwise to be upright
    7: lambda a: np.rot90(a, -1)[::-1],      # transposed across the other diagonal
    8: lambda a: np.rot90(a, 1),             # rotated 90 counter-clockwise to be upright
}


class ImageError(ValueError):
  """An image that cannot be used; the message names its source."""


def decode_image(data: bytes, source: str = "<bytes>",
                 max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
  """Decodes encoded image bytes to uint8 RGB `[H, W, 3]`, upright by its EXIF orientation.

  Raises ImageError naming `source` for empty, truncated, non-image and oversized input.
  """
  if not data:
    raise ImageError(f"{source}: empty file")
  try:
    with Image.open(io.BytesIO(data)) as image:
      width, height = image.size
      if width * height > max_pixels:
        raise ImageError(f"{source}: {width}x{height} = {width * height} pixels exceeds the limit of "
                         f"{max_pixels} (possible decompression bomb); raise max_pixels if it is genuine")
      if width == 0 or height == 0:
        raise ImageError(f"{source}: image has no pixels ({width}x{height})")
      image.load()
      pixels = _to_rgb8(image)
      orientation = _exif_orientation(image)
  except ImageError:
    raise
  except Image.UnidentifiedImageError as err:
    raise ImageError(f"{source}: not an image in a format Pillow can read") from err
  except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
    raise ImageError(f"{source}: cannot decode image ({err})") from err
  upright = _UPRIGHT.get(orientation)
  return np.ascontiguousarray(upright(pixels)) if upright else pixels


def load_image(path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
  """Reads and decodes an image file to uint8 RGB `[H, W, 3]`; errors name the path."""
  try:
    with open(path, "rb") as f:
      data = f.read()
  except OSError as err:
    raise ImageError(f"{path}: cannot read file ({err.strerror or err})") from err
  return decode_image(data, source=str(path), max_pixels=max_pixels)


def _exif_orientation(image: Image.Image) -> int | None:
  """The EXIF orientation tag where OpenCV reads it, or None (keep the image as stored)."""
  data = image.info.get("exif")
  if data:
    tags = Image.Exif()
    try:
      tags.load(data)
    except Exception:  # pylint: disable=broad-except
      # Pillow raises many types for a damaged EXIF block; OpenCV keeps such an image as stored.
      return None
  else:
    tags = getattr(image, "tag_v2", {})
  value = tags.get(_ORIENTATION_TAG)
  return value if isinstance(value, int) else None


def _to_rgb8(image: Image.Image) -> np.ndarray:
  mode = image.mode
  if mode in ("I;16", "I;16B", "I;16L", "I"):
    # 16-bit (or 32-bit integer) grey: keep the top 8 bits of the 16-bit range, as OpenCV does.
    grey = np.asarray(image, dtype=np.int64)
    grey = np.clip(grey >> 8, 0, 255).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=-1)
  if mode == "F":
    grey = np.clip(np.asarray(image, dtype=np.float32), 0, 255).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=-1)
  if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in image.info):
    # Alpha is dropped the way OpenCV's IMREAD_COLOR drops it: the colour channels as stored.
    image = image.convert("RGBA").convert("RGB")
  elif mode != "RGB":
    image = image.convert("RGB")
  return np.asarray(image, dtype=np.uint8)


def resize_bicubic(image: np.ndarray, size: int) -> np.ndarray:
  """OpenCV bicubic (INTER_CUBIC) resize of uint8 `[H, W, 3]` to `[size, size, 3]`, as the reference."""
  if image.shape[0] == size and image.shape[1] == size:
    return image
  return cv2.resize(image, (size, size), interpolation=cv2.INTER_CUBIC)


def normalize(image: np.ndarray) -> np.ndarray:
  """uint8 `[..., 3]` -> float32 in [-1, 1]: /255 then (x - 0.5) / 0.5."""
  return (image.astype(np.float32) / 255.0 - 0.5) / 0.5


def preprocess(image: np.ndarray, size: int) -> np.ndarray:
  """uint8 RGB `[H, W, 3]` -> float32 `[size, size, 3]` in [-1, 1], the reference's input."""
  if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
    raise ImageError(f"expected a uint8 [H, W, 3] image, got {image.dtype} {image.shape}")
  return normalize(resize_bicubic(image, size))
