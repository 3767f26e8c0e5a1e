"""Tiny TFDS builders for the input-pipeline tests, built into a temporary folder.

FakeIqaA, FakeIqaB: the real IQA datasets' schema (image, name, score, score_raw, unit) with 16x16
PNGs; A's scores lie in [0.05, 0.40], B's in [0.60, 0.95], so a group's scores tell its dataset.
FakeIqaSmall: 3 training records (fewer than a group). FakeIqaCorrupt: one undecodable image.
FakeMulti: the synthetic benchmark's schema (levels, scores per requirement), declaring its
RequirementTable as `REQUIREMENTS`, as a multi-requirement builder does (promptiqa_jax.data.requirements).
"""
from __future__ import annotations

import collections
import io
from typing import Any

import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from promptiqa_jax.data import datasets
from promptiqa_jax.data.requirements import Requirement, RequirementTable

SIZE = 16


def _png(rng: np.random.Generator) -> bytes:
  image = rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
  buf = io.BytesIO()
  Image.fromarray(image).save(buf, format="PNG")
  return buf.getvalue()


class _FakeBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  VERSION = tfds.core.Version("1.0.0")
  SPLITS = {"train": 26, "test": 7, "validation": 5}
  SCORE_RANGE = (0.05, 0.40)
  CORRUPT = ()  # (split, index) of records whose image bytes are not an image

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        "image": tfds.features.Image(encoding_format="png"),
        "name": tfds.features.Text(),
        "score": tfds.features.Scalar(np.float32),
        "score_raw": tfds.features.Scalar(np.float32),
        "unit": tfds.features.Scalar(np.int64),
    }))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {split: self._generate_examples(split, n) for split, n in self.SPLITS.items()}

  def _generate_examples(self, split, n):
    rng = np.random.default_rng(len(split) * 1000 + n)
    low, high = self.SCORE_RANGE
    for i in range(n):
      score = low + (high - low) * i / max(n - 1, 1)
      image = b"not an image" if (split, i) in self.CORRUPT else _png(rng)
      yield f"{split}_{i}", {"image": image, "name": f"{self.name}_{split}_{i}.png",
                             "score": score, "score_raw": 100 * score, "unit": i}


class FakeIqaA(_FakeBuilder, skip_registration=True):
  pass


class FakeIqaB(_FakeBuilder, skip_registration=True):
  SPLITS = {"train": 18, "test": 6}
  SCORE_RANGE = (0.60, 0.95)


class FakeIqaSmall(_FakeBuilder, skip_registration=True):
  SPLITS = {"train": 3, "test": 2}


class FakeIqaCorrupt(_FakeBuilder, skip_registration=True):
  SPLITS = {"train": 8, "test": 2}
  CORRUPT = (("train", 5),)


def _requirement(name: str, lower_better: bool, heldout: bool) -> Requirement:
  return Requirement(name, "rule", lower_better, heldout, name, (0.0, 1.0))


REQUIREMENTS = (_requirement("sharp", False, False), _requirement("bright", False, False),
                _requirement("combo", True, True))
NUM_TYPES = 2


def requirement_scores(levels: np.ndarray) -> np.ndarray:
  """levels [..., T] in 0..5 -> normalised scores [..., R] in REQUIREMENTS order."""
  levels = np.asarray(levels, np.float32) / 5.0
  return np.stack([1 - levels[..., 0], 1 - levels[..., 1], levels.mean(-1)], axis=-1)


