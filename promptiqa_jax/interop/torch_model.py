"""An independent PyTorch implementation of the reference PromptIQA model.

Written from `shared/spec/promptiqa-reference.md` (no code of the authors' release), it is the oracle
for the Flax port's parity tests and the PyTorch side of benchmarks. Submodule names follow the
release, so `state_dict()` keys are the release checkpoint's keys without their `module.` prefix and
a released `best_model.pth.tar` loads with `load_state_dict(strict=True)`.

Only conversion, benchmarks and tests import this file; the training and scoring paths never do.
Images are NCHW float32 in [-1, 1]; compute is float32 whatever `ModelConfig.dtype` says.
"""
from __future__ import annotations

import os
from typing import Any, Sequence

import torch
from torch import nn

from promptiqa_jax.models.config import ModelConfig

# LayerNorm eps per block group, from the spec's table: timm-style groups (the ViT and the query
# `blocks`) use 1e-6, the groups built on PyTorch defaults use 1e-5.
_TIMM_EPS = 1e-6
_TORCH_EPS = 1e-5


class Mlp(nn.Module):
  """Linear(dim, hidden) -> exact (erf) GELU -> Linear(hidden, dim) on [..., dim]."""

  def __init__(self, dim: int, hidden: int):
    super().__init__()
    self.fc1 = nn.Linear(dim, hidden)
    self.act = nn.GELU()
    self.fc2 = nn.Linear(hidden, dim)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return self.fc2(self.act(self.fc1(x)))


class Attention(nn.Module):
  """Multi-head self-attention with one fused qkv Linear ([3*dim, dim], ordered q, k, v then heads)."""

  def __init__(self, dim: int, heads: int, qkv_bias: bool):
    super().__init__()
    if dim % heads:
      raise ValueError(f"attention width {dim} is not a multiple of heads {heads}")
    self.heads = heads
    self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
    self.proj = nn.Linear(dim, dim)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    """x: [..., L, dim] -> [..., L, dim]; any leading dims are batch dims."""
    *lead, length, dim = x.shape
    head_dim = dim // self.heads
    qkv = self.qkv(x).reshape(*lead, length, 3, self.heads, head_dim)
    # [..., L, H, hd] -> [..., H, L, hd] for each of q, k, v.
    q, k, v = (t.transpose(-3, -2) for t in qkv.unbind(-3))
    attn = torch.softmax((q @ k.transpose(-2, -1)) * head_dim**-0.5, dim=-1)
    out = (attn @ v).transpose(-3, -2).reshape(*lead, length, dim)
    return self.proj(out)


class Block(nn.Module):
  """Pre-norm transformer block: x + Attn(LN1(x)), then x + MLP(LN2(x)); no dropout, no drop-path."""

  def __init__(self, dim: int, heads: int, mlp_ratio: int, qkv_bias: bool, eps: float):
    super().__init__()
    self.norm1 = nn.LayerNorm(dim, eps=eps)
    self.attn = Attention(dim, heads, qkv_bias)
    self.norm2 = nn.LayerNorm(dim, eps=eps)
    self.mlp = Mlp(dim, mlp_ratio * dim)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    """x: [..., L, dim] -> [..., L, dim]."""
    x = x + self.attn(self.norm1(x))
    return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
  """Non-overlapping patch projection, kept as a submodule for the release's `patch_embed.proj` name."""

  def __init__(self, patch_size: int, width: int):
    super().__init__()
    self.proj = nn.Conv2d(3, width, kernel_size=patch_size, stride=patch_size)

  def forward(self, images: torch.Tensor) -> torch.Tensor:
    """images: [B, 3, H, W] -> tokens [B, (H/p)*(W/p), width], row-major over the patch grid."""
    return self.proj(images).flatten(2).transpose(1, 2)


