"""Architecture hyper-parameters of PromptIQA, as a frozen (hashable) dataclass.

`ModelConfig.paper()` is the reference architecture (ViT-B/8 at 224, three MALs and a fusion MAL,
a 128-wide prompt transformer). `ModelConfig.tiny()` keeps every part but shrinks each to a size
that runs in milliseconds, for tests. Config files in `configs/` build the `model` section of an
experiment from these and may override any field.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Sizes of every part of the model. Field names are the ones configs use."""

  image_size: int = 224
  # "vit": the reference (ViT-B/8 taps -> MALs -> CNN head). "alexnet" / "vgg16": frozen ImageNet
  # CNN stage statistics and an MLP (models/lpips_backbones.py), for small models trained in minutes.
  backbone: str = "vit"
  freeze_backbone: bool = True
  backbone_hidden: int = 512
  patch_size: int = 8
  vit_width: int = 768
  vit_depth: int = 12
  vit_heads: int = 12
  # 0-based indices of the ViT blocks whose outputs feed the MALs.
  taps: tuple[int, ...] = (2, 5, 8, 11)
  # MALs over the taps; their outputs are fused by one more MAL.
  num_mals: int = 3
  # q/k 1x1 convs of the MAL spatial self-attention map C -> C // mal_qk_reduction.
  mal_qk_reduction: int = 8
  mal_dropout: float = 0.1
  # The transformer block after the fusion MAL (vit_width wide).
  fusion_heads: int = 12
  # CNN head: (out_channels, kernel, avg_pool) per stage, no padding; must close the grid to 1x1,
  # and the last out_channels is the image-feature width, equal to prompt_width.
  cnn_head: tuple[tuple[int, int, int], ...] = ((256, 5, 2), (128, 3, 2), (128, 3, 3))
  prompt_width: int = 128
  prompt_heads: int = 4
  pair_depth: int = 3
  prompt_fusion_depth: int = 3
  query_depth: int = 8
  pair_mlp_hidden: int = 64
  score_hidden: int = 64
  score_dropout: float = 0.1
  mlp_ratio: int = 4
  # "repeat": the reference's score token (the score repeated prompt_width times);
  # "linear": a learned embedding of the score, for small models trained from scratch.
  score_embedding: str = "repeat"
  # Compute dtype; parameters are always float32. "float64" (needs jax_enable_x64) is for
  # numerical verification: the parity tests compare it with PyTorch in float64.
  dtype: str = "float32"
  # Recompute the ViT blocks and the MALs in the backward pass instead of keeping their
  # activations: less memory for a training step, about one more forward pass of time.
  remat: bool = False
  # Multi-head attention of the image branch (ViT blocks, the block after the fusion MAL): "xla",
  # or "cudnn", the fused (flash) kernel of NVIDIA GPUs, which needs dtype="bfloat16".
  attention: str = "xla"
  # Batch statistics of the CNN head's BatchNorm in training: "per_group", over each group's G
  # images, as each GPU of the release computes them (one group per GPU, DistributedDataParallel
  # without SyncBatchNorm), whatever the device layout here; "global", over every image of the
  # global batch. Running statistics move by the mean of the groups' updates (the release keeps
  # rank 0's alone). Inference uses the running statistics either way.
  batchnorm: str = "per_group"

  @property
  def grid(self) -> int:
    return self.image_size // self.patch_size

  @classmethod
  def paper(cls, **overrides: Any) -> "ModelConfig":
    return cls(**overrides)

  @classmethod
  def tiny(cls, **overrides: Any) -> "ModelConfig":
    fields = dict(
        image_size=32, patch_size=4, vit_width=32, vit_depth=4, vit_heads=2, taps=(0, 1, 2, 3),
        num_mals=3, mal_qk_reduction=8, fusion_heads=2, cnn_head=((24, 3, 2), (16, 3, 1)),
        prompt_width=16, prompt_heads=2, pair_depth=2, prompt_fusion_depth=2, query_depth=2,
        pair_mlp_hidden=8, score_hidden=8)
    fields.update(overrides)
    return cls(**fields)

  @classmethod
  def from_mapping(cls, fields: Mapping[str, Any]) -> "ModelConfig":
    """Builds from a dict or ConfigDict; unknown keys are an error naming them."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(fields) - known)
    if unknown:
      raise ValueError(f"Unknown model config field(s) {unknown}; known: {sorted(known)}")
    values = dict(fields)
    for key in ("taps", "cnn_head"):
      if key in values:
        values[key] = _to_tuple(values[key])
    config = cls(**values)
    config.validate()
    return config

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  def validate(self) -> None:
    """Raises ValueError naming the field when the sizes do not fit together."""
    if self.backbone not in ("vit", "alexnet", "vgg16"):
      raise ValueError(f"backbone must be 'vit', 'alexnet' or 'vgg16', not {self.backbone!r}")
    if self.score_embedding not in ("repeat", "linear"):
      raise ValueError(f"score_embedding must be 'repeat' or 'linear', not {self.score_embedding!r}")
    if self.dtype not in ("float32", "bfloat16", "float64"):
      raise ValueError(f"dtype must be 'float32', 'bfloat16' or 'float64', not {self.dtype!r}")
    if self.attention not in ("xla", "cudnn"):
      raise ValueError(f"attention must be 'xla' or 'cudnn', not {self.attention!r}")
    if self.batchnorm not in ("per_group", "global"):
      raise ValueError(f"batchnorm must be 'per_group' or 'global', not {self.batchnorm!r}")
    if self.attention == "cudnn" and self.dtype != "bfloat16":
      raise ValueError("attention='cudnn' needs dtype='bfloat16' (cuDNN's fused attention has no "
                       f"{self.dtype} kernel)")
    if self.backbone != "vit":
      return
    if self.image_size % self.patch_size:
      raise ValueError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
    if any(not 0 <= t < self.vit_depth for t in self.taps):
      raise ValueError(f"taps {self.taps} must lie in [0, vit_depth={self.vit_depth})")
    if self.cnn_head[-1][0] != self.prompt_width:
      raise ValueError(f"the last cnn_head stage has {self.cnn_head[-1][0]} channels; it must equal "
                       f"prompt_width={self.prompt_width}")
    size = self.grid
    for out_channels, kernel, pool in self.cnn_head:
      size = (size - kernel + 1) // pool
    if size != 1:
      raise ValueError(f"cnn_head {self.cnn_head} maps the {self.grid}x{self.grid} grid to {size}x{size}, "
                       "not 1x1")
    if self.num_mals < 1:
      raise ValueError(f"num_mals must be at least 1, not {self.num_mals}")


def _to_tuple(value: Any) -> Any:
  if isinstance(value, (list, tuple)):
    return tuple(_to_tuple(v) for v in value)
  return value