def random_requirement_scores(levels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """One non-held-out requirement drawn for the whole group: levels [G, T] -> scores [G]."""
  train = [i for i, r in enumerate(REQUIREMENTS) if not r.heldout]
  return requirement_scores(levels)[:, train[rng.integers(len(train))]]


class FakeMulti(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  VERSION = tfds.core.Version("1.0.0")
  REQUIREMENTS = RequirementTable("fake_multi", REQUIREMENTS, random_requirement_scores)

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        "image": tfds.features.Image(encoding_format="png"),
        "name": tfds.features.Text(),
        "content_id": tfds.features.Scalar(np.int64),
        "levels": tfds.features.Tensor(shape=(NUM_TYPES,), dtype=np.int32),
        "scores": tfds.features.Tensor(shape=(len(REQUIREMENTS),), dtype=np.float32),
        "scores_raw": tfds.features.Tensor(shape=(len(REQUIREMENTS),), dtype=np.float32),
    }))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {"train": self._generate_examples("train", 20),
            "test": self._generate_examples("test", 6)}

  def _generate_examples(self, split, n):
    rng = np.random.default_rng(n)
    for i in range(n):
      levels = rng.integers(0, 6, NUM_TYPES).astype(np.int32)
      scores = requirement_scores(levels)
      yield f"{split}_{i}", {"image": _png(rng), "name": f"multi_{split}_{i}.png",
                             "content_id": i // 4, "levels": levels, "scores": scores,
                             "scores_raw": 5 * scores}


BUILDERS = (FakeIqaA, FakeIqaB, FakeIqaSmall, FakeIqaCorrupt, FakeMulti)


def build_all(data_dir: str) -> None:
  """Builds every fake dataset into `data_dir` (ArrayRecord, no TensorFlow needed)."""
  for cls in BUILDERS:
    cls(data_dir=data_dir).download_and_prepare(file_format="array_record")


def register_all() -> None:
  for cls in BUILDERS:
    datasets.register_builder(cls)


def data_config(data_dir: str, **overrides: Any) -> ml_collections.ConfigDict:
  """A config.data section over the fake datasets: G = 4, 2 groups per batch, 12x12 inputs."""
  config = ml_collections.ConfigDict(dict(
      data_dir=data_dir, train=["fake_iqa_a", "fake_iqa_b"], train_split="train",
      eval=["fake_iqa_a", "fake_iqa_b"], eval_split="test", weights=None, group_size=4,
      groups_per_batch=2, image_size=12, scale_rate=0.5, flip_rate=0.1, flip="vertical", seed=0,
      num_workers=0, read_threads=1, prompt_size=5, prompt_sampling="interval", eval_batch_size=3))
  config.update(overrides)
  return config


@pytest.fixture(scope="session")
def fake_data_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
  """A data_dir with every fake dataset built and their builders registered."""
  path = str(tmp_path_factory.mktemp("tfds"))
  build_all(path)
  register_all()
  return path


class OracleModel:
  """A FeatureModel with known behaviour, counting the images it featurises: its image features
  are fake_multi's records' levels, and it reads a prompt as the least-squares affine map from
  features to the prompt's scores (fake_multi's requirements are affine in the levels)."""

  def __init__(self, levels_by_image: dict[bytes, np.ndarray]):
    self._levels = levels_by_image
    self.featurised: collections.Counter = collections.Counter()

  def image_features(self, images):
    keys = [np.asarray(image, np.float32).tobytes() for image in images]
    # Evaluation batches are padded with blank images; only record images are counted.
    self.featurised.update(k for k in keys if k in self._levels)
    return np.stack([self._levels.get(k, np.zeros(2)) for k in keys]).astype(np.float32)

  def encode_prompt_features(self, features, scores):
    design = np.c_[features, np.ones(len(features))]
    return np.linalg.lstsq(design, np.asarray(scores, np.float64), rcond=None)[0]

  def score_features(self, features, prompt):
    # Rounded so that equal truths (levels are integers) give equal predictions, not a tie broken
    # by float error.
    return np.round(np.c_[features, np.ones(len(features))] @ prompt, 5)


@pytest.fixture(scope="module")
def levels_by_image(fake_data_dir):
  """fake_multi's records' levels [T] by their preprocessed image's bytes (train and test)."""
  from promptiqa_jax.data import sources

  size = data_config(fake_data_dir).image_size
  table = {}
  for split in ("train", "test"):
    source = sources.open_dataset("fake_multi", split, fake_data_dir)
    for index, record in enumerate(source.read(range(len(source)))):
      image = sources.load_image(source, record, index, size)
      table[image.tobytes()] = np.asarray(record["levels"], np.float32)
  assert len(table) == 26  # every image distinct
  return table
