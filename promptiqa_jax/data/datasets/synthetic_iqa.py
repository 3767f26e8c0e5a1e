"""synthetic_iqa: an offline IQA benchmark with many assessment requirements over the same images.

Pristine content is the natural photographs and textures that ship inside installed packages
(scikit-image's bundled data, matplotlib's sample photo), plus optionally a folder of the user's own
images. Each content gives `crops_per_content` random square crops, resized to `image_size`; each
crop gives `distorted_per_crop` distorted versions carrying one to three of the eight DISTORTIONS at
random levels 1..5 (records never hold the pristine crop itself). Every record is scored under all
REQUIREMENTS at once: full-reference measures against its pristine crop (PSNR, SSIM, MS-SSIM,
CIEDE2000, GMSD) and distortion-weighted rules (one distortion family matters most). Normalised
scores keep the requirement's direction, as the reference keeps DMOS datasets lower-is-better.

Training draws, per group, a requirement from `random_requirement_scores` (a random sensitivity per
distortion type and a random curve, from the records' `levels`) besides the non-held-out
REQUIREMENTS; `heldout_requirements()` are for evaluation only.

Splits are by content (`content_id`), the whole build is a function of the config (seed included).

Building (no TensorFlow needed; records are ArrayRecord, read with `as_data_source`):

  builder = prepare("/data/tfds")                                  # the default config
  builder = prepare("/data/tfds", image_size=32, seed=1, crops_per_content=2)
  builder = Builder(data_dir="/data/tfds", image_size=32, seed=1)  # then download_and_prepare()
  builder = Builder(data_dir="/data/tfds", config=make_config(image_size=32))
  records = builder.as_data_source("test")   # record["name"] comes back as bytes

Each set of options is its own TFDS config (its own folder, named by `make_config`), so different
builds coexist under one data_dir; `Builder(data_dir=...)` with no options opens the default one.

`python -m promptiqa_jax.data.datasets.synthetic_iqa --data-dir DIR` builds (if needed) and prints
the SRCC between every pair of requirements as a markdown table.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import os
from typing import Any, Callable, Iterator, Optional, Sequence

import cv2
import numpy as np
import tensorflow_datasets as tfds
from scipy import stats

from promptiqa_jax.data import preprocess
from promptiqa_jax.data.datasets import _distortions
from promptiqa_jax.data.datasets import _fr_measures

DISTORTIONS: tuple[str, ...] = _distortions.DISTORTIONS
NUM_LEVELS = _distortions.NUM_LEVELS

# ---------------------------------------------------------------------------------------------
# Pristine content.


@dataclasses.dataclass(frozen=True)
class PristineSource:
  """A natural image shipped inside an installed package; `content_id` is its index in PRISTINE."""
  name: str
  package: str  # "skimage" or "matplotlib"
  filename: str

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
)
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

# ---------------------------------------------------------------------------------------------
# Assessment requirements.


@dataclasses.dataclass(frozen=True)
class Requirement:
  """One assessment requirement: how a record's `scores_raw` entry is made and normalised.

  kind: "full_reference" (a measure against the pristine crop) or "weighted" (a rule on the
  distortions' continuous severities, one family weighted heavily). lower_better: DMOS-like.
  raw_range: (low, high) mapped to (0, 1) for `scores` (clipped; the direction is kept).
  heldout: never used for training; evaluation only.
  """
  name: str
  kind: str
  lower_better: bool
  heldout: bool
  description: str
  raw_range: tuple[float, float]

  def normalise(self, raw: np.ndarray) -> np.ndarray:
    """Raw scores `[N]` -> `[N]` float32 in [0, 1]."""
    low, high = self.raw_range
    return np.clip((np.asarray(raw, np.float64) - low) / (high - low), 0.0, 1.0).astype(np.float32)


@dataclasses.dataclass(frozen=True)
class _WeightedRule:
  """quality = prod_t (1 - w_t * (s_t / 5.5) ** exponent) over the severities s_t (0 = absent).

  5.5 is the highest severity (level 5 plus its jitter). The product keeps quality in (0, 1] for
  any number of distortions; `_raw_scores` maps it onto the requirement's raw range, reversed for
  a DMOS-like requirement.
  """
  weights: dict[str, float]
  exponent: float
  default_weight: float

  def quality(self, severities: np.ndarray) -> np.ndarray:
    """Severities `[N, T]` -> quality `[N]` in (0, 1]."""
    w = np.array([self.weights.get(t, self.default_weight) for t in DISTORTIONS])
    relative = np.asarray(severities, np.float64) / (NUM_LEVELS + 0.5)
    return np.prod(1.0 - w * relative ** self.exponent, axis=-1)


_BLUR_MATTERS = _WeightedRule({"blur": 0.95}, exponent=1.3, default_weight=0.2)
_NOISE_MATTERS = _WeightedRule({"noise": 0.95, "jpeg": 0.4}, exponent=1.0, default_weight=0.15)
_COMPRESSION_MATTERS = _WeightedRule({"jpeg": 0.9, "pixelate": 0.85, "blur": 0.35}, exponent=0.8,
                                     default_weight=0.1)
# Exposure only lightly: PSNR already ranks images mostly by their exposure errors, and a rule that
# weighted exposure heavily would re-rank the test images like PSNR does (SRCC ~0.9).
_VIVIDNESS_MATTERS = _WeightedRule(
    {"contrast": 0.9, "desaturate": 0.8, "darken": 0.3, "brighten": 0.3}, exponent=1.2,
    default_weight=0.15)

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
)


# Full-reference measures: (reference [S, S, 3], distorted [N, S, S, 3]) uint8 -> raw [N].
_FR_MEASURES: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "psnr": _fr_measures.psnr,
    "ssim": _fr_measures.ssim,
    "ciede2000": _fr_measures.ciede2000,
    "ms_ssim": _fr_measures.ms_ssim,
    "gmsd": _fr_measures.gmsd,
}
_WEIGHTED_RULES: dict[str, _WeightedRule] = {
    "blur_matters": _BLUR_MATTERS,
    "noise_dmos": _NOISE_MATTERS,
    "compression_mos": _COMPRESSION_MATTERS,
    "vividness_dmos": _VIVIDNESS_MATTERS,
}


def _raw_scores(requirement: Requirement, reference: np.ndarray, distorted: np.ndarray,
                severities: np.ndarray) -> np.ndarray:
  """Raw scores `[N]` of one requirement (see `score_records` for the shapes)."""
  if requirement.kind == "full_reference":
    return _FR_MEASURES[requirement.name](reference, distorted)
  quality = _WEIGHTED_RULES[requirement.name].quality(severities)
  low, high = requirement.raw_range
  return low + (high - low) * ((1.0 - quality) if requirement.lower_better else quality)


def requirement_index(name: str) -> int:
  """Position of a requirement in REQUIREMENTS (and in `scores`); ValueError naming the known ones."""
  for i, requirement in enumerate(REQUIREMENTS):
    if requirement.name == name:
      return i
  raise ValueError(f"Unknown requirement {name!r}; synthetic_iqa has: "
                   f"{', '.join(r.name for r in REQUIREMENTS)}")


def train_requirements() -> tuple[Requirement, ...]:
  """The requirements training may use (with the random family)."""
  return tuple(r for r in REQUIREMENTS if not r.heldout)


def heldout_requirements() -> tuple[Requirement, ...]:
  """The requirements kept for evaluation only."""
  return tuple(r for r in REQUIREMENTS if r.heldout)


def score_records(reference: np.ndarray, distorted: np.ndarray,
                  severities: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Scores the distorted versions of one pristine crop under every requirement.

  reference: [S, S, 3] uint8; distorted: [N, S, S, 3] uint8; severities: [N, T] (0 = absent).
  Returns (scores [N, R] float32 in [0, 1], scores_raw [N, R] float32), order REQUIREMENTS.
  """
  raw = np.stack([_raw_scores(r, reference, distorted, severities) for r in REQUIREMENTS], axis=1)
  scores = np.stack([r.normalise(raw[:, i]) for i, r in enumerate(REQUIREMENTS)], axis=1)
  return scores, raw.astype(np.float32)


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


# ---------------------------------------------------------------------------------------------
# Builder configuration.


@dataclasses.dataclass(eq=False)
class SyntheticIqaConfig(tfds.core.BuilderConfig):
  """Build options; make one with `make_config` (it names the config after its options).

  image_size: side S of the stored square images (the model's resize comes later in the stream).
  crops_per_content, distorted_per_crop: records per content = their product.
  seed: the whole build (crops, distortions, noise, splits) is a function of it.
  user_image_dir: a folder of extra pristine images (one content each), or None.
  contents: names from PRISTINE to use (None: all of them; empty: user images only).
  """
  image_size: int = 64
  crops_per_content: int = 6
  distorted_per_crop: int = 24
  seed: int = 0
  user_image_dir: Optional[str] = None
  contents: Optional[tuple[str, ...]] = None

  def options(self) -> dict[str, Any]:
    """The build options, as `make_config` and `prepare` take them."""
    return dict(image_size=self.image_size, crops_per_content=self.crops_per_content,
                distorted_per_crop=self.distorted_per_crop, seed=self.seed,
                user_image_dir=self.user_image_dir, contents=self.contents)


def make_config(image_size: int = 64, crops_per_content: int = 6, distorted_per_crop: int = 24,
                seed: int = 0, user_image_dir: Optional[str] = None,
                contents: Optional[Sequence[str]] = None) -> SyntheticIqaConfig:
  """A validated config whose name spells its options (so each build gets its own folder).

  The user folder enters the name as a hash of its absolute path: rebuilding after changing the
  folder's files needs a fresh data_dir (or deleting the config's folder).
  """
  if image_size < 16:
    raise ValueError(f"image_size must be at least 16 (MS-SSIM and JPEG need room), got {image_size}")
  if crops_per_content < 1 or distorted_per_crop < 1:
    raise ValueError(f"crops_per_content and distorted_per_crop must be >= 1, got "
                     f"{crops_per_content} and {distorted_per_crop}")
  name = f"size{image_size}_crops{crops_per_content}_per{distorted_per_crop}_seed{seed}"
  if contents is not None:
    contents = tuple(contents)
    known = {s.name for s in PRISTINE}
    unknown = [c for c in contents if c not in known]
    if unknown:
      raise ValueError(f"Unknown contents {unknown}; bundled contents: {', '.join(sorted(known))}")
    name += "_contents-" + _short_hash(",".join(sorted(contents)))
  if user_image_dir is not None:
    user_image_dir = os.path.abspath(os.path.expanduser(str(user_image_dir)))
    name += "_user-" + _short_hash(user_image_dir)
  return SyntheticIqaConfig(
      name=name, description=f"synthetic_iqa with {name}", image_size=image_size,
      crops_per_content=crops_per_content, distorted_per_crop=distorted_per_crop, seed=seed,
      user_image_dir=user_image_dir, contents=contents)


def _short_hash(text: str) -> str:
  return hashlib.sha256(text.encode("utf-8")).hexdigest()[:8]


DEFAULT_CONFIG = make_config()
_OPTION_NAMES = tuple(DEFAULT_CONFIG.options())

# ---------------------------------------------------------------------------------------------
# Generation.


# Tags that keep the random streams of crops, records and splits apart.
_CROP_STREAM, _RECORD_STREAM, _SPLIT_STREAM = 0, 1, 2


@dataclasses.dataclass(frozen=True)
class _Content:
  """One pristine image and what the generator needs to know about it."""
  name: str
  content_id: int
  image: np.ndarray  # [H, W, 3] uint8
  colour: bool


def _is_colour(image: np.ndarray) -> bool:
  luma = image.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
  return float(np.mean(np.abs(image.astype(np.float32) - luma[..., None]))) > _COLOUR_THRESHOLD


def _load_contents(config: SyntheticIqaConfig) -> list[_Content]:
  """Every pristine content of the config, bundled first, then the user's (errors name the file)."""
  wanted = set(config.contents) if config.contents is not None else None
  contents = []
  for content_id, source in enumerate(PRISTINE):
    if wanted is not None and source.name not in wanted:
      continue
    image = preprocess.load_image(source.path())
    contents.append(_Content(source.name, content_id, image, _is_colour(image)))
  if config.user_image_dir is not None:
    used = {c.name for c in contents}
    for i, path in enumerate(_user_image_paths(config.user_image_dir)):
      try:
        image = preprocess.load_image(path)
      except preprocess.ImageError as err:
        raise preprocess.ImageError(f"{err} (in user_image_dir; fix or remove that file)") from err
      stem = os.path.splitext(os.path.basename(path))[0]
      name = "user_" + "".join(c if c.isalnum() else "-" for c in stem)
      # "a b.png" and "a-b.jpg" would share a name, and record names are the dataset's keys.
      name = name if name not in used else f"{name}-{i}"
      used.add(name)
      contents.append(_Content(name, USER_CONTENT_ID_BASE + i, image, _is_colour(image)))
  return contents


def _user_image_paths(folder: str) -> list[str]:
  if not os.path.isdir(folder):
    raise FileNotFoundError(f"user_image_dir {folder!r} is not a folder; give a folder of images "
                            f"({', '.join(USER_IMAGE_EXTENSIONS)})")
  paths = sorted(os.path.join(folder, f) for f in os.listdir(folder)
                 if not f.startswith(".") and f.lower().endswith(USER_IMAGE_EXTENSIONS))
  if not paths:
    raise ValueError(f"user_image_dir {folder!r} holds no images "
                     f"({', '.join(USER_IMAGE_EXTENSIONS)})")
  return paths


def assign_splits(contents: Sequence[Any], colour: Sequence[bool], seed: int) -> dict[str, list[Any]]:
  """Splits contents into train / validation / test, each content in exactly one split.

  Colour and grey contents are shuffled apart (seeded) and interleaved by their rank, so that each
  split gets a fair share of both. Needs at least 3 contents (one per split).
  """
  if len(contents) < 3:
    raise ValueError(f"synthetic_iqa needs at least 3 pristine contents (one per split), got "
                     f"{len(contents)}; add contents or a user_image_dir")
  rng = np.random.default_rng([seed, _SPLIT_STREAM])
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
          "train": ordered[n_test + n_validation:]}


