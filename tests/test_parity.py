"""Parity of the Flax model with the independent PyTorch implementation of the reference.

Every tensor of the PyTorch model is randomised (LayerNorm/BatchNorm affine and running statistics,
MAL gammas, class token too), saved in the release's checkpoint format and converted, so a wrongly
mapped or transposed weight, or a mis-ordered reshape, shows as a mismatch. Per-submodule tests
name the place of a mismatch; the whole-model tests go through the public API.
"""
import copy
import dataclasses

import jax
import numpy as np
import pytest
import torch

from promptiqa_jax.inference import PromptIQA
from promptiqa_jax.interop import torch_model
from promptiqa_jax.interop.convert import load_torch_checkpoint, torch_to_flax
from promptiqa_jax.models.config import ModelConfig
from promptiqa_jax.models.promptiqa import PromptIQANet

ATOL = 1e-5


def nchw(images: np.ndarray) -> torch.Tensor:
  return torch.from_numpy(np.ascontiguousarray(np.moveaxis(images, -1, -3)))


def tokens(maps: torch.Tensor) -> np.ndarray:
  """[B, C, g, g] torch map -> [B, g*g, C] token layout of the Flax side."""
  return maps.flatten(2).transpose(1, 2).numpy()


def assert_close(actual, expected, where: str, atol: float = ATOL):
  actual, expected = np.asarray(actual), np.asarray(expected)
  assert actual.shape == expected.shape, f"{where}: shape {actual.shape} != {expected.shape}"
  error = np.abs(actual - expected).max()
  print(f"{where}: max abs error {error:.3g} (tolerance {atol:.3g})")  # shown with pytest -s
  assert error <= atol, f"{where}: max abs error {error:.3g} > {atol}"


def release_pair(config: ModelConfig, path, seed: int = 0, gain: float = 1.0):
  """A randomised torch model, saved as a release checkpoint, and the converted Flax variables."""
  reference = torch_model.randomize_(torch_model.TorchPromptIQA(config), seed, gain).eval()
  torch_model.save_release_checkpoint(reference, path)
  state, meta = load_torch_checkpoint(path)
  assert meta == {"prompt_num": 10}
  return reference, torch_to_flax(state, config)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  torch.set_num_threads(1)
  config = ModelConfig.tiny()
  path = tmp_path_factory.mktemp("tiny") / "best_model.pth.tar"
  reference, variables = release_pair(config, path)
  bound = PromptIQANet(config).bind(variables)
  return config, reference, variables, bound, path


@pytest.fixture(scope="module")
def inputs():
  rng = np.random.default_rng(1)
  return {
      "images": rng.uniform(-1, 1, (2, 4, 32, 32, 3)).astype(np.float32),
      "scores": rng.uniform(0, 1, (2, 4)).astype(np.float32),
  }


def test_backbone_taps(tiny, inputs):
  _, reference, _, bound, _ = tiny
  images = inputs["images"][0]
  with torch.no_grad():
    expected = reference.backbone_taps(nchw(images))
  actual = bound.vit(images)
  assert len(actual) == len(expected) == 4
  for index, (a, e) in enumerate(zip(actual, expected)):
    assert_close(a, e.numpy(), f"ViT tap {index}")


@pytest.mark.parametrize("index", [0, 1, 2])
def test_each_mal(tiny, index):
  config, reference, _, bound, _ = tiny
  generator = torch.Generator().manual_seed(index)
  maps = [torch.randn(2, config.vit_width, config.grid, config.grid, generator=generator)
          for _ in config.taps]
  with torch.no_grad():
    expected = reference.MALs[index](maps)  # [B, C, L]
  actual = bound.mals[index]([tokens(m) for m in maps], train=False)
  assert_close(actual, expected.transpose(1, 2).numpy(), f"MALs.{index}")


def test_fusion_mal_and_block(tiny):
  config, reference, _, bound, _ = tiny
  generator = torch.Generator().manual_seed(7)
  maps = [torch.randn(2, config.vit_width, config.grid, config.grid, generator=generator)
          for _ in range(config.num_mals)]
  with torch.no_grad():
    expected = reference.fuse_maps(maps)
  actual = bound.block(bound.fusion_mal([tokens(m) for m in maps], train=False))
  assert_close(actual, tokens(expected), "fusion_mal + block")


def test_cnn_head(tiny):
  config, reference, _, bound, _ = tiny
  maps = torch.randn(3, config.vit_width, config.grid, config.grid,
                     generator=torch.Generator().manual_seed(3))
  with torch.no_grad():
    expected = reference.head_features(maps)
  actual = bound.cnn(np.moveaxis(maps.numpy(), 1, -1), train=False)
  assert_close(actual, expected.numpy(), "cnn head (eval, running statistics)")


