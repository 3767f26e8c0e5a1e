"""Multi-view attention learning (MAL, from MoNet) and its two kinds of attention.

Layouts: a "map" is kept in token layout `[B, L, C]` (L = grid*grid positions, row-major), the
transpose of the reference's `[B, C, H, W]`. The reference's plain reshapes are reproduced exactly
(they are part of the trained function), so some steps below read as scrambles on purpose.
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from promptiqa_jax.models.vit import softmax_attention, wide

Dtype = Any


class SpatialSelfAttention(nn.Module):
  """MAL's per-map self-attention over positions. `x: [B, L, C] -> [B, L, C]`.

  q, k: 1x1 convs C -> C // reduction; v: 1x1 conv C -> C; no logit scaling;
  out = gamma * softmax(q k^T) v + x, gamma a learned scalar initialised to 0.
  """

  reduction: int = 8
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    channels = x.shape[-1]
    # 1x1 convolutions on a map are Dense layers on its tokens.
    q = nn.Dense(channels // self.reduction, dtype=self.dtype, name="qConv")(x)
    k = nn.Dense(channels // self.reduction, dtype=self.dtype, name="kConv")(x)
    v = nn.Dense(channels, dtype=self.dtype, name="vConv")(x)
    energy = jnp.einsum("bic,bjc->bij", q, k)
    attention = jax.nn.softmax(energy.astype(wide(energy.dtype)), axis=-1).astype(v.dtype)
    out = jnp.einsum("bij,bjc->bic", attention, v)
    gamma = self.param("gamma", nn.initializers.zeros, (1,))
    return gamma.astype(out.dtype) * out + x


class ScrambledAttentionBlock(nn.Module):
  """MAL's attention block. `x: [B, L, D] -> [B, L, D]`.

  q, k, v = three Linear(D, D); y = softmax(q k^T / sqrt(D)) v, `[B, L, D]`; then y is transposed to
  `[B, D, L]` and re-read by a plain reshape as `[B, L, D]` (the reference's scramble); dropout;
  out = x + y.
  """

  dropout: float = 0.1
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    batch, length, dim = x.shape
    q = nn.Dense(dim, dtype=self.dtype, name="c_q")(x)
    k = nn.Dense(dim, dtype=self.dtype, name="c_k")(x)
    v = nn.Dense(dim, dtype=self.dtype, name="c_v")(x)
    y = softmax_attention(q, k, v, dim**-0.5)
    y = jnp.swapaxes(y, 1, 2).reshape(batch, length, dim)
    y = nn.Dropout(self.dropout, deterministic=not train)(y)
    return x + y


class MAL(nn.Module):
  """Multi-view attention over n maps. `maps: n x [B, L, C] -> [B, L, C]`.

  Each map gets its own spatial self-attention; the stacked results T (`[B, n*C, L]` in the
  reference's layout, row = map*C + channel) are attended in a feature view (T re-read by a plain
  reshape as C tokens of width n*L) and a channel view (L tokens of width n*C); the two views are
  averaged and the mean over the n maps is returned.
  """

  qk_reduction: int = 8
  dropout: float = 0.1
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, maps: Sequence[jax.Array], train: bool) -> jax.Array:
    n = len(maps)
    batch, length, channels = maps[0].shape
    attended = [
        SpatialSelfAttention(self.qk_reduction, self.dtype, name=f"attention_module_{i}")(m)
        for i, m in enumerate(maps)
    ]
    # stacked[b, m, c, l]: the reference's T = stacked.reshape(B, n*C, L).
    stacked = jnp.stack([jnp.swapaxes(a, 1, 2) for a in attended], axis=1)
    feature_view = stacked.reshape(batch, channels, n * length)
    feature_out = ScrambledAttentionBlock(self.dropout, self.dtype, name="feature_attention")(
        feature_view, train).reshape(batch, n, channels, length)
    channel_view = jnp.transpose(stacked, (0, 3, 1, 2)).reshape(batch, length, n * channels)
    channel_out = ScrambledAttentionBlock(self.dropout, self.dtype, name="channel_attention")(
        channel_view, train).reshape(batch, length, n, channels)
    channel_out = jnp.transpose(channel_out, (0, 2, 3, 1))
    fused = (feature_out + channel_out) / 2
    return jnp.swapaxes(jnp.mean(fused, axis=1), 1, 2)
