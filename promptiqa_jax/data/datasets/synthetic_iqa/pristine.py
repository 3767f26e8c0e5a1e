"""The pristine contents of synthetic_iqa: photographs bundled in installed packages (scikit-image,
matplotlib), procedural images (procedural.py; training only) and optionally a folder of the user's
own images; their split by content and their crops.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Sequence

import cv2
import numpy as np

from promptiqa_jax.data import preprocess
from promptiqa_jax.data.datasets.synthetic_iqa import procedural

@dataclasses.dataclass(frozen=True)
class PristineSource:
  """A natural image shipped inside an installed package, or a procedural image (package
  "procedural", filename the generator's name); `content_id` is its index in PRISTINE."""
  name: str
  package: str  # "skimage", "matplotlib" or "procedural"
  filename: str

  @property
  def train_only(self) -> bool:
    """Procedural contents widen training; validation and test stay natural photographs."""
    return self.package == "procedural"

  def image(self, seed: int) -> np.ndarray:
    """uint8 `[H, W, 3]`: the file read as the reference decodes, or generated from `seed`."""
    if self.package == "procedural":
      return procedural.generate(self.filename, seed)
    return preprocess.load_image(self.path())

  def path(self) -> str:
    """The image file inside the installed package."""
    if self.package == "skimage":
      import skimage.data  # Only for its folder: skimage.data's loaders may try to download.
      return os.path.join(os.path.dirname(skimage.data.__file__), self.filename)
    import matplotlib  # Its sample photos live in the installed package's data folder.
    return os.path.join(matplotlib.get_data_path(), "sample_data", self.filename)


# Only images inside the installed packages: no download, no network. Left out on purpose: the
# synthetic or binary ones (checkerboard, colour wheel, logos, horse, phantom), duplicates (cat is
# chelsea, motorcycle_right), clock_motion (motion-blurred on purpose), cell (almost flat) and
# microaneurysms (102 px, too small for crops). Never reorder: the index is the content_id.
PRISTINE: tuple[PristineSource, ...] = (
    PristineSource("astronaut", "skimage", "astronaut.png"),
    PristineSource("camera", "skimage", "camera.png"),
    PristineSource("chelsea", "skimage", "chelsea.png"),
    PristineSource("coffee", "skimage", "coffee.png"),
    PristineSource("rocket", "skimage", "rocket.jpg"),
    PristineSource("motorcycle", "skimage", "motorcycle_left.png"),
    PristineSource("coins", "skimage", "coins.png"),
    PristineSource("moon", "skimage", "moon.png"),
    PristineSource("brick", "skimage", "brick.png"),
    PristineSource("grass", "skimage", "grass.png"),
    PristineSource("gravel", "skimage", "gravel.png"),
    PristineSource("page", "skimage", "page.png"),
    PristineSource("text", "skimage", "text.png"),
    PristineSource("immunohistochemistry", "skimage", "ihc.png"),
    PristineSource("retina", "skimage", "retina.jpg"),
    PristineSource("hubble_deep_field", "skimage", "hubble_deep_field.jpg"),
    PristineSource("grace_hopper", "matplotlib", "grace_hopper.jpg"),
) + tuple(PristineSource(f"procedural_{kind}", "procedural", kind) for kind in procedural.GENERATORS)
# User images get content_id USER_CONTENT_ID_BASE + their index in the sorted file names.
USER_CONTENT_ID_BASE = 1000
USER_IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif")
# Crop side as a fraction of the image's shorter side: wide enough for scenes, tight enough for
# detail.
_CROP_FRACTION = (0.4, 0.9)
# Mean |chroma| (8-bit units) above which content counts as colour (desaturation can apply).
_COLOUR_THRESHOLD = 2.0
# Split fractions of contents (at least one content each); the rest is train.
VALIDATION_FRACTION = 0.15
TEST_FRACTION = 0.2
# Tags that keep the random streams of crops, records and splits apart.
CROP_STREAM, RECORD_STREAM, SPLIT_STREAM = 0, 1, 2


@dataclasses.dataclass(frozen=True)
class Content:
  """One pristine image and what the generator needs to know about it."""
  name: str
  content_id: int
  image: np.ndarray  # [H, W, 3] uint8
  colour: bool
  train_only: bool = False


def _is_colour(image: np.ndarray) -> bool:
  luma = image.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
  return float(np.mean(np.abs(image.astype(np.float32) - luma[..., None]))) > _COLOUR_THRESHOLD


def load_contents(names: Sequence[str] | None, user_image_dir: str | None,
                  seed: int = 0) -> list[Content]:
  """The bundled contents `names` (None: all; procedural ones generated from `seed`), then one per
  image of `user_image_dir` (errors name the file)."""
  wanted = set(names) if names is not None else None
  contents = []
  for content_id, source in enumerate(PRISTINE):
    if wanted is not None and source.name not in wanted:
      continue
    image = source.image(seed)
    contents.append(Content(source.name, content_id, image, _is_colour(image), source.train_only))
  if user_image_dir is not None:
    used = {c.name for c in contents}
    for i, path in enumerate(user_image_paths(user_image_dir)):
      try:
        image = preprocess.load_image(path)
      except preprocess.ImageError as err:
        raise preprocess.ImageError(f"{err} (in user_image_dir; fix or remove that file)") from err
      stem = os.path.splitext(os.path.basename(path))[0]
      name = "user_" + "".join(c if c.isalnum() else "-" for c in stem)
      # "a b.png" and "a-b.jpg" would share a name, and record names are the dataset's keys.
      name = name if name not in used else f"{name}-{i}"
      used.add(name)
      contents.append(Content(name, USER_CONTENT_ID_BASE + i, image, _is_colour(image)))
  return contents


def user_image_paths(folder: str) -> list[str]:
  if not os.path.isdir(folder):
    raise FileNotFoundError(f"user_image_dir {folder!r} is not a folder; give a folder of images "
                            f"({', '.join(USER_IMAGE_EXTENSIONS)})")
  paths = sorted(os.path.join(folder, f) for f in os.listdir(folder)
                 if not f.startswith(".") and f.lower().endswith(USER_IMAGE_EXTENSIONS))
  if not paths:
    raise ValueError(f"user_image_dir {folder!r} holds no images "
                     f"({', '.join(USER_IMAGE_EXTENSIONS)})")
  return paths


def assign_splits(contents: Sequence[Any], colour: Sequence[bool], seed: int,
                  train_only: Sequence[bool] | None = None) -> dict[str, list[Any]]:
  """Splits contents into train / validation / test, each content in exactly one split.

  `train_only` contents go to train; the others are split so: colour and grey contents are
  shuffled apart (seeded) and interleaved by their rank, so that each split gets a fair share of
  both. Needs at least 3 contents that are not train-only (one per split).
  """
  train_only = [False] * len(contents) if train_only is None else list(train_only)
  extra = [c for c, only in zip(contents, train_only) if only]
  colour = [c for c, only in zip(colour, train_only) if not only]
  contents = [c for c, only in zip(contents, train_only) if not only]
  if len(contents) < 3:
    raise ValueError(f"synthetic_iqa needs at least 3 pristine contents (one per split) besides "
                     f"procedural ones, got {len(contents)}; add contents or a user_image_dir")
  rng = np.random.default_rng([seed, SPLIT_STREAM])
  keyed = []
  for flag in (True, False):
    group = [i for i in range(len(contents)) if bool(colour[i]) == flag]
    order = rng.permutation(len(group))
    keyed += [((rank + 0.5) / len(group), flag, group[j]) for rank, j in enumerate(order)]
  ordered = [contents[i] for _, _, i in sorted(keyed)]
  n_test = max(1, int(round(TEST_FRACTION * len(contents))))
  n_validation = max(1, int(round(VALIDATION_FRACTION * len(contents))))
  return {"test": ordered[:n_test],
          "validation": ordered[n_test:n_test + n_validation],
          "train": ordered[n_test + n_validation:] + extra}


def crop(image: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
  """A random square crop of uint8 `[H, W, 3]`, resized to `[size, size, 3]`."""
  height, width = image.shape[:2]
  side = max(1, int(round(rng.uniform(*_CROP_FRACTION) * min(height, width))))
  top = int(rng.integers(0, height - side + 1))
  left = int(rng.integers(0, width - side + 1))
  patch = image[top:top + side, left:left + side]
  # Area averaging when shrinking avoids aliasing that would read as a distortion of its own.
  interpolation = cv2.INTER_AREA if side >= size else cv2.INTER_CUBIC
  return cv2.resize(patch, (size, size), interpolation=interpolation)