def test_prompt_encoder_fusion_and_query_blocks(tiny):
  config, reference, _, bound, _ = tiny
  rng = np.random.default_rng(4)
  features = rng.normal(size=(5, config.prompt_width)).astype(np.float32)
  scores = rng.uniform(size=5).astype(np.float32)
  with torch.no_grad():
    vectors = reference.prompt_vectors(torch.from_numpy(features), torch.from_numpy(scores))
    fused = reference.fuse_prompt(vectors)
    quality = reference.score_with_fused(torch.from_numpy(features[:2]), fused)
  assert_close(bound.prompt_vectors(features, scores), vectors.numpy(), "i_p_fusion + mlp")
  assert_close(bound.fuse_prompt(vectors.numpy()), fused.numpy(), "prompt_fusion")
  assert_close(bound.score_with_fused(features[:2], fused.numpy()), quality.numpy(),
               "blocks + norm + score_block")


def reference_prompt_vectors(reference, images, scores) -> torch.Tensor:
  """PyTorch prompt vectors of group 0, in the reference's dtype."""
  dtype = next(reference.parameters()).dtype
  with torch.no_grad():
    features = reference.image_features(nchw(images[0]).to(dtype))
    return reference.prompt_vectors(features, torch.from_numpy(scores[0]).to(dtype))


def reference_outputs(reference, images, scores, group_forward=True):
  """PyTorch prompt vectors (of group 0), scores of group 1 with that prompt, training-form forward."""
  dtype = next(reference.parameters()).dtype
  as_torch = lambda array: torch.from_numpy(array).to(dtype)
  vectors = reference_prompt_vectors(reference, images, scores)
  with torch.no_grad():
    query_features = reference.image_features(nchw(images[1]).to(dtype))
    quality = reference.score_with_fused(query_features, reference.fuse_prompt(vectors))
    outputs = {"prompt vectors": vectors.numpy(), "scores": quality.numpy()}
    if group_forward:
      outputs["training-form forward"] = reference(nchw(images).to(dtype), as_torch(scores)).numpy()
  return outputs


def api_outputs(model: PromptIQA, images, scores, group_forward=True):
  """The same quantities through the public API, the prompt encoded once and cached."""
  prompt = model.encode_prompt(images[0], scores[0])
  outputs = {"prompt vectors": prompt.vectors, "scores": model.score(images[1], prompt)}
  if group_forward:
    outputs["training-form forward"] = model.group_forward(images, scores)
  return outputs


def compare_api(model: PromptIQA, reference, images, scores, atol=ATOL):
  expected = reference_outputs(reference, images, scores)
  for where, actual in api_outputs(model, images, scores).items():
    assert_close(actual, expected[where], where, atol)


def float64_pair(config: ModelConfig, reference, variables, **kwargs):
  """The float64 PyTorch model (same weights) and a float64 Flax model; use under jax.enable_x64."""
  return (copy.deepcopy(reference).double(),
          PromptIQA(variables, dataclasses.replace(config, dtype="float64"), **kwargs))


def test_whole_model_tiny(tiny, inputs):
  config, reference, _, _, path = tiny
  model = PromptIQA.from_torch(path, config, batch_size=3)
  compare_api(model, reference, inputs["images"], inputs["scores"])


def test_whole_model_tiny_float64(tiny, inputs):
  """In float64 both implementations compute the same function to rounding: no float32 noise
  can hide a small mismatch (a wrong epsilon, an approximate GELU, a mis-ordered reduction)."""
  config, reference, variables, _, _ = tiny
  reference64, model64 = float64_pair(config, reference, variables, batch_size=3)
  with jax.enable_x64(True):
    compare_api(model64, reference64, inputs["images"], inputs["scores"], atol=1e-12)


def test_float64_needs_x64(tiny, inputs):
  config, _, variables, _, _ = tiny
  model = PromptIQA(variables, dataclasses.replace(config, dtype="float64"))
  with pytest.raises(ValueError, match="dtype='float64' needs 64-bit JAX"):
    model.image_features(inputs["images"][1])


def test_linear_score_embedding(tmp_path, inputs):
  config = ModelConfig.tiny(score_embedding="linear")
  reference, variables = release_pair(config, tmp_path / "linear.pth.tar", seed=5)
  compare_api(PromptIQA(variables, config), reference, inputs["images"], inputs["scores"])


@pytest.mark.parametrize("batchnorm", ["per_group", "global"])
def test_train_mode_batchnorm(tmp_path, inputs, batchnorm):
  """Train mode without dropout: batch statistics and PyTorch's running-statistics update.

  "per_group" is the release's way, one group per GPU: PyTorch forwards each group on its own and
  the running statistics are the mean of the groups' updates. "global" is one PyTorch forward over
  both groups.
  """
  config = ModelConfig.tiny(mal_dropout=0.0, score_dropout=0.0, batchnorm=batchnorm)
  reference, variables = release_pair(config, tmp_path / "train.pth.tar", seed=6)
  reference.train()
  images, scores = inputs["images"], inputs["scores"]
  bns = [reference.cnn[4 * stage + 1] for stage in range(len(config.cnn_head))]
  start = [(bn.running_mean.clone(), bn.running_var.clone()) for bn in bns]
  parts = [slice(g, g + 1) for g in range(len(scores))] if batchnorm == "per_group" else [
      slice(None)]
  expected, running = [], []
  with torch.no_grad():
    for part in parts:
      for bn, (mean, var) in zip(bns, start):
        bn.running_mean.copy_(mean)
        bn.running_var.copy_(var)
      expected.append(reference(nchw(images[part]), torch.from_numpy(scores[part])).numpy())
      running.append([(bn.running_mean.numpy().copy(), bn.running_var.numpy().copy())
                      for bn in bns])
  actual, updates = PromptIQANet(config).apply(variables, images, scores, train=True,
                                               mutable=["batch_stats"])
  assert_close(actual, np.concatenate(expected), "train-mode forward")
  for stage, bn in enumerate(bns):
    stats = updates["batch_stats"]["cnn"][f"bn_{stage}"]
    for name, index in (("mean", 0), ("var", 1)):
      want = np.mean([r[stage][index] for r in running], axis=0)
      assert_close(stats[name], want, f"cnn.{4 * stage + 1}.running_{name}")


