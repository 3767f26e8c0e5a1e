"""Backbone initialisation from pretrained ViT files (AugReg .npz and timm state_dicts).

The AugReg file is written by a hand-made inverse of the loader's layout, and the taps of the Flax
ViT with the loaded weights are checked against a numpy forward that reads the AugReg arrays with
their own semantics (per-head query/key/value kernels), so a layout error shared by the inverse and
the loader still shows. The timm path is checked against the PyTorch oracle's ViT, whose
state_dict has timm's names.
"""
import functools
import logging

import flax
import jax
import numpy as np
import pytest
import torch
from scipy.special import erf

from promptiqa_jax.interop import torch_model
from promptiqa_jax.interop.convert import CheckpointMismatchError
from promptiqa_jax.interop.pretrained import load_vit_backbone, merge_backbone, resize_pos_embed
from promptiqa_jax.models.config import ModelConfig
from promptiqa_jax.models.vit import VisionTransformer

CONFIG = ModelConfig.tiny()  # width 32, depth 4, 2 heads, patch 4, image 32 (grid 8)
ATOL = 1e-5
MHA = "MultiHeadDotProductAttention_1"


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
  # Tiny ops gain nothing from threads, and intra-op threads contend on a shared machine.
  threads = torch.get_num_threads()
  torch.set_num_threads(1)
  yield
  torch.set_num_threads(threads)


def vit_module(config: ModelConfig) -> VisionTransformer:
  return VisionTransformer(config.patch_size, config.vit_width, config.vit_depth, config.vit_heads,
                           config.taps, config.mlp_ratio)


def random_vit_params(config: ModelConfig, seed: int) -> dict:
  """A Flax `params['vit']` tree with every leaf away from its init (numpy float32)."""
  size = config.image_size
  shapes = jax.eval_shape(vit_module(config).init, jax.random.key(0),
                          jax.ShapeDtypeStruct((1, size, size, 3), np.float32))["params"]
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    name, shape = path[-1].key, leaf.shape
    if name == "kernel":
      value = rng.normal(size=shape) / np.sqrt(np.prod(shape[:-1]))
    elif name == "scale":
      value = 1 + 0.1 * rng.normal(size=shape)
    elif name == "bias":
      value = 0.05 * rng.normal(size=shape)
    else:  # cls_token, pos_embed
      value = 0.2 * rng.normal(size=shape)
    return value.astype(np.float32)

  return jax.tree_util.tree_map_with_path(draw, shapes)


def to_augreg(vit: dict, heads: int) -> dict[str, np.ndarray]:
  """Hand-written Flax -> AugReg npz layout, with the final norm and head a real file also has."""
  width = vit["cls_token"].shape[-1]
  head_dim = width // heads
  arrays = {
      "embedding/kernel": vit["patch_embed"]["kernel"],
      "embedding/bias": vit["patch_embed"]["bias"],
      "cls": vit["cls_token"],
      "Transformer/posembed_input/pos_embedding": vit["pos_embed"],
      "Transformer/encoder_norm/scale": np.ones(width, np.float32),
      "Transformer/encoder_norm/bias": np.zeros(width, np.float32),
      "head/kernel": np.ones((width, 10), np.float32),
      "head/bias": np.zeros(10, np.float32),
  }
  depth = sum(name.startswith("blocks_") for name in vit)
  for n in range(depth):
    block, prefix = vit[f"blocks_{n}"], f"Transformer/encoderblock_{n}/"
    kernel = block["attn"]["qkv"]["kernel"].reshape(width, 3, heads, head_dim)
    bias = block["attn"]["qkv"]["bias"].reshape(3, heads, head_dim)
    for index, part in enumerate(("query", "key", "value")):
      arrays[f"{prefix}{MHA}/{part}/kernel"] = kernel[:, index]
      arrays[f"{prefix}{MHA}/{part}/bias"] = bias[index]
    proj = block["attn"]["proj"]["kernel"]
    arrays[f"{prefix}{MHA}/out/kernel"] = proj.reshape(heads, head_dim, width)
    arrays[f"{prefix}{MHA}/out/bias"] = block["attn"]["proj"]["bias"]
    for norm, name in (("norm1", "LayerNorm_0"), ("norm2", "LayerNorm_2")):
      arrays[f"{prefix}{name}/scale"] = block[norm]["scale"]
      arrays[f"{prefix}{name}/bias"] = block[norm]["bias"]
    for fc, name in (("fc1", "Dense_0"), ("fc2", "Dense_1")):
      arrays[f"{prefix}MlpBlock_3/{name}/kernel"] = block["mlp"][fc]["kernel"]
      arrays[f"{prefix}MlpBlock_3/{name}/bias"] = block["mlp"][fc]["bias"]
  return arrays


