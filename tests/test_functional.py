"""The pure scoring functions (`promptiqa_jax.functional`): the API's scores under jit, vmap over
prompts and over image batches, and gradients with respect to the images."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from promptiqa_jax import functional
from promptiqa_jax.data import preprocess
from promptiqa_jax.inference import PromptIQA

PROMPT_SCORES = np.array([0.2, 0.5, 0.9], np.float32)


@pytest.fixture(scope="module")
def images(tiny_model) -> np.ndarray:
  """float32 `[8, S, S, 3]` model input: 3 prompt images, then 5 queries."""
  rng = np.random.default_rng(0)
  size = tiny_model.config.image_size
  raw = rng.integers(0, 256, (8, 40, 48, 3), dtype=np.uint8)
  return np.stack([preprocess.preprocess(image, size) for image in raw])


def test_jitted_scorer_gives_the_apis_scores(tiny_model, images):
  prompt = tiny_model.encode_prompt(images[:3], PROMPT_SCORES)
  score = jax.jit(functional.scorer(tiny_model.config))
  queries = images[3:6]  # the API's batch size, so both run the same shapes
  np.testing.assert_array_equal(score(tiny_model.variables, prompt.fused, queries),
                                tiny_model.score(queries, prompt))
  fused = jax.jit(functional.prompt_encoder(tiny_model.config))(
      tiny_model.variables, images[:3], PROMPT_SCORES)
  np.testing.assert_allclose(fused, prompt.fused, rtol=0, atol=1e-6)


def test_vmap_over_prompts_and_over_image_batches(tiny_model, images):
  score = jax.jit(functional.scorer(tiny_model.config))
  encode = jax.jit(functional.prompt_encoder(tiny_model.config))
  variables = tiny_model.variables
  prompts = jnp.stack([encode(variables, images[:3], PROMPT_SCORES),
                       encode(variables, images[:3], 1 - PROMPT_SCORES)])
  by_prompt = jax.jit(jax.vmap(score, in_axes=(None, 0, None)))(variables, prompts, images[3:])
  assert by_prompt.shape == (2, 5)
  for index in range(2):
    np.testing.assert_allclose(by_prompt[index], score(variables, prompts[index], images[3:]),
                               rtol=0, atol=1e-6)
  assert np.abs(by_prompt[0] - by_prompt[1]).max() > 1e-6  # the two prompts differ
  batches = images[4:8].reshape(2, 2, *images.shape[1:])
  by_batch = jax.jit(jax.vmap(score, in_axes=(None, None, 0)))(variables, prompts[0], batches)
  np.testing.assert_allclose(by_batch.reshape(-1), score(variables, prompts[0], images[4:8]),
                             rtol=0, atol=1e-6)


def test_gradient_with_respect_to_the_images(tiny_model_dir, images):
  """A quality loss: d(mean score)/d(images), checked against central differences in float64."""
  with jax.enable_x64(True):
    model = PromptIQA.from_checkpoint(tiny_model_dir, dtype="float64")
    variables = jax.tree_util.tree_map(lambda leaf: jnp.asarray(leaf, jnp.float64),
                                       jax.device_get(model.variables))
    score = functional.scorer(model.config)
    fused = jax.jit(functional.prompt_encoder(model.config))(
        variables, images[:3].astype(np.float64), PROMPT_SCORES.astype(np.float64))
    queries = images[3:5].astype(np.float64)
    loss = jax.jit(lambda x: jnp.mean(score(variables, fused, x)))
    gradient = np.asarray(jax.jit(jax.grad(lambda x: jnp.mean(score(variables, fused, x))))(
        queries))
    assert gradient.shape == queries.shape and np.all(np.isfinite(gradient))
    assert np.abs(gradient).max() > 0
    direction = np.random.default_rng(1).normal(size=queries.shape)
    step = 1e-5
    numeric = (loss(queries + step * direction) - loss(queries - step * direction)) / (2 * step)
    np.testing.assert_allclose(np.sum(gradient * direction), numeric, rtol=1e-6)