def test_wrong_checkpoint_lists_keys(tiny):
  config, reference, _, _, _ = tiny
  state = {k: v.numpy() for k, v in reference.state_dict().items()}
  state.pop("norm.weight")
  state["extra.weight"] = np.zeros(3, np.float32)
  state["mlp.0.weight"] = state["mlp.0.weight"][:, :-1]
  with pytest.raises(ValueError) as error:
    torch_to_flax(state, config)
  message = str(error.value)
  assert "missing (1): norm.weight" in message
  assert "unexpected (1): extra.weight" in message
  assert "mis-shaped (1): mlp.0.weight" in message


def test_convert_round_trip(tiny, inputs, tmp_path):
  from promptiqa_jax.cli import main

  config, _, _, _, path = tiny
  out = tmp_path / "converted"
  config_file = tmp_path / "tiny.json"
  config_file.write_text(__import__("json").dumps(config.to_dict()))
  assert main(["convert", "--torch", str(path), "--out", str(out),
               "--model-config", str(config_file)]) == 0
  direct = PromptIQA.from_torch(path, config)
  converted = PromptIQA.from_checkpoint(out)
  assert converted.config == config
  images = inputs["images"][1]
  prompt = direct.encode_prompt(inputs["images"][0], inputs["scores"][0])
  np.testing.assert_array_equal(converted.score(images, prompt), direct.score(images, prompt))


def paper_size_case(tmp_path, gain: float):
  """A randomised full-size (318 M) release, its converted variables, and 2 groups of 2 images."""
  torch.set_num_threads(2)
  config = ModelConfig.paper()
  reference, variables = release_pair(config, tmp_path / "best_model.pth.tar", 11, gain)
  rng = np.random.default_rng(12)
  images = rng.uniform(-1, 1, (2, 2, 224, 224, 3)).astype(np.float32)
  scores = rng.uniform(0, 1, (2, 2)).astype(np.float32)
  return config, reference, variables, images, scores


@pytest.mark.slow
def test_whole_model_paper_size(tmp_path):
  """The reference architecture at full size, through the public API, weights at PyTorch's init spread.

  In float64 the two implementations agree to rounding: they compute the same function (the
  training-form forward in float64 is checked on the tiny config, as float64 costs minutes at this
  size on a CPU). In float32 all three quantities agree within 1e-5 absolute.
  """
  config, reference, variables, images, scores = paper_size_case(tmp_path, gain=3**-0.5)
  compare_api(PromptIQA(variables, config, batch_size=2), reference, images, scores)
  reference64, model64 = float64_pair(config, reference, variables, batch_size=2)
  with jax.enable_x64(True):
    expected = reference_outputs(reference64, images, scores, group_forward=False)
    for where, actual in api_outputs(model64, images, scores, group_forward=False).items():
      assert_close(actual, expected[where], f"{where}, float64", 1e-9)


@pytest.mark.slow
def test_paper_size_hard_attention(tmp_path):
  """Full size with weights at 1/sqrt(fan_in): the MAL spatial-attention logits reach ~100-600.

  There the nearly one-hot softmax amplifies float32 rounding of the image branch: PyTorch float32
  is itself ~2e-5 from float64 on the prompt vectors (magnitude ~4.5) and moves by 1.5e-5 between
  batch sizes 1 and 2, so 1e-5 absolute would measure the weights, not the port. Scores and the
  training-form forward still agree within 1e-5; the prompt vectors are held to no further from
  float64 than 1.5x PyTorch float32's own error, and within 1e-5 relative of PyTorch float32.
  """
  config, reference, variables, images, scores = paper_size_case(tmp_path, gain=1.0)
  expected = reference_outputs(reference, images, scores)
  actual = api_outputs(PromptIQA(variables, config, batch_size=2), images, scores)
  for where in ("scores", "training-form forward"):
    assert_close(actual[where], expected[where], where)
  where = "prompt vectors"
  exact = reference_prompt_vectors(copy.deepcopy(reference).double(), images, scores).numpy()
  torch_error = np.abs(expected[where] - exact).max()
  print(f"{where}: PyTorch float32 vs float64 {torch_error:.3g}")
  assert_close(actual[where], exact, f"{where} vs float64", 1.5 * torch_error)
  assert_close(actual[where], expected[where], where, ATOL * np.abs(expected[where]).max())