def _crop(image: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
  """A random square crop of uint8 `[H, W, 3]`, resized to `[size, size, 3]`."""
  height, width = image.shape[:2]
  side = max(1, int(round(rng.uniform(*_CROP_FRACTION) * min(height, width))))
  top = int(rng.integers(0, height - side + 1))
  left = int(rng.integers(0, width - side + 1))
  patch = image[top:top + side, left:left + side]
  # Area averaging when shrinking avoids aliasing that would read as a distortion of its own.
  interpolation = cv2.INTER_AREA if side >= size else cv2.INTER_CUBIC
  return cv2.resize(patch, (size, size), interpolation=interpolation)


def record_name(content: str, crop: int, index: int, levels: np.ndarray) -> str:
  """E.g. "astronaut_crop2_07_blur3_noise1": content, crop, version within the crop, distortions."""
  parts = [f"{t}{int(l)}" for t, l in zip(DISTORTIONS, levels) if l > 0]
  return "_".join([content, f"crop{crop}", f"{index:02d}"] + parts)


def _encode_png(image: np.ndarray) -> bytes:
  ok, data = cv2.imencode(".png", np.ascontiguousarray(image[..., ::-1]))
  if not ok:
    raise RuntimeError("OpenCV failed to PNG-encode a record image")
  return data.tobytes()


def generate_content(content: _Content, config: SyntheticIqaConfig) -> Iterator[dict[str, Any]]:
  """The records of one content as numpy: image uint8 `[S, S, 3]`, levels `[T]`, scores `[R]`, ..."""
  size, seed = config.image_size, config.seed
  for crop_index in range(config.crops_per_content):
    crop_rng = np.random.default_rng([seed, _CROP_STREAM, content.content_id, crop_index, 0])
    reference = _crop(content.image, size, crop_rng)
    levels, severities, distorted = [], [], []
    for index in range(config.distorted_per_crop):
      rng = np.random.default_rng([seed, _RECORD_STREAM, content.content_id, crop_index, index])
      record_levels = _distortions.sample_levels(rng, content.colour)
      record_severities = _distortions.jitter(record_levels, rng)
      levels.append(record_levels)
      severities.append(record_severities)
      distorted.append(_distortions.apply(reference, record_severities, rng))
    scores, scores_raw = score_records(reference, np.stack(distorted), np.stack(severities))
    for index in range(config.distorted_per_crop):
      yield {
          "image": distorted[index],
          "name": record_name(content.name, crop_index, index, levels[index]),
          "content_id": content.content_id,
          "levels": levels[index],
          "scores": scores[index],
          "scores_raw": scores_raw[index],
      }


# ---------------------------------------------------------------------------------------------
# The TFDS builder.


class Builder(tfds.core.GeneratorBasedBuilder):
  """The synthetic_iqa TFDS builder (ArrayRecord, no TensorFlow).

  Construct with a config, `Builder(data_dir=..., config=make_config(...))`, or with the options as
  keywords, `Builder(data_dir=..., image_size=32, seed=1)`; with neither, the default config.
  """

  name = "synthetic_iqa"
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First release."}
  BUILDER_CONFIGS = [DEFAULT_CONFIG]

  def __init__(self, *, config: Any = None, file_format: Any = "array_record", **kwargs: Any):
    options = {k: kwargs.pop(k) for k in _OPTION_NAMES if k in kwargs}
    if options:
      if config is not None:
        raise ValueError(f"Give either config or options ({', '.join(options)}), not both")
      config = make_config(**options)
    if isinstance(config, SyntheticIqaConfig) and config.name == DEFAULT_CONFIG.name:
      # TFDS refuses a second config object under a predefined config's name.
      config = DEFAULT_CONFIG
    super().__init__(config=config, file_format=file_format, **kwargs)

  @tfds.core.utils.classproperty
  @classmethod
  def url_infos(cls) -> None:
    # Nothing is downloaded. TFDS's default looks for a checksums file beside the module, which
    # needs the importlib_resources backport for a builder inside a package.
    return None

  def _info(self) -> tfds.core.DatasetInfo:
    size = self.builder_config.image_size
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__.split("\n\n")[0],
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(size, size, 3), encoding_format="png"),
            "name": tfds.features.Text(),
            "content_id": tfds.features.Scalar(np.int64),
            "levels": tfds.features.Tensor(shape=(len(DISTORTIONS),), dtype=np.int32),
            "scores": tfds.features.Tensor(shape=(len(REQUIREMENTS),), dtype=np.float32),
            "scores_raw": tfds.features.Tensor(shape=(len(REQUIREMENTS),), dtype=np.float32),
        }),
        metadata=tfds.core.MetadataDict(
            distortions=list(DISTORTIONS),
            requirements=[dataclasses.asdict(r) for r in REQUIREMENTS],
            options=self.builder_config.options(),
        ),
    )

  def _split_generators(self, dl_manager: Any) -> dict[str, Iterator[tuple[str, dict[str, Any]]]]:
    del dl_manager  # Everything is local.
    # Loaded up front, so a bad user image fails the build before anything is written.
    contents = _load_contents(self.builder_config)
    splits = assign_splits(contents, [c.colour for c in contents], self.builder_config.seed)
    return {split: self._generate_examples(members) for split, members in splits.items()}

  def _generate_examples(self, contents: Sequence[_Content]) -> Iterator[tuple[str, dict[str, Any]]]:
    for content in contents:
      for record in generate_content(content, self.builder_config):
        # The PNG is encoded here: TFDS would need TensorFlow to encode an array.
        yield record["name"], dict(record, image=_encode_png(record["image"]))