def augreg_taps(arrays: dict[str, np.ndarray], images: np.ndarray, taps) -> list[np.ndarray]:
  """float64 numpy forward of the AugReg ViT from its npz arrays; `images: [B, H, W, 3]` ->
  `[B, grid*grid, D]` block outputs at `taps`, class token dropped."""
  a = {k: v.astype(np.float64) for k, v in arrays.items()}
  kernel = a["embedding/kernel"]  # [p, p, 3, D]
  p, width = kernel.shape[0], kernel.shape[-1]
  b, h, w, _ = images.shape
  patches = images.astype(np.float64).reshape(b, h // p, p, w // p, p, 3)
  patches = patches.transpose(0, 1, 3, 2, 4, 5)  # [B, gh, gw, p, p, 3]
  x = np.einsum("bhwijc,ijcd->bhwd", patches, kernel).reshape(b, -1, width) + a["embedding/bias"]
  x = np.concatenate([np.broadcast_to(a["cls"], (b, 1, width)), x], 1)
  x = x + a["Transformer/posembed_input/pos_embedding"]

  def norm(x, name):
    centred = x - x.mean(-1, keepdims=True)
    return centred / np.sqrt((centred**2).mean(-1, keepdims=True) + 1e-6) * a[f"{name}/scale"] + a[
        f"{name}/bias"]

  outputs = []
  for n in range(max(taps) + 1):
    block = f"Transformer/encoderblock_{n}/"
    y = norm(x, block + "LayerNorm_0")
    q, k, v = (np.einsum("bld,dhk->blhk", y, a[f"{block}{MHA}/{part}/kernel"])
               + a[f"{block}{MHA}/{part}/bias"] for part in ("query", "key", "value"))
    logits = np.einsum("bqhk,bshk->bhqs", q, k) / np.sqrt(q.shape[-1])
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    heads_out = np.einsum("bhqs,bshk->bqhk", weights, v)
    x = x + np.einsum("bqhk,hkd->bqd", heads_out, a[f"{block}{MHA}/out/kernel"])
    x = x + a[f"{block}{MHA}/out/bias"]
    y = norm(x, block + "LayerNorm_2")
    y = y @ a[f"{block}MlpBlock_3/Dense_0/kernel"] + a[f"{block}MlpBlock_3/Dense_0/bias"]
    y = 0.5 * y * (1 + erf(y / np.sqrt(2)))
    x = x + y @ a[f"{block}MlpBlock_3/Dense_1/kernel"] + a[f"{block}MlpBlock_3/Dense_1/bias"]
    outputs.append(x[:, 1:])
  return [outputs[t] for t in taps]


@functools.cache
def compiled_apply(config: ModelConfig, batch: int):
  """The ViT forward compiled once for the tests that share it: far cheaper than dispatching each
  op eagerly. Without LLVM optimisation it compiles in about half the time (values move ~1e-7)."""
  module = vit_module(config)
  images = jax.ShapeDtypeStruct((batch, config.image_size, config.image_size, 3), np.float32)
  variables = jax.eval_shape(module.init, jax.random.key(0), images)
  return jax.jit(module.apply).lower(variables, images).compile(
      compiler_options={"xla_backend_optimization_level": 0})


def flax_taps(config: ModelConfig, vit: dict, images: np.ndarray) -> list[np.ndarray]:
  return [np.asarray(t) for t in compiled_apply(config, len(images))({"params": vit}, images)]


def assert_trees_equal(actual: dict, expected: dict):
  actual = flax.traverse_util.flatten_dict(actual)
  expected = flax.traverse_util.flatten_dict(expected)
  assert sorted(actual) == sorted(expected)
  for path, value in expected.items():
    assert actual[path].dtype == np.float32, path
    np.testing.assert_array_equal(actual[path], value, err_msg="/".join(path))


def assert_close(actual, expected, where: str):
  error = np.abs(np.asarray(actual) - np.asarray(expected)).max()
  assert error <= ATOL, f"{where}: max abs error {error:.3g} > {ATOL}"


@pytest.fixture(scope="module")
def images():
  return np.random.default_rng(3).uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)


@pytest.fixture(scope="module")
def augreg(tmp_path_factory):
  """(source Flax params, AugReg arrays, npz path) of a depth-6 file: 2 blocks more than CONFIG."""
  vit = random_vit_params(ModelConfig.tiny(vit_depth=6), seed=0)
  arrays = to_augreg(vit, CONFIG.vit_heads)
  path = tmp_path_factory.mktemp("augreg") / "B_8-i21k.npz"
  np.savez(path, **arrays)
  return vit, arrays, path


