"""The scoring API (`promptiqa_jax.inference.PromptIQA`) on the tiny random model.

Every call here uses prompts of 3 pairs and the fixture's batch size, so the model's functions
compile once in the session (`group_forward` once more).
"""
import os

import jax
import numpy as np
import pytest
from PIL import Image

from promptiqa_jax import Prompt
from promptiqa_jax.data import preprocess
from promptiqa_jax.inference import PromptIQA

PROMPT_SCORES = [0.2, 0.5, 0.9]


def _images(seed: int, count: int, height: int = 40, width: int = 48) -> np.ndarray:
  """uint8 `[count, height, width, 3]`: smooth random images (not square, so they get resized)."""
  rng = np.random.default_rng(seed)
  coarse = rng.uniform(0, 255, (count, height // 8, width // 8, 3))
  fine = np.kron(coarse, np.ones((1, 8, 8, 1))) + rng.normal(0, 12, (count, height, width, 3))
  return np.clip(fine, 0, 255).astype(np.uint8)


def _save(images: np.ndarray, directory, prefix: str) -> list[str]:
  paths = [str(directory / f"{prefix}{index}.png") for index in range(len(images))]
  for image, path in zip(images, paths):
    Image.fromarray(image).save(path)
  return paths


@pytest.fixture(scope="module")
def prompt_images() -> np.ndarray:
  return _images(0, len(PROMPT_SCORES))


@pytest.fixture(scope="module")
def queries() -> np.ndarray:
  return _images(1, 5)


@pytest.fixture(scope="module")
def prompt(tiny_model, prompt_images) -> Prompt:
  return tiny_model.encode_prompt(prompt_images, PROMPT_SCORES)


def test_paths_uint8_and_float_inputs_agree(tiny_model, prompt_images, queries, tmp_path):
  size = tiny_model.config.image_size
  forms = {
      "paths": (_save(prompt_images, tmp_path, "p"), _save(queries, tmp_path, "q")),
      "uint8": (prompt_images, queries),
      "float32": tuple(np.stack([preprocess.preprocess(i, size) for i in images])
                       for images in (prompt_images, queries)),
  }
  results = {}
  for name, (prompt_input, query_input) in forms.items():
    encoded = tiny_model.encode_prompt(prompt_input, PROMPT_SCORES)
    results[name] = (encoded.fused, tiny_model.score(query_input, encoded))
  for name in ("paths", "float32"):
    np.testing.assert_array_equal(results[name][0], results["uint8"][0], err_msg=name)
    np.testing.assert_array_equal(results[name][1], results["uint8"][1], err_msg=name)
  scores = results["uint8"][1]
  assert scores.shape == (len(queries),) and scores.dtype == np.float32
  assert np.all((scores >= 0) & (scores <= 1))


def test_encoded_prompt(tiny_model, prompt):
  width = tiny_model.config.prompt_width
  assert len(prompt) == 3
  assert prompt.vectors.shape == prompt.fused.shape == (3, width)
  np.testing.assert_array_equal(prompt.scores, np.float32(PROMPT_SCORES))
  assert prompt.scores.dtype == np.float32


def test_prompt_is_encoded_once_and_reused(tiny_model, prompt_images, queries, tmp_path):
  paths = _save(prompt_images, tmp_path, "p")
  encoded = tiny_model.encode_prompt(paths, PROMPT_SCORES)
  for path in paths:
    os.remove(path)  # scoring must not need the prompt's images again
  first = tiny_model.score(queries, encoded)
  np.testing.assert_array_equal(tiny_model.score(queries, encoded), first)
  # A query's score does not depend on the other queries of its batch.
  for index in range(len(queries)):
    alone = tiny_model.score(queries[index:index + 1], encoded)
    np.testing.assert_allclose(alone, first[index:index + 1], rtol=0, atol=1e-6)
  # The prompt is really used: other scores for the same images give other predictions.
  flipped = tiny_model.encode_prompt(prompt_images, [1 - s for s in PROMPT_SCORES])
  assert np.abs(tiny_model.score(queries, flipped) - first).max() > 1e-6


def test_image_features(tiny_model, queries):
  features = tiny_model.image_features(queries)
  assert features.shape == (len(queries), tiny_model.config.prompt_width)
  assert np.all(np.isfinite(features))


def test_scoring_nothing(tiny_model, prompt):
  size = tiny_model.config.image_size
  assert tiny_model.score([], prompt).shape == (0,)
  assert tiny_model.score(np.zeros((0, 40, 48, 3), np.uint8), prompt).shape == (0,)
  assert tiny_model.score(np.zeros((0, size, size, 3), np.float32), prompt).shape == (0,)


@pytest.mark.parametrize("images,error,message", [
    (np.zeros((2, 40, 48, 3), np.float32), ValueError, r"float images must be \[N, 32, 32, 3\]"),
    (np.zeros((2, 32, 32), np.float32), ValueError, r"must be \[N, H, W, 3\], got shape \(2, 32,"),
    (np.zeros((2, 32, 32, 4), np.uint8), ValueError, r"must be \[N, H, W, 3\]"),
    (np.zeros((2, 32, 32, 3), np.int64), ValueError, "must be uint8 .* or float .*, got int64"),
    ("query.png", TypeError, "a list of image paths, not a single path"),
], ids=["float_wrong_size", "no_channels", "four_channels", "int64", "single_path"])
def test_bad_image_arrays(tiny_model, prompt, images, error, message):
  with pytest.raises(error, match=message):
    tiny_model.score(images, prompt)


def test_unreadable_paths_name_the_file(tiny_model, prompt, tmp_path):
  for path in (str(tmp_path), str(tmp_path / "absent.png")):
    with pytest.raises(preprocess.ImageError, match=f"^{path}: cannot read file"):
      tiny_model.score([path], prompt)


@pytest.mark.parametrize("scores,message", [
    ([0.1, 0.5], "3 prompt images but 2 scores"),
    ([0.1, 0.5, 0.7, 0.9], "3 prompt images but 4 scores"),
    ([0.1, float("nan"), 0.9], r"prompt entry 1: score nan is not a number in \[0, 1\]"),
    ([0.1, 0.5, float("inf")], r"prompt entry 2: score inf is not a number in \[0, 1\]"),
    ([-0.1, 0.5, 0.9], r"prompt entry 0: score -0.1 is not a number in \[0, 1\]"),
    ([0.1, 1.5, 0.9], r"prompt entry 1: score 1.5 is not a number in \[0, 1\]"),
])
def test_encode_prompt_refuses_bad_scores_before_any_compute(tiny_model, monkeypatch, tmp_path,
                                                            scores, message):
  def no_compute(*args):
    raise AssertionError("computed features for a refused prompt")

  monkeypatch.setattr(tiny_model, "image_features", no_compute)
  # Paths that do not exist: reading them would fail with another error.
  paths = [str(tmp_path / f"absent{i}.png") for i in range(3)]
  with pytest.raises(ValueError, match=message):
    tiny_model.encode_prompt(paths, scores)


def test_encode_prompt_needs_a_pair_and_takes_one(tiny_model, tmp_path):
  with pytest.raises(ValueError, match="at least 1 image-score pair, got none"):
    tiny_model.encode_prompt([], [])
  size = tiny_model.config.image_size
  image = np.zeros((1, size, size, 3), np.float32)
  prompt = tiny_model.encode_prompt(image, [0.5])
  assert prompt.vectors.shape[0] == 1 and tiny_model.score(image, prompt).shape == (1,)


def test_group_forward_is_leave_one_out_scoring(tiny_model):
  groups = _images(2, 8).reshape(2, 4, 40, 48, 3)
  scores = np.array([[0.1, 0.4, 0.6, 0.9], [0.8, 0.2, 0.5, 0.3]], np.float32)
  predicted = tiny_model.group_forward(groups, scores)
  assert predicted.shape == (2, 4)
  # Each image scored with the other three pairs of its group as the prompt.
  for g in range(2):
    for i in range(4):
      others = [j for j in range(4) if j != i]
      encoded = tiny_model.encode_prompt(groups[g, others], scores[g, others])
      np.testing.assert_allclose(predicted[g, i], tiny_model.score(groups[g, i:i + 1], encoded)[0],
                                 rtol=0, atol=1e-5, err_msg=f"group {g}, image {i}")


@pytest.mark.parametrize("images_shape,scores_shape", [
    ((8, 40, 48, 3), (2, 4)),
    ((2, 4, 40, 48, 3), (2, 3)),
    ((2, 4, 40, 48, 3), (8,)),
])
def test_group_forward_shape_errors(tiny_model, images_shape, scores_shape):
  with pytest.raises(ValueError, match=r"images \[g, G, H, W, 3\] and scores \[g, G\]"):
    tiny_model.group_forward(np.zeros(images_shape, np.uint8), np.zeros(scores_shape, np.float32))


def test_bfloat16_scoring(tiny_model_dir, tiny_model, prompt, prompt_images, queries):
  model = PromptIQA.from_checkpoint(tiny_model_dir, batch_size=tiny_model.batch_size,
                                    dtype="bfloat16")
  assert model.config.dtype == "bfloat16" and tiny_model.config.dtype == "float32"
  # Parameters stay float32; only the computation is bfloat16.
  dtypes = {leaf.dtype for leaf in jax.tree_util.tree_leaves(model.variables)}
  assert dtypes == {np.dtype("float32")}
  encoded = model.encode_prompt(prompt_images, PROMPT_SCORES)
  assert encoded.vectors.dtype == encoded.fused.dtype == np.float32
  scores = model.score(queries, encoded)
  difference = np.abs(scores - tiny_model.score(queries, prompt))
  assert scores.dtype == np.float32 and 0 < difference.max() < 0.02, difference


def test_unknown_dtype(tiny_model):
  with pytest.raises(ValueError, match="dtype must be 'float32', 'bfloat16' or 'float64'"):
    PromptIQA(tiny_model.variables, tiny_model.config, dtype="float16")


def test_batches_are_split_over_the_devices(tiny_model):
  assert tiny_model.devices == jax.local_devices()
  assert tiny_model.batch_sharding.num_devices == len(jax.local_devices())
  assert tiny_model.batch_size % len(jax.local_devices()) == 0