def prepare(data_dir: str, manual_dir: Optional[str] = None, image_size: int = 64, seed: int = 0,
            **options: Any) -> Builder:
  """Builds synthetic_iqa under `data_dir` (a no-op if already built) and returns the builder.

  manual_dir: a folder of the user's own pristine images (the `user_image_dir` option).
  options: crops_per_content, distorted_per_crop, contents, user_image_dir (see SyntheticIqaConfig).
  """
  if manual_dir is not None:
    if options.get("user_image_dir") not in (None, manual_dir):
      raise ValueError("Give the user image folder once: manual_dir or user_image_dir")
    options["user_image_dir"] = manual_dir
  config = make_config(image_size=image_size, seed=seed, **options)
  builder = Builder(data_dir=data_dir, config=config)
  builder.download_and_prepare(file_format="array_record")
  return builder


def split_arrays(builder: Builder, split: str) -> dict[str, np.ndarray]:
  """Every record's metadata of a built split, stacked (images are not decoded).

  Returns content_id [N], levels [N, T], scores [N, R], scores_raw [N, R] and name [N] (str).
  """
  source = builder.as_data_source(split, decoders={"image": tfds.decode.SkipDecoding()})
  records = source.__getitems__(list(range(len(source))))
  out = {key: np.stack([np.asarray(r[key]) for r in records])
         for key in ("content_id", "levels", "scores", "scores_raw")}
  out["name"] = np.array([r["name"].decode("utf-8") for r in records])
  return out


