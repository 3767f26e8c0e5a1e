"""Tests of the PyTorch reference implementation (the parity oracle).

The paper-size model is only ever built on the meta device: its real forward needs seconds per image
and gigabytes, and shapes and key names are all these tests need from it.
"""
import pytest
import torch
import torch.nn.functional as F

from promptiqa_jax.interop import torch_model
from promptiqa_jax.models.config import ModelConfig

GROUPS, GROUP_SIZE = 2, 4


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
  # The tiny model's ops are far too small to gain from threads; on a shared machine intra-op
  # threads contend and make these tests ~10x slower.
  threads = torch.get_num_threads()
  torch.set_num_threads(1)
  yield
  torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def paper_model():
  with torch.device("meta"):
    return torch_model.TorchPromptIQA(ModelConfig.paper())


@pytest.fixture
def tiny_model():
  model = torch_model.TorchPromptIQA(ModelConfig.tiny())
  return torch_model.randomize_(model, seed=1).eval()


def _inputs(cfg, seed=2):
  generator = torch.Generator().manual_seed(seed)
  images = torch.rand(GROUPS, GROUP_SIZE, 3, cfg.image_size, cfg.image_size, generator=generator)
  scores = torch.rand(GROUPS, GROUP_SIZE, generator=generator)
  return 2 * images - 1, scores


def _block_keys(prefix, qkv_bias):
  names = ["norm1.weight", "norm1.bias", "attn.qkv.weight", "attn.proj.weight", "attn.proj.bias",
           "norm2.weight", "norm2.bias", "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight",
           "mlp.fc2.bias"] + (["attn.qkv.bias"] if qkv_bias else [])
  return {f"{prefix}.{name}" for name in names}


def _mal_keys(prefix, num_maps):
  keys = {f"{prefix}.{view}.{proj}.{kind}" for view in ("channel_attention", "feature_attention")
          for proj in ("c_q", "c_k", "c_v") for kind in ("weight", "bias")}
  for j in range(num_maps):
    keys.add(f"{prefix}.attention_module.{j}.gamma")
    keys |= {f"{prefix}.attention_module.{j}.{conv}.{kind}" for conv in ("qConv", "kConv", "vConv")
             for kind in ("weight", "bias")}
  return keys