def test_augreg_roundtrip_is_exact_and_extra_blocks_are_noted(augreg, caplog):
  vit, _, path = augreg
  with caplog.at_level(logging.INFO, logger="promptiqa_jax.interop.pretrained"):
    loaded = load_vit_backbone(path, CONFIG)
  expected = {k: v for k, v in vit.items() if k not in ("blocks_4", "blocks_5")}
  assert_trees_equal(loaded, expected)
  assert "loaded blocks 0-3 of the file's 6" in caplog.text
  assert "blocks 4-5" in caplog.text and "Transformer/encoder_norm/scale" in caplog.text


def test_augreg_taps_match_a_numpy_augreg_forward(augreg, images):
  _, arrays, path = augreg
  actual = flax_taps(CONFIG, load_vit_backbone(path, CONFIG), images)
  expected = augreg_taps(arrays, images, CONFIG.taps)
  for index, (a, e) in enumerate(zip(actual, expected)):
    assert_close(a, e, f"tap {index}")


def test_train_state_prefix(augreg, tmp_path):
  vit, arrays, _ = augreg
  path = tmp_path / "train_state.npz"
  np.savez(path, **{"opt/target/" + k: v for k, v in arrays.items()},
           **{"opt/state/step": np.ones(1)})
  assert_trees_equal(load_vit_backbone(path, CONFIG), load_vit_backbone(augreg[2], CONFIG))


@pytest.fixture(scope="module")
def timm_vit():
  """The oracle's ViT (timm names) with random weights, and its state_dict with timm's extras."""
  reference = torch_model.randomize_(torch_model.VisionTransformer(CONFIG), seed=1).eval()
  state = dict(reference.state_dict())
  width = CONFIG.vit_width
  state.update({"norm.weight": torch.ones(width), "norm.bias": torch.zeros(width),
                "head.weight": torch.zeros(10, width), "head.bias": torch.zeros(10)})
  return reference, state


def test_timm_state_dict_taps_match_the_torch_oracle(timm_vit, images, tmp_path, caplog):
  reference, state = timm_vit
  path = tmp_path / "pytorch_model.bin"
  torch.save(state, path)
  with caplog.at_level(logging.INFO, logger="promptiqa_jax.interop.pretrained"):
    loaded = load_vit_backbone(path, CONFIG)
  assert "head.weight" in caplog.text and "norm.bias" in caplog.text
  with torch.no_grad():
    expected = reference(torch.from_numpy(np.moveaxis(images, -1, 1).copy()))
  for index, (a, e) in enumerate(zip(flax_taps(CONFIG, loaded, images), expected)):
    assert_close(a, e.numpy(), f"tap {index}")


def test_timm_prefixes_and_release_checkpoint(timm_vit, tmp_path):
  _, state = timm_vit
  bare = tmp_path / "bare.pth"
  torch.save(state, bare)
  release = tmp_path / "best_model.pth.tar"
  nested = {f"module.vit.{k}": v for k, v in state.items() if not k.startswith(("norm", "head"))}
  # The release's query blocks are also `blocks.N`; without the `vit.` prefix they are not backbone.
  nested["module.blocks.0.norm1.weight"] = torch.full((16,), 7.0)
  nested["module.cnn.1.num_batches_tracked"] = torch.tensor(3)
  torch.save({"state_dict": nested, "prompt_num": 10}, release)
  assert_trees_equal(load_vit_backbone(release, CONFIG), load_vit_backbone(bare, CONFIG))


def test_safetensors(timm_vit, tmp_path):
  safetensors_numpy = pytest.importorskip("safetensors.numpy")
  _, state = timm_vit
  bare, path = tmp_path / "bare.pth", tmp_path / "model.safetensors"
  torch.save(state, bare)
  safetensors_numpy.save_file({k: v.numpy() for k, v in state.items()}, str(path))
  assert_trees_equal(load_vit_backbone(path, CONFIG), load_vit_backbone(bare, CONFIG))


def test_resize_pos_embed_keeps_the_class_token_and_is_exact_at_identity():
  rng = np.random.default_rng(5)
  pos = rng.normal(size=(1, 1 + 8 * 8, 32)).astype(np.float32)
  np.testing.assert_array_equal(resize_pos_embed(pos, 8), pos)
  for method in ("bicubic", "linear"):
    resized = resize_pos_embed(pos, 12, method)
    assert resized.shape == (1, 1 + 12 * 12, 32)
    np.testing.assert_array_equal(resized[:, 0], pos[:, 0])
  # A grid that is constant per channel stays so (the weights of each output sum to 1).
  constant = np.concatenate([pos[:, :1], np.broadcast_to(pos[:, 1:2], (1, 64, 32))], 1)
  np.testing.assert_allclose(resize_pos_embed(constant, 12)[0, 1:],
                             np.broadcast_to(pos[0, 1], (144, 32)), rtol=2e-6)
  # Shrinking averages: a grid 4x4 from a 8x8 checkerboard of +-1 is near 0, not +-1.
  checker = np.where(np.add.outer(np.arange(8), np.arange(8)) % 2, 1.0, -1.0)
  board = np.concatenate([pos[:, :1], np.repeat(checker.reshape(1, 64, 1), 32, -1)], 1)
  assert np.abs(resize_pos_embed(board.astype(np.float32), 4)[0, 1:]).max() < 0.2