def requirement_correlations(data_dir: str, split: str = "test",
                             **options: Any) -> tuple[tuple[str, ...], np.ndarray]:
  """SRCC between every pair of requirements over the same records of a built split.

  options: the build options (as for `prepare`) naming which config under data_dir to read.
  Returns (requirement names [R], SRCC matrix [R, R]); signs as measured (a DMOS-like requirement
  against a MOS-like one is negative when they agree).
  """
  builder = Builder(data_dir=data_dir, **options)
  if not builder.is_prepared():
    raise FileNotFoundError(f"synthetic_iqa ({builder.builder_config.name}) is not built under "
                            f"{data_dir!r}; run prepare() or `promptiqa-jax prepare synthetic_iqa` "
                            "first")
  # The normalised scores, as training and evaluation see them (clipping included).
  scores = split_arrays(builder, split)["scores"]
  matrix = stats.spearmanr(scores).statistic
  return tuple(r.name for r in REQUIREMENTS), np.asarray(matrix)


def correlation_table(names: Sequence[str], matrix: np.ndarray) -> str:
  """The SRCC matrix as a markdown table."""
  lines = ["| | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
  for name, row in zip(names, matrix):
    lines.append(f"| {name} | " + " | ".join(f"{v:+.2f}" for v in row) + " |")
  return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> None:
  """Command line: build (if needed), then print the requirement SRCC table of one split."""
  parser = argparse.ArgumentParser(description="Build synthetic_iqa (if needed) and print the SRCC "
                                               "between its requirements as a markdown table.")
  parser.add_argument("--data-dir", required=True)
  parser.add_argument("--split", default="test")
  parser.add_argument("--image-size", type=int, default=64)
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args(argv)
  prepare(args.data_dir, image_size=args.image_size, seed=args.seed)
  names, matrix = requirement_correlations(args.data_dir, args.split, image_size=args.image_size,
                                           seed=args.seed)
  print(correlation_table(names, matrix))


if __name__ == "__main__":
  main()