class VisionTransformer(nn.Module):
  """ViT backbone (timm names) that returns tapped block outputs; its final norm and head are unused
  by the reference and absent from the release's 505 keys, so they are not built."""

  def __init__(self, cfg: ModelConfig):
    super().__init__()
    self.taps = tuple(cfg.taps)
    width = cfg.vit_width
    self.cls_token = nn.Parameter(torch.zeros(1, 1, width))
    self.pos_embed = nn.Parameter(0.02 * torch.randn(1, cfg.grid**2 + 1, width))
    self.patch_embed = PatchEmbed(cfg.patch_size, width)
    self.blocks = nn.ModuleList(
        Block(width, cfg.vit_heads, cfg.mlp_ratio, qkv_bias=True, eps=_TIMM_EPS)
        for _ in range(cfg.vit_depth))

  def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
    """images: [B, 3, H, W] -> one [B, grid*grid, width] per tap (in `taps` order), CLS dropped."""
    x = self.patch_embed(images)
    x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
    outputs = {}
    # Blocks after the last tap cannot change any tap, so they are not run.
    for index, block in enumerate(self.blocks[:max(self.taps) + 1]):
      x = block(x)
      if index in self.taps:
        outputs[index] = x[:, 1:]
    return [outputs[t] for t in self.taps]