def test_larger_image_resizes_the_file_grid(augreg):
  vit, _, path = augreg
  config = ModelConfig.tiny(image_size=48)  # grid 12 from the file's 8
  loaded = load_vit_backbone(path, config)
  assert loaded["pos_embed"].shape == (1, 1 + 12 * 12, 32)
  np.testing.assert_array_equal(loaded["pos_embed"][:, 0], vit["pos_embed"][:, 0])
  np.testing.assert_array_equal(loaded["blocks_3"]["mlp"]["fc2"]["kernel"],
                                vit["blocks_3"]["mlp"]["fc2"]["kernel"])
  larger = jax.ShapeDtypeStruct((1, 48, 48, 3), np.float32)
  taps = jax.eval_shape(vit_module(config).apply, {"params": loaded}, larger)
  assert [t.shape for t in taps] == [(1, 144, 32)] * len(config.taps)


def test_missing_file_and_unknown_format(tmp_path):
  with pytest.raises(FileNotFoundError, match="nothere.npz"):
    load_vit_backbone(tmp_path / "nothere.npz", CONFIG)
  odd = tmp_path / "weights.h5"
  odd.write_bytes(b"")
  with pytest.raises(ValueError, match=r"unknown pretrained ViT format '\.h5'.*\.npz"):
    load_vit_backbone(odd, CONFIG)


def test_missing_keys_are_listed(augreg, timm_vit, tmp_path):
  _, arrays, _ = augreg
  gone = ["Transformer/encoderblock_1/LayerNorm_2/scale",
          f"Transformer/encoderblock_3/{MHA}/key/bias"]
  path = tmp_path / "holes.npz"
  np.savez(path, **{k: v for k, v in arrays.items() if k not in gone})
  with pytest.raises(CheckpointMismatchError, match="missing \\(2\\)") as error:
    load_vit_backbone(path, CONFIG)
  assert all(name in str(error.value) for name in gone)
  _, state = timm_vit
  path = tmp_path / "holes.pth"
  torch.save({k: v for k, v in state.items() if k != "blocks.2.attn.qkv.bias"}, path)
  with pytest.raises(CheckpointMismatchError, match=r"missing \(1\): blocks\.2\.attn\.qkv\.bias"):
    load_vit_backbone(path, CONFIG)


@pytest.mark.parametrize("overrides", [dict(vit_width=64), dict(vit_depth=8, taps=(0, 7)),
                                       dict(vit_heads=4), dict(patch_size=8)])
def test_architecture_mismatch_names_both_sides(augreg, overrides):
  config = ModelConfig.tiny(**overrides)
  held = "the file holds a ViT of width 32, depth 6, patch 4, 2 heads; "
  asked = (f"the config asks for width {config.vit_width}, depth {config.vit_depth}, "
           f"patch {config.patch_size}, {config.vit_heads} heads")
  with pytest.raises(ValueError, match=held + asked):
    load_vit_backbone(augreg[2], config)


def test_timm_width_mismatch(timm_vit, tmp_path):
  path = tmp_path / "model.pth"
  torch.save(timm_vit[1], path)
  with pytest.raises(ValueError, match="width 32, depth 4, patch 4; the config asks for width 64"):
    load_vit_backbone(path, ModelConfig.tiny(vit_width=64))


def test_merge_backbone(augreg):
  loaded = load_vit_backbone(augreg[2], CONFIG)
  params = {"vit": random_vit_params(CONFIG, seed=9), "norm": {"scale": np.ones(3, np.float32)}}
  merged = merge_backbone(params, loaded)
  assert merged["norm"] is params["norm"] and merged is not params
  assert_trees_equal(jax.tree.map(np.asarray, merged["vit"]), loaded)
  with pytest.raises(CheckpointMismatchError, match="pos_embed: \\(1, 145, 32\\)"):
    merge_backbone(params, load_vit_backbone(augreg[2], ModelConfig.tiny(image_size=48)))
  with pytest.raises(CheckpointMismatchError, match="missing \\(1\\): blocks_0/norm1/bias"):
    merge_backbone(params, {**loaded, "blocks_0": {**loaded["blocks_0"], "norm1": {"scale": 1}}})
  with pytest.raises(ValueError, match="variables\\['params'\\]"):
    merge_backbone({"params": params}, loaded)
