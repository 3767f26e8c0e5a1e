"""synthetic_iqa: an offline IQA benchmark with many assessment requirements over the same images.

Pristine content is the natural photographs and textures that ship inside installed packages
(scikit-image's bundled data, matplotlib's sample photo), plus optionally a folder of the user's own
images. Each content gives `crops_per_content` random square crops, resized to `image_size`; each
crop gives `distorted_per_crop` distorted versions carrying one to three of the eight DISTORTIONS at
random levels 1..5 (records never hold the pristine crop itself). Every record is scored under all
REQUIREMENTS at once: full-reference measures against its pristine crop (PSNR, SSIM, MS-SSIM,
CIEDE2000, GMSD) and rules on the distortions (rules.py: weighted ones, where one distortion family
matters most, and three of other forms, held out as "out of family"). Normalised
scores keep the requirement's direction, as the reference keeps DMOS datasets lower-is-better.

The requirements and the random family training draws from are declared in `requirements.TABLE`
(the dataset's RequirementTable, also `Builder.REQUIREMENTS`); held-out ones are for evaluation
only.

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
the SRCC between every pair of requirements as a markdown table (`analysis.py`).
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
from typing import Any, Iterator, Sequence

import cv2
import numpy as np
import tensorflow_datasets as tfds

from promptiqa_jax.data.datasets.synthetic_iqa import distortions
from promptiqa_jax.data.datasets.synthetic_iqa import pristine
from promptiqa_jax.data.datasets.synthetic_iqa.distortions import DISTORTIONS
from promptiqa_jax.data.datasets.synthetic_iqa.requirements import REQUIREMENTS, TABLE
from promptiqa_jax.data.datasets.synthetic_iqa.scoring import score_records


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
  user_image_dir: str | None = None
  contents: tuple[str, ...] | None = None

  def options(self) -> dict[str, Any]:
    """The build options, as `make_config` and `prepare` take them."""
    return dict(image_size=self.image_size, crops_per_content=self.crops_per_content,
                distorted_per_crop=self.distorted_per_crop, seed=self.seed,
                user_image_dir=self.user_image_dir, contents=self.contents)


def make_config(image_size: int = 64, crops_per_content: int = 6, distorted_per_crop: int = 24,
                seed: int = 0, user_image_dir: str | None = None,
                contents: Sequence[str] | None = None) -> SyntheticIqaConfig:
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
    known = {s.name for s in pristine.PRISTINE}
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


def record_name(content: str, crop: int, index: int, levels: np.ndarray) -> str:
  """E.g. "astronaut_crop2_07_blur3_noise1": content, crop, version within the crop, distortions."""
  parts = [f"{t}{int(l)}" for t, l in zip(DISTORTIONS, levels) if l > 0]
  return "_".join([content, f"crop{crop}", f"{index:02d}"] + parts)


def _encode_png(image: np.ndarray) -> bytes:
  ok, data = cv2.imencode(".png", np.ascontiguousarray(image[..., ::-1]))
  if not ok:
    raise RuntimeError("OpenCV failed to PNG-encode a record image")
  return data.tobytes()


def generate_content(content: pristine.Content,
                     config: SyntheticIqaConfig) -> Iterator[dict[str, Any]]:
  """The records of one content as numpy: image uint8 `[S, S, 3]`, levels `[T]`, scores `[R]`, ..."""
  size, seed = config.image_size, config.seed
  for crop_index in range(config.crops_per_content):
    crop_rng = np.random.default_rng(
        [seed, pristine.CROP_STREAM, content.content_id, crop_index, 0])
    reference = pristine.crop(content.image, size, crop_rng)
    levels, severities, distorted = [], [], []
    for index in range(config.distorted_per_crop):
      rng = np.random.default_rng(
          [seed, pristine.RECORD_STREAM, content.content_id, crop_index, index])
      record_levels = distortions.sample_levels(rng, content.colour)
      record_severities = distortions.jitter(record_levels, rng)
      levels.append(record_levels)
      severities.append(record_severities)
      distorted.append(distortions.apply(reference, record_severities, rng))
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
  REQUIREMENTS = TABLE
  VERSION = tfds.core.Version("1.2.0")
  RELEASE_NOTES = {"1.0.0": "First release.",
                   "1.1.0": "Three held-out requirements outside the random family's span.",
                   "1.2.0": "Six procedural contents (training split only)."}
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
    config = self.builder_config
    loaded = pristine.load_contents(config.contents, config.user_image_dir, config.seed)
    splits = pristine.assign_splits(loaded, [c.colour for c in loaded], config.seed,
                                    [c.train_only for c in loaded])
    return {split: self._generate_examples(members) for split, members in splits.items()}

  def _generate_examples(
      self, members: Sequence[pristine.Content]) -> Iterator[tuple[str, dict[str, Any]]]:
    for content in members:
      for record in generate_content(content, self.builder_config):
        # The PNG is encoded here: TFDS would need TensorFlow to encode an array.
        yield record["name"], dict(record, image=_encode_png(record["image"]))


def prepare(data_dir: str, manual_dir: str | None = None, image_size: int = 64, seed: int = 0,
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
