"""FLOPs counted from the model config: matmuls and convolutions, 2 per multiply-add.

A backward pass counts as two forwards. XLA's cost analysis of the same programs (`xla_flops` in
the JAX records) is the check: it also counts element-wise work, 0.5% more for the paper model.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import numpy as np

from promptiqa_jax.models.lpips_backbones import NETWORKS


def _block(length: int, dim: int, mlp_ratio: int) -> float:
  """A pre-norm transformer block on `length` tokens: qkv, logits, values, proj, MLP."""
  return length * dim * dim * (8 + 4 * mlp_ratio) + 4 * length * length * dim


def _mal(n: int, positions: int, channels: int, reduction: int) -> tuple[float, float]:
  """(spatial, views) of a MAL over n maps: n spatial self-attentions (q, k to C/r and v, logits,
  values), then the feature view (C tokens of width n*L) and the channel view (L tokens of width
  n*C), each three Linear layers and one single-head attention."""
  length, c, cr = positions, channels, channels // reduction
  spatial = n * (2 * length * c * (2 * cr + c) + 2 * length * length * (cr + c))
  views = sum(6 * tokens * width * width + 4 * tokens * tokens * width
              for tokens, width in ((c, n * length), (length, n * c)))
  return spatial, views


def model_flops(cfg: Any, prompt_size: int) -> dict[str, float]:
  """Forward FLOPs of each component: per image, per pair, per prompt or per query.

  Per image: `vit`, `mal_spatial` and `mal_views` (the MALs over the taps), `fusion_mal`,
  `fusion_block`, `cnn_head` (or, for the small models' backbones, `cnn` and `cnn_mlp`) and their
  sum `image`. `pair`: one prompt vector from an image-score pair. `fusion`: prompt fusion of
  `prompt_size` vectors, once per prompt. `query`: one query scored against `prompt_size` fused
  vectors. ViT blocks after the last tap are not counted (they cannot change the output).
  """
  d, ratio = cfg.prompt_width, cfg.mlp_ratio
  parts: dict[str, float] = {}
  if cfg.backbone != "vit":
    parts["cnn"], parts["cnn_mlp"] = _stats_encoder_flops(cfg)
  else:
    width, grid, reduction = cfg.vit_width, cfg.grid, cfg.mal_qk_reduction
    length = grid * grid
    parts["vit"] = (2 * length * cfg.patch_size ** 2 * 3 * width
                    + (max(cfg.taps) + 1) * _block(length + 1, width, ratio))
    spatial, views = _mal(len(cfg.taps), length, width, reduction)
    parts["mal_spatial"], parts["mal_views"] = cfg.num_mals * spatial, cfg.num_mals * views
    parts["fusion_mal"] = sum(_mal(cfg.num_mals, length, width, reduction))
    parts["fusion_block"] = _block(length, width, ratio)
    size, cin, head = grid, width, 0
    for cout, kernel, pool in cfg.cnn_head:
      size -= kernel - 1
      head += 2 * size * size * kernel * kernel * cin * cout
      size, cin = size // pool, cout
    parts["cnn_head"] = head
  parts["image"] = sum(parts.values())
  parts["pair"] = (cfg.pair_depth * _block(2, d, ratio) + 4 * d * cfg.pair_mlp_hidden
                   + (2 * d if cfg.score_embedding == "linear" else 0))
  parts["fusion"] = cfg.prompt_fusion_depth * _block(prompt_size, d, ratio)
  parts["query"] = (cfg.query_depth * _block(prompt_size + 1, d, ratio)
                    + 2 * d * cfg.score_hidden + 2 * cfg.score_hidden)
  return {k: float(v) for k, v in parts.items()}


def _stats_encoder_flops(cfg: Any) -> tuple[float, float]:
  """(convolutions, MLP) of a CNN-statistics backbone, from its layers' shapes (no compute)."""
  network = NETWORKS[cfg.backbone][0]()
  images = jax.ShapeDtypeStruct((1, cfg.image_size, cfg.image_size, 3), np.float32)

  def shapes(x):
    params = network.init(jax.random.PRNGKey(0), x)["params"]
    convs_only = lambda module, _: isinstance(module, nn.Conv)  # noqa: E731
    stages, state = network.apply({"params": params}, x, mutable=["intermediates"],
                                  capture_intermediates=convs_only)
    return params, stages, state["intermediates"]

  params, stages, convs_out = jax.eval_shape(shapes, images)
  convs = sum(2 * np.prod(convs_out[name]["__call__"][0].shape[1:3]) * np.prod(p["kernel"].shape)
              for name, p in params.items())
  stats = 2 * sum(stage.shape[-1] for stage in stages)  # mean and std per channel
  return float(convs), 2.0 * cfg.backbone_hidden * (stats + cfg.prompt_width)


def workload_flops(cfg: Any, what: str, batch: int, prompt_size: int) -> float:
  """FLOPs of one timed call: `infer` of `batch` queries, `prompt` of `prompt_size` pairs, or a
  `train` step on `batch` groups of `prompt_size + 1` (forward, and a backward of two forwards
  that does not enter a frozen CNN backbone)."""
  f = model_flops(cfg, prompt_size)
  if what == "infer":
    return batch * (f["image"] + f["query"])
  if what == "prompt":
    return prompt_size * (f["image"] + f["pair"]) + f["fusion"]
  if what == "train":
    images = batch * (prompt_size + 1)
    forward = images * (f["image"] + f["pair"] + f["fusion"] + f["query"])
    frozen = images * f.get("cnn", 0.0) if cfg.freeze_backbone else 0.0
    return 3 * forward - 2 * frozen
  raise ValueError(f"no FLOP count for {what!r}")
