"""The whole PromptIQA model and its entry points.

Entry points (all `nn.Module` methods, used with `model.apply(variables, ..., method=...)`):
  image_features(images [N, H, W, 3], train, groups) -> [N, D]    f(x), D = prompt_width
  prompt_vectors(features [..., D], scores [...]) -> [..., D]       p_i from (f(x_i), s_i)
  fuse_prompt(vectors [..., P, D]) -> [..., P, D]                   prompt fusion, query-free
  score_with_fused(features [..., D], fused [..., P, D], train) -> [...]
  __call__(images [g, G, H, W, 3], scores [g, G], train) -> [g, G]  leave-one-out training form
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from promptiqa_jax.models.config import ModelConfig
from promptiqa_jax.models.mal import MAL
from promptiqa_jax.models.lpips_backbones import CNNStatsEncoder
from promptiqa_jax.models.vit import Block, VisionTransformer, layer_norm, wide


class ReferenceBatchNorm(nn.Module):
  """BatchNorm over all but the last axis, with PyTorch's running-statistics rule, per group.

  Train mode splits the leading axis into `groups` equal consecutive slices and normalises each
  with its own batch mean and biased variance, as each GPU of the release does with its one group
  (DistributedDataParallel without SyncBatchNorm); `groups=1` is ordinary BatchNorm over the whole
  batch. The running statistics move by the mean over the groups of each group's update,
  running = (1 - momentum) * running + momentum * batch, with the UNBIASED batch variance in the
  running variance as torch.nn.BatchNorm2d keeps it (flax.linen.BatchNorm keeps the biased one).
  The release saves rank 0's running statistics alone: the running statistics of one group.
  """

  momentum: float = 0.1
  epsilon: float = 1e-5
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool, groups: int = 1) -> jax.Array:
    """`x: [N, ..., C]` -> the same shape; in train mode N must be a multiple of `groups`."""
    features = x.shape[-1]
    scale = self.param("scale", nn.initializers.ones, (features,))
    bias = self.param("bias", nn.initializers.zeros, (features,))
    running_mean = self.variable("batch_stats", "mean", jnp.zeros, (features,))
    running_var = self.variable("batch_stats", "var", jnp.ones, (features,))
    if not train:
      inv = jax.lax.rsqrt(running_var.value.astype(wide(self.dtype)) + self.epsilon) * scale
      return ((x - running_mean.value.astype(x.dtype)) * inv.astype(x.dtype)
              + bias.astype(x.dtype))
    if x.shape[0] % groups:
      raise ValueError(f"BatchNorm over {groups} groups needs a batch divisible by it, got "
                       f"{x.shape[0]}")
    grouped = x.reshape((groups, x.shape[0] // groups) + x.shape[1:])
    axes = tuple(range(1, grouped.ndim - 1))
    x32 = grouped.astype(wide(self.dtype))
    # [groups, 1, ..., 1, C]: each group's statistics, broadcast over its members.
    mean = jnp.mean(x32, axes, keepdims=True)
    var = jnp.mean(jnp.square(x32 - mean), axes, keepdims=True)
    if not self.is_initializing():
      count = np.prod([grouped.shape[a] for a in axes])
      unbiased = var * count / max(count - 1, 1)
      # The running statistics keep their own dtype (float32) whatever the compute dtype.
      stored = running_mean.value.dtype
      running_mean.value = ((1 - self.momentum) * running_mean.value
                            + self.momentum * jnp.mean(mean.reshape(groups, features), 0)
                            ).astype(stored)
      running_var.value = ((1 - self.momentum) * running_var.value
                           + self.momentum * jnp.mean(unbiased.reshape(groups, features), 0)
                           ).astype(stored)
    inv = jax.lax.rsqrt(var + self.epsilon) * scale
    out = (grouped - mean.astype(x.dtype)) * inv.astype(x.dtype) + bias.astype(x.dtype)
    return out.reshape(x.shape)


class CNNHead(nn.Module):
  """Conv (no padding) -> BatchNorm -> ReLU -> AvgPool per stage, down to 1x1.

  `maps: [N, grid, grid, C] -> [N, D]`; stages from `ModelConfig.cnn_head`. In train mode the
  BatchNorm statistics are those of each of `groups` consecutive equal slices of the N maps.
  """

  stages: tuple[tuple[int, int, int], ...]
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool, groups: int = 1) -> jax.Array:
    for index, (features, kernel, pool) in enumerate(self.stages):
      x = nn.Conv(features, (kernel, kernel), padding="VALID", dtype=self.dtype,
                  name=f"conv_{index}")(x)
      x = ReferenceBatchNorm(dtype=self.dtype, name=f"bn_{index}")(x, train, groups)
      x = nn.relu(x)
      x = nn.avg_pool(x, (pool, pool), strides=(pool, pool), padding="VALID")
    return x.reshape(x.shape[0], -1)


class PromptIQANet(nn.Module):
  """PromptIQA (ECCV 2024), the reference architecture with every size from `config`."""

  config: ModelConfig

  def setup(self):
    cfg = self.config
    dtype = jnp.dtype(cfg.dtype)
    if dtype == jnp.float64 and not jax.config.read("jax_enable_x64"):
      raise ValueError("dtype='float64' needs 64-bit JAX: run inside `with jax.enable_x64(True):` "
                       "or set jax.config.update('jax_enable_x64', True)")
    if cfg.backbone != "vit":
      self.backbone = CNNStatsEncoder(cfg.backbone, cfg.prompt_width, cfg.backbone_hidden,
                                      cfg.freeze_backbone, dtype)
    else:
      attention = "cudnn" if cfg.attention == "cudnn" else None
      self.vit = VisionTransformer(cfg.patch_size, cfg.vit_width, cfg.vit_depth, cfg.vit_heads,
                                   cfg.taps, cfg.mlp_ratio, dtype, cfg.remat, attention)
      # `train` (argument 2, counting the module) is a Python bool: static under remat.
      mal = nn.remat(MAL, static_argnums=(2,)) if cfg.remat else MAL
      self.mals = [mal(cfg.mal_qk_reduction, cfg.mal_dropout, dtype) for _ in range(cfg.num_mals)]
      self.fusion_mal = mal(cfg.mal_qk_reduction, cfg.mal_dropout, dtype)
      self.block = Block(cfg.fusion_heads, qkv_bias=False, epsilon=1e-5, mlp_ratio=cfg.mlp_ratio,
                         dtype=dtype, attention=attention)
      self.cnn = CNNHead(cfg.cnn_head, dtype)

    def prompt_block(qkv_bias: bool, epsilon: float) -> Block:
      return Block(cfg.prompt_heads, qkv_bias, epsilon, cfg.mlp_ratio, dtype)

    if cfg.score_embedding == "linear":
      self.score_embed = nn.Dense(cfg.prompt_width, dtype=dtype)
    self.i_p_fusion = [prompt_block(False, 1e-5) for _ in range(cfg.pair_depth)]
    self.pair_mlp_in = nn.Dense(cfg.pair_mlp_hidden, dtype=dtype)
    self.pair_mlp_out = nn.Dense(cfg.prompt_width, dtype=dtype)
    self.prompt_fusion = [prompt_block(False, 1e-5) for _ in range(cfg.prompt_fusion_depth)]
    self.blocks = [prompt_block(True, 1e-6) for _ in range(cfg.query_depth)]
    self.norm = layer_norm(1e-5, dtype)
    self.score_hidden = nn.Dense(cfg.score_hidden, dtype=dtype)
    self.score_dropout = nn.Dropout(cfg.score_dropout)
    self.score_out = nn.Dense(1, dtype=dtype)

  def image_features(self, images: jax.Array, train: bool = False, groups: int = 1) -> jax.Array:
    """`images: [N, H, W, 3]` in [-1, 1] -> image features f(x) `[N, D]` (float32, or float64).

    In train mode the CNN head's BatchNorm takes its statistics over each of `groups` consecutive
    equal slices of the N images.
    """
    dtype = jnp.dtype(self.config.dtype)
    if self.config.backbone != "vit":
      return self.backbone(images)
    taps = self.vit(images.astype(dtype))
    maps = [mal(taps, train) for mal in self.mals]
    fused = self.fusion_mal(maps, train)
    fused = self.block(fused)
    grid = self.config.grid
    fused = fused.reshape(fused.shape[0], grid, grid, fused.shape[-1])
    return self.cnn(fused, train, groups).astype(wide(dtype))

  def prompt_vectors(self, features: jax.Array, scores: jax.Array) -> jax.Array:
    """Prompt vectors p from pairs: `features [..., D]`, `scores [...]` -> `[..., D]`."""
    dtype = jnp.dtype(self.config.dtype)
    features = features.astype(dtype)
    scores = scores.astype(dtype)[..., None]
    if self.config.score_embedding == "linear":
      score_token = self.score_embed(scores)
    else:
      score_token = jnp.broadcast_to(scores, features.shape)
    tokens = jnp.stack([features, score_token], axis=-2)
    lead = tokens.shape[:-2]
    tokens = tokens.reshape((-1,) + tokens.shape[-2:])
    for block in self.i_p_fusion:
      tokens = block(tokens)
    pooled = jnp.mean(tokens, axis=1)
    vectors = self.pair_mlp_out(nn.gelu(self.pair_mlp_in(pooled), approximate=False))
    return vectors.reshape(lead + vectors.shape[-1:]).astype(wide(dtype))

  def fuse_prompt(self, vectors: jax.Array) -> jax.Array:
    """Prompt fusion, independent of the query: `[..., P, D] -> [..., P, D]`."""
    lead = vectors.shape[:-2]
    tokens = vectors.astype(jnp.dtype(self.config.dtype)).reshape((-1,) + vectors.shape[-2:])
    for block in self.prompt_fusion:
      tokens = block(tokens)
    return tokens.reshape(lead + tokens.shape[-2:]).astype(wide(self.config.dtype))

  def score_with_fused(self, features: jax.Array, fused: jax.Array,
                       train: bool = False) -> jax.Array:
    """Quality in [0, 1] of queries `features [..., D]` given fused prompts `[..., P, D]`.

    `fused` broadcasts against the query's leading axes (one prompt for all queries, or one each).
    """
    dtype = jnp.dtype(self.config.dtype)
    lead = features.shape[:-1]
    fused = jnp.broadcast_to(fused, lead + fused.shape[-2:]).astype(dtype)
    tokens = jnp.concatenate([features.astype(dtype)[..., None, :], fused], axis=-2)
    tokens = tokens.reshape((-1,) + tokens.shape[-2:])
    for block in self.blocks:
      tokens = block(tokens)
    query = self.norm(tokens[:, 0])
    hidden = self.score_dropout(nn.relu(self.score_hidden(query)), deterministic=not train)
    quality = jax.nn.sigmoid(self.score_out(hidden).astype(wide(dtype)))
    return quality.reshape(lead)

  def __call__(self, images: jax.Array, scores: jax.Array, train: bool = False) -> jax.Array:
    """Leave-one-out forward on groups: `images [g, G, H, W, 3]`, `scores [g, G]` -> `[g, G]`.

    Every image is a query once; its prompt is the other G-1 pairs of its group in their order.
    Features are computed once per image and feed both the query and the prompt pairs. In train
    mode the BatchNorm statistics are each group's own (`config.batchnorm="per_group"`, as the
    release's GPUs compute them) or the whole batch's (`"global"`).
    """
    groups, group_size = scores.shape
    statistics = groups if self.config.batchnorm == "per_group" else 1
    features = self.image_features(images.reshape((-1,) + images.shape[2:]), train, statistics)
    features = features.reshape(groups, group_size, -1)
    vectors = self.prompt_vectors(features, scores)
    # others[i] = [0..G-1] without i, in order: a static gather, no loop over queries.
    others = np.array([[j for j in range(group_size) if j != i] for i in range(group_size)])
    fused = self.fuse_prompt(vectors[:, others])
    return self.score_with_fused(features, fused, train)


def abstract_variables(config: ModelConfig) -> dict[str, Any]:
  """Shapes and dtypes of the model's variables, without computing anything."""
  model = PromptIQANet(config)
  size = config.image_size
  images = jax.ShapeDtypeStruct((1, 2, size, size, 3), jnp.float32)
  scores = jax.ShapeDtypeStruct((1, 2), jnp.float32)
  return jax.eval_shape(lambda x, s: model.init(jax.random.key(0), x, s), images, scores)