class SpatialAttention(nn.Module):
  """MAL step 1: self-attention over the positions of one map, gamma * out + input (MoNet)."""

  def __init__(self, channels: int, qk_reduction: int):
    super().__init__()
    self.qConv = nn.Conv2d(channels, channels // qk_reduction, kernel_size=1)
    self.kConv = nn.Conv2d(channels, channels // qk_reduction, kernel_size=1)
    self.vConv = nn.Conv2d(channels, channels, kernel_size=1)
    # The release stores gamma as shape [1], initialised to 0 (the block starts as the identity).
    self.gamma = nn.Parameter(torch.zeros(1))

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    """x: [B, C, H, W] -> [B, C, H, W]."""
    b, c, h, w = x.shape
    q = self.qConv(x).flatten(2)  # [B, C/r, N]
    k = self.kConv(x).flatten(2)  # [B, C/r, N]
    v = self.vConv(x).flatten(2)  # [B, C, N]
    # energy[i, j] = sum_c q[c, i] k[c, j]; the reference does not scale it.
    attn = torch.softmax(q.transpose(1, 2) @ k, dim=-1)  # [B, N, N]
    out = (v @ attn.transpose(1, 2)).reshape(b, c, h, w)  # out[c, i] = sum_j v[c, j] attn[i, j]
    return self.gamma * out + x


class MALAttention(nn.Module):
  """The MAL attention block on [B, L, D], with the reference's scrambling transpose + reshape."""

  def __init__(self, dim: int, dropout: float):
    super().__init__()
    self.c_q = nn.Linear(dim, dim)
    self.c_k = nn.Linear(dim, dim)
    self.c_v = nn.Linear(dim, dim)
    self.dropout = nn.Dropout(dropout)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    """x: [B, L, D] -> [B, L, D]."""
    b, length, dim = x.shape
    attn = torch.softmax((self.c_q(x) @ self.c_k(x).transpose(1, 2)) * dim**-0.5, dim=-1)
    y = attn @ self.c_v(x)  # [B, L, D]
    # The trained function reads y as [B, D, L] and re-reads that memory as [B, L, D]; this is not
    # an identity and must be kept for the released weights to work.
    y = y.transpose(1, 2).reshape(b, length, dim)
    return x + self.dropout(y)


class MAL(nn.Module):
  """Multi-view attention learning over n maps [B, C, H, W] -> [B, C, H*W]."""

  def __init__(self, num_maps: int, channels: int, positions: int, qk_reduction: int,
               dropout: float):
    super().__init__()
    self.channel_attention = MALAttention(num_maps * channels, dropout)
    self.feature_attention = MALAttention(num_maps * positions, dropout)
    self.attention_module = nn.ModuleList(
        SpatialAttention(channels, qk_reduction) for _ in range(num_maps))

  def forward(self, maps: Sequence[torch.Tensor]) -> torch.Tensor:
    """maps: n tensors [B, C, H, W] -> [B, C, H*W]."""
    if len(maps) != len(self.attention_module):
      raise ValueError(f"MAL built for {len(self.attention_module)} maps got {len(maps)}")
    b, c, h, w = maps[0].shape
    n, positions = len(maps), h * w
    # Map-major rows: row index = map * C + channel.
    stacked = torch.stack([module(x) for module, x in zip(self.attention_module, maps)], dim=1)
    stacked = stacked.reshape(b, n * c, positions)
    # Feature view: a plain reshape re-reads the (n, C) rows as (C, n) -- not a transpose.
    feature = self.feature_attention(stacked.reshape(b, c, n * positions))
    feature = feature.reshape(b, n * c, positions)
    channel = self.channel_attention(stacked.transpose(1, 2)).transpose(1, 2)
    return ((feature + channel) / 2).reshape(b, n, c, positions).mean(dim=1)


def _cnn_head(cfg: ModelConfig) -> nn.Sequential:
  """Conv (no padding) -> BatchNorm -> ReLU -> AvgPool per stage, so stage k sits at 4k .. 4k+3."""
  layers: list[nn.Module] = []
  in_channels = cfg.vit_width
  for out_channels, kernel, pool in cfg.cnn_head:
    layers += [
        nn.Conv2d(in_channels, out_channels, kernel_size=kernel),
        nn.BatchNorm2d(out_channels, eps=1e-5, momentum=0.1),
        nn.ReLU(),
        nn.AvgPool2d(pool),
    ]
    in_channels = out_channels
  return nn.Sequential(*layers)


class TorchPromptIQA(nn.Module):
  """PromptIQA as the reference computes it; attribute names give the release's state_dict keys."""

  def __init__(self, cfg: ModelConfig):
    super().__init__()
    cfg.validate()
    self.config = cfg
    width, positions, dim = cfg.vit_width, cfg.grid**2, cfg.prompt_width
    self.vit = VisionTransformer(cfg)
    self.MALs = nn.ModuleList(
        MAL(len(cfg.taps), width, positions, cfg.mal_qk_reduction, cfg.mal_dropout)
        for _ in range(cfg.num_mals))
    self.fusion_mal = MAL(cfg.num_mals, width, positions, cfg.mal_qk_reduction, cfg.mal_dropout)
    self.block = Block(width, cfg.fusion_heads, cfg.mlp_ratio, qkv_bias=False, eps=_TORCH_EPS)
    self.cnn = _cnn_head(cfg)
    self.i_p_fusion = nn.ModuleList(
        Block(dim, cfg.prompt_heads, cfg.mlp_ratio, qkv_bias=False, eps=_TORCH_EPS)
        for _ in range(cfg.pair_depth))
    self.mlp = nn.Sequential(
        nn.Linear(dim, cfg.pair_mlp_hidden), nn.GELU(), nn.Linear(cfg.pair_mlp_hidden, dim))
    self.prompt_fusion = nn.ModuleList(
        Block(dim, cfg.prompt_heads, cfg.mlp_ratio, qkv_bias=False, eps=_TORCH_EPS)
        for _ in range(cfg.prompt_fusion_depth))
    self.blocks = nn.ModuleList(
        Block(dim, cfg.prompt_heads, cfg.mlp_ratio, qkv_bias=True, eps=_TIMM_EPS)
        for _ in range(cfg.query_depth))
    self.norm = nn.LayerNorm(dim, eps=_TORCH_EPS)
    self.score_block = nn.Sequential(
        nn.Linear(dim, cfg.score_hidden), nn.ReLU(), nn.Dropout(cfg.score_dropout),
        nn.Linear(cfg.score_hidden, 1), nn.Sigmoid())
    if cfg.score_embedding == "linear":
      self.score_embed = nn.Linear(1, dim)

  # Image branch, split at the points where parity tests compare intermediate values.

  def backbone_taps(self, images: torch.Tensor) -> list[torch.Tensor]:
    """images: [B, 3, H, W] -> len(taps) tensors [B, grid*grid, vit_width] (CLS removed)."""
    return self.vit(images)

  def tap_maps(self, taps: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """len(taps) tensors [B, N, C] -> as many maps [B, C, grid, grid], by the spec's rearrangement."""
    b, positions, c = taps[0].shape
    grid = self.config.grid
    # Concatenate on channels, transpose, then split the 4C axis as (tap, channel): this is the same
    # as transposing each tap on its own, spelled the reference's way.
    joined = torch.cat(list(taps), dim=-1).transpose(1, 2)  # [B, n*C, N]
    maps = joined.reshape(b, len(taps), c, grid, grid)
    return list(maps.unbind(dim=1))

  def mal_maps(self, maps: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """len(taps) maps [B, C, grid, grid] -> num_mals maps [B, C, grid, grid], one per MAL."""
    b, c, grid, _ = maps[0].shape
    return [mal(maps).reshape(b, c, grid, grid) for mal in self.MALs]

  def fuse_maps(self, maps: Sequence[torch.Tensor]) -> torch.Tensor:
    """num_mals maps [B, C, grid, grid] -> fusion MAL + the 768-wide block -> [B, C, grid, grid]."""
    b, c, grid, _ = maps[0].shape
    tokens = self.block(self.fusion_mal(maps).transpose(1, 2))  # [B, N, C]
    return tokens.transpose(1, 2).reshape(b, c, grid, grid)

  def head_features(self, fused_map: torch.Tensor) -> torch.Tensor:
    """fused_map: [B, C, grid, grid] -> CNN head -> image features [B, prompt_width]."""
    return self.cnn(fused_map).flatten(1)

  def image_features(self, images: torch.Tensor) -> torch.Tensor:
    """images: [B, 3, H, W] in [-1, 1] -> f(x): [B, prompt_width]."""
    maps = self.tap_maps(self.backbone_taps(images))
    return self.head_features(self.fuse_maps(self.mal_maps(maps)))

  # Prompt branch.

  def prompt_vectors(self, features: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    """features: [..., D], scores: [...] -> prompt vectors [..., D] (pair encoder + MLP)."""
    scores = scores.to(features.dtype)[..., None]
    if self.config.score_embedding == "linear":
      score_token = self.score_embed(scores)
    else:
      score_token = scores.expand_as(features)
    x = torch.stack([features, score_token], dim=-2)  # [..., 2, D]
    for block in self.i_p_fusion:
      x = block(x)
    return self.mlp(x.mean(dim=-2))

  def fuse_prompt(self, vectors: torch.Tensor) -> torch.Tensor:
    """vectors: [P, D] (one prompt) or [N, P, D] (N prompts) -> the same shape, after prompt_fusion."""
    for block in self.prompt_fusion:
      vectors = block(vectors)
    return vectors

  def score_with_fused(self, features: torch.Tensor, fused: torch.Tensor) -> torch.Tensor:
    """features: [B, D]; fused: [P, D] shared by all queries, or [B, P, D] one per query -> [B].

    The output is the sigmoid score at token 0 (the query token) of [f(x); fused prompts].
    """
    if fused.dim() == 2:
      fused = fused.expand(features.shape[0], -1, -1)
    x = torch.cat([features[:, None], fused], dim=1)  # [B, 1 + P, D]
    for block in self.blocks:
      x = block(x)
    # score_block acts per token, so applying it to token 0 alone gives the reference's output.
    return self.score_block(self.norm(x)[:, 0]).squeeze(-1)

  def forward(self, images: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    """Training-form leave-one-out forward (spec section 3).

    Args:
      images: [groups, G, 3, H, W] in [-1, 1].
      scores: [groups, G], the (augmented) scores of those images.

    Returns:
      [groups, G]: query i of a group scored with the other G-1 pairs of that group, in order.
      In train mode BatchNorm uses statistics over all groups * G images of this call: the
      "global" variant. The release's training gives each GPU one group, so its statistics are one
      group's: call this once per group for them.
    """
    groups, size = scores.shape
    if size < 2:
      raise ValueError(f"a group needs at least 2 images (1 query + 1 prompt), got G={size}")
    features = self.image_features(images.reshape(groups * size, *images.shape[2:]))
    features = features.reshape(groups, size, -1)
    vectors = self.prompt_vectors(features, scores)  # [groups, G, D]
    predictions = []
    for i in range(size):
      others = torch.cat([vectors[:, :i], vectors[:, i + 1:]], dim=1)  # [groups, G-1, D]
      predictions.append(self.score_with_fused(features[:, i], self.fuse_prompt(others)))
    return torch.stack(predictions, dim=1)


@torch.no_grad()
def randomize_(model: nn.Module, seed: int, gain: float = 1.0) -> nn.Module:
  """Gives every parameter and buffer of `model` random values, in place, and returns the model.

  Constants a port could map wrongly (LayerNorm/BatchNorm affine, running statistics, MAL gammas, the
  class token and position embedding) all move away from their init, at scales that keep
  activations healthy: matrices and kernels N(0, gain**2 / fan_in), norm weights 1 + 0.1 N, biases
  0.05 N, gammas U(0.2, 1), running_var U(0.5, 1.5), num_batches_tracked a random integer.

  gain=3**-0.5 is the spread of PyTorch's default Linear/Conv init; at the paper size it keeps the
  MAL spatial-attention logits (unscaled) below ~20. gain=1 drives them to ~100-600, where the
  softmax is nearly one-hot and amplifies float32 rounding.
  """
  generator = torch.Generator().manual_seed(seed)

  def normal(like: torch.Tensor, std: float, mean: float = 0.0) -> torch.Tensor:
    return mean + std * torch.randn(like.shape, generator=generator, dtype=like.dtype)

  def uniform(like: torch.Tensor, low: float, high: float) -> torch.Tensor:
    return low + (high - low) * torch.rand(like.shape, generator=generator, dtype=like.dtype)

  for name, tensor in model.state_dict(keep_vars=True).items():
    leaf = name.rsplit(".", 1)[-1]
    if leaf == "num_batches_tracked":
      value = torch.randint(1, 10_000, tensor.shape, generator=generator, dtype=tensor.dtype)
    elif leaf == "gamma":
      value = uniform(tensor, 0.2, 1.0)
    elif leaf == "running_var":
      value = uniform(tensor, 0.5, 1.5)
    elif leaf == "running_mean":
      value = normal(tensor, 0.1)
    elif leaf in ("cls_token", "pos_embed"):
      value = normal(tensor, 0.2)
    elif leaf == "weight" and tensor.dim() >= 2:
      value = normal(tensor, gain * tensor[0].numel()**-0.5)
    elif leaf == "weight":
      value = normal(tensor, 0.1, mean=1.0)
    elif leaf == "bias":
      value = normal(tensor, 0.05)
    else:
      raise ValueError(f"randomize_ has no rule for {name!r}; add one so it does not stay at init")
    tensor.copy_(value)
  return model


def save_release_checkpoint(model: nn.Module, path: str | os.PathLike, prompt_num: int = 10) -> None:
  """Writes `model` in the release's format: {'state_dict': {'module.' + key: tensor}, 'prompt_num'}."""
  state_dict = {"module." + key: value for key, value in model.state_dict().items()}
  torch.save({"state_dict": state_dict, "prompt_num": prompt_num}, path)


def load_release_state_dict(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
  """Reads a release checkpoint safely (weights_only) -> (state_dict without `module.`, other entries).

  The second value holds the file's remaining top-level entries, e.g. {'prompt_num': 10}.
  """
  checkpoint = torch.load(path, map_location="cpu", weights_only=True)
  if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
    found = sorted(checkpoint) if isinstance(checkpoint, dict) else type(checkpoint).__name__
    raise ValueError(f"{path} is not a PromptIQA release checkpoint: expected a dict with a "
                     f"'state_dict' entry, found {found}")
  state_dict = {key.removeprefix("module."): value for key, value in checkpoint["state_dict"].items()}
  meta = {key: value for key, value in checkpoint.items() if key != "state_dict"}
  return state_dict, meta