def test_paper_keys_are_the_release_keys(paper_model):
  keys = {"vit.cls_token", "vit.pos_embed", "vit.patch_embed.proj.weight", "vit.patch_embed.proj.bias"}
  for n in range(12):
    keys |= _block_keys(f"vit.blocks.{n}", qkv_bias=True)
  for i in range(3):
    keys |= _mal_keys(f"MALs.{i}", 4)
  keys |= _mal_keys("fusion_mal", 3)
  keys |= _block_keys("block", qkv_bias=False)
  for conv, bn in ((0, 1), (4, 5), (8, 9)):
    keys |= {f"cnn.{conv}.weight", f"cnn.{conv}.bias"}
    keys |= {f"cnn.{bn}.{name}" for name in
             ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")}
  for n in range(3):
    keys |= _block_keys(f"i_p_fusion.{n}", qkv_bias=False)
    keys |= _block_keys(f"prompt_fusion.{n}", qkv_bias=False)
  for n in range(8):
    keys |= _block_keys(f"blocks.{n}", qkv_bias=True)
  keys |= {"mlp.0.weight", "mlp.0.bias", "mlp.2.weight", "mlp.2.bias", "norm.weight", "norm.bias",
           "score_block.0.weight", "score_block.0.bias", "score_block.3.weight", "score_block.3.bias"}
  state_dict = paper_model.state_dict()
  assert len(keys) == 505
  assert set(state_dict) == keys


def test_paper_shapes(paper_model):
  shapes = {k: tuple(v.shape) for k, v in paper_model.state_dict().items()}
  assert shapes["vit.pos_embed"] == (1, 785, 768)
  assert shapes["vit.patch_embed.proj.weight"] == (768, 3, 8, 8)
  assert shapes["vit.blocks.0.attn.qkv.weight"] == (2304, 768)
  assert shapes["MALs.0.feature_attention.c_q.weight"] == (3136, 3136)
  assert shapes["MALs.0.channel_attention.c_q.weight"] == (3072, 3072)
  assert shapes["fusion_mal.feature_attention.c_v.weight"] == (2352, 2352)
  assert shapes["fusion_mal.channel_attention.c_v.weight"] == (2304, 2304)
  assert shapes["MALs.2.attention_module.3.gamma"] == (1,)
  assert shapes["MALs.2.attention_module.3.qConv.weight"] == (96, 768, 1, 1)
  assert shapes["MALs.2.attention_module.3.vConv.weight"] == (768, 768, 1, 1)
  assert shapes["cnn.0.weight"] == (256, 768, 5, 5)
  assert shapes["cnn.4.weight"] == (128, 256, 3, 3)
  assert shapes["cnn.9.running_var"] == (128,)
  assert shapes["mlp.0.weight"] == (64, 128)
  assert shapes["score_block.3.weight"] == (1, 64)
  params = sum(p.numel() for p in paper_model.parameters())
  assert 317e6 < params < 319e6  # the spec's "about 318 M"


def test_paper_forward_shapes_on_meta(paper_model):
  with torch.device("meta"):
    assert paper_model.image_features(torch.empty(2, 3, 224, 224)).shape == (2, 128)
    assert paper_model(torch.empty(1, 3, 3, 224, 224), torch.empty(1, 3)).shape == (1, 3)


def test_tiny_shapes(tiny_model):
  cfg = tiny_model.config
  images, scores = _inputs(cfg)
  flat = images.reshape(-1, 3, cfg.image_size, cfg.image_size)
  batch, positions, dim = flat.shape[0], cfg.grid**2, cfg.prompt_width
  with torch.no_grad():
    taps = tiny_model.backbone_taps(flat)
    assert [t.shape for t in taps] == [(batch, positions, cfg.vit_width)] * len(cfg.taps)
    maps = tiny_model.tap_maps(taps)
    assert [m.shape for m in maps] == [(batch, cfg.vit_width, cfg.grid, cfg.grid)] * len(cfg.taps)
    mal_maps = tiny_model.mal_maps(maps)
    assert len(mal_maps) == cfg.num_mals
    fused_map = tiny_model.fuse_maps(mal_maps)
    assert fused_map.shape == (batch, cfg.vit_width, cfg.grid, cfg.grid)
    features = tiny_model.head_features(fused_map)
    assert features.shape == (batch, dim)
    vectors = tiny_model.prompt_vectors(features, scores.reshape(-1))
    assert vectors.shape == (batch, dim)
    assert tiny_model.fuse_prompt(vectors[:3]).shape == (3, dim)
    assert tiny_model.fuse_prompt(vectors.reshape(2, -1, dim)).shape == (2, batch // 2, dim)
    assert tiny_model.score_with_fused(features, vectors[:3]).shape == (batch,)
    out = tiny_model(images, scores)
  assert out.shape == (GROUPS, GROUP_SIZE)
  assert torch.all((out > 0) & (out < 1))


def test_tap_maps_are_per_tap_transposes(tiny_model):
  taps = [torch.randn(2, tiny_model.config.grid**2, tiny_model.config.vit_width) for _ in range(4)]
  for tap, grid_map in zip(taps, tiny_model.tap_maps(taps)):
    torch.testing.assert_close(grid_map.flatten(2), tap.transpose(1, 2), rtol=0, atol=0)


def test_attention_matches_scaled_dot_product(tiny_model):
  attn = tiny_model.blocks[0].attn
  x = torch.randn(3, 5, tiny_model.config.prompt_width)
  q, k, v = attn.qkv(x).reshape(3, 5, 3, attn.heads, -1).permute(2, 0, 3, 1, 4)
  expected = attn.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(x.shape))
  with torch.no_grad():
    torch.testing.assert_close(attn(x), expected)


def test_leave_one_out_matches_hand_built_prompt(tiny_model):
  images, scores = _inputs(tiny_model.config)
  group, query = 1, 2
  with torch.no_grad():
    out = tiny_model(images, scores)
    features = tiny_model.image_features(images[group])
    vectors = tiny_model.prompt_vectors(features, scores[group])
    keep = [i for i in range(GROUP_SIZE) if i != query]
    fused = tiny_model.fuse_prompt(vectors[keep])
    expected = tiny_model.score_with_fused(features[query:query + 1], fused)
    with_own_pair = tiny_model.score_with_fused(features[query:query + 1],
                                                tiny_model.fuse_prompt(vectors))
  torch.testing.assert_close(out[group, query], expected[0], rtol=1e-5, atol=1e-6)
  assert not torch.allclose(out[group, query], with_own_pair[0])


def test_fuse_prompt_batches_independently(tiny_model):
  vectors = torch.randn(3, 5, tiny_model.config.prompt_width)
  with torch.no_grad():
    batched = tiny_model.fuse_prompt(vectors)
    for n in range(3):
      torch.testing.assert_close(batched[n], tiny_model.fuse_prompt(vectors[n]))


def test_train_mode_uses_dropout_and_updates_batchnorm(tiny_model):
  images, scores = _inputs(tiny_model.config)
  tiny_model.train()
  before = tiny_model.cnn[1].running_mean.clone()
  torch.manual_seed(3)
  first = tiny_model(images, scores)
  second = tiny_model(images, scores)
  assert not torch.allclose(first, second)
  assert not torch.allclose(before, tiny_model.cnn[1].running_mean)
  first.mean().backward()
  assert tiny_model.MALs[0].attention_module[0].gamma.grad is not None


def test_linear_score_embedding():
  model = torch_model.TorchPromptIQA(ModelConfig.tiny(score_embedding="linear"))
  assert tuple(model.state_dict()["score_embed.weight"].shape) == (16, 1)
  torch_model.randomize_(model, seed=0).eval()
  features = torch.randn(4, 16)
  with torch.no_grad():
    low = model.prompt_vectors(features, torch.zeros(4))
    high = model.prompt_vectors(features, torch.ones(4))
  assert not torch.allclose(low, high)


def test_randomize_changes_every_tensor():
  model = torch_model.TorchPromptIQA(ModelConfig.tiny())
  before = {k: v.clone() for k, v in model.state_dict().items()}
  after = torch_model.randomize_(model, seed=4).state_dict()
  unchanged = [k for k in before if torch.equal(before[k], after[k])]
  assert not unchanged
  for key, value in after.items():
    assert value.dtype == before[key].dtype, key
    if key.endswith("running_var"):
      assert torch.all(value > 0)
  again = torch_model.randomize_(torch_model.TorchPromptIQA(ModelConfig.tiny()), seed=4)
  for key, value in again.state_dict().items():
    assert torch.equal(value, after[key]), key


def test_randomize_gain_scales_only_matrices():
  unit = torch_model.randomize_(torch_model.TorchPromptIQA(ModelConfig.tiny()), seed=4).state_dict()
  soft = torch_model.randomize_(torch_model.TorchPromptIQA(ModelConfig.tiny()), seed=4,
                                gain=0.5).state_dict()
  for key, value in soft.items():
    matrix = key.endswith("weight") and value.dim() >= 2
    torch.testing.assert_close(value, unit[key] * 0.5 if matrix else unit[key], rtol=0, atol=0,
                               msg=key)


def test_release_checkpoint_round_trip(tiny_model, tmp_path):
  path = tmp_path / "best_model.pth.tar"
  torch_model.save_release_checkpoint(tiny_model, path, prompt_num=3)
  raw = torch.load(path, map_location="cpu", weights_only=True)
  assert set(raw) == {"state_dict", "prompt_num"}
  assert all(key.startswith("module.") for key in raw["state_dict"])
  state_dict, meta = torch_model.load_release_state_dict(path)
  assert meta == {"prompt_num": 3}
  expected = tiny_model.state_dict()
  assert list(state_dict) == list(expected)
  for key, value in expected.items():
    assert torch.equal(state_dict[key], value), key
  fresh = torch_model.TorchPromptIQA(tiny_model.config)
  fresh.load_state_dict(state_dict, strict=True)
  images, scores = _inputs(tiny_model.config)
  with torch.no_grad():
    torch.testing.assert_close(fresh.eval()(images, scores), tiny_model(images, scores), rtol=0, atol=0)


def test_load_rejects_other_files(tmp_path):
  path = tmp_path / "weights.pt"
  torch.save({"model": {}}, path)
  with pytest.raises(ValueError, match="state_dict"):
    torch_model.load_release_state_dict(path)
