"""Backbone initialisation from a pretrained ViT file the user supplies.

PromptIQA starts its ViT-B/8 from timm's `vit_base_patch8_224`, itself converted from the AugReg
release (Steiner et al. 2021). Two layouts of those weights load here, chosen by file suffix:

* `.npz`: the AugReg / vision_transformer checkpoint (pre-linen Flax names, as timm's
  `_load_weights` reads them): `embedding/{kernel [p, p, 3, D], bias}`, `cls [1, 1, D]`,
  `Transformer/posembed_input/pos_embedding [1, 1 + g*g, D]` (class-token row first), and per block
  `Transformer/encoderblock_N/` + `LayerNorm_0`, `MultiHeadDotProductAttention_1/{query,key,value}`
  (kernel [D, heads, head_dim], bias [heads, head_dim]), `.../out` (kernel [heads, head_dim, D]),
  `LayerNorm_2`, `MlpBlock_3/Dense_{0,1}`. A whole train state (`opt/target/` prefix) also loads.
* `.pth` / `.pt` / `.bin` (torch.load with weights_only=True) or `.safetensors` (when the
  `safetensors` package is installed): a timm state_dict (`cls_token`, `pos_embed`,
  `patch_embed.proj.weight`, `blocks.N.attn.qkv.weight [3D, D]`, ...), bare or under `state_dict`
  / `model`, its keys optionally prefixed by `module.` and/or `vit.`; with a `vit.` prefix (a
  PromptIQA release checkpoint) only those keys are the backbone. Its names are the release's ViT
  keys, so the mapping is `convert.torch_key`.

Only the first `config.vit_depth` blocks are read; later blocks, the final encoder norm, the
classifier head and anything else are ignored and reported in a logged note.

Arrays are numpy float32; torch is imported only to read a `.pth`/`.bin` file.
"""
from __future__ import annotations

import functools
import logging
import math
import os
import re
from typing import Any, Callable, Mapping, Sequence

import flax
import jax
import jax.numpy as jnp
import numpy as np

from promptiqa_jax.interop.convert import CheckpointMismatchError, _to_flax, torch_key
from promptiqa_jax.models.config import ModelConfig
from promptiqa_jax.models.vit import VisionTransformer

_log = logging.getLogger(__name__)

Path = tuple[str, ...]

_TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".tar")
_RESIZE_METHODS = ("bicubic", "linear")

# AugReg names of the Flax leaves outside the blocks.
_AUGREG_STEM = {
    ("patch_embed", "kernel"): "embedding/kernel",
    ("patch_embed", "bias"): "embedding/bias",
    ("cls_token",): "cls",
    ("pos_embed",): "Transformer/posembed_input/pos_embedding",
}
# Block-relative AugReg names of the block leaves other than the fused qkv. The numbering is the
# pre-linen Flax one (a counter over all submodules of the block), as the released files store it.
_MHA = "MultiHeadDotProductAttention_1"
_AUGREG_BLOCK = {
    ("norm1", "scale"): "LayerNorm_0/scale",
    ("norm1", "bias"): "LayerNorm_0/bias",
    ("attn", "proj", "kernel"): f"{_MHA}/out/kernel",
    ("attn", "proj", "bias"): f"{_MHA}/out/bias",
    ("norm2", "scale"): "LayerNorm_2/scale",
    ("norm2", "bias"): "LayerNorm_2/bias",
    ("mlp", "fc1", "kernel"): "MlpBlock_3/Dense_0/kernel",
    ("mlp", "fc1", "bias"): "MlpBlock_3/Dense_0/bias",
    ("mlp", "fc2", "kernel"): "MlpBlock_3/Dense_1/kernel",
    ("mlp", "fc2", "bias"): "MlpBlock_3/Dense_1/bias",
}
_AUGREG_BLOCK_INDEX = re.compile(r"^Transformer/encoderblock_(\d+)/")
_TIMM_BLOCK_INDEX = re.compile(r"^blocks\.(\d+)\.")


def load_vit_backbone(path: str | os.PathLike, config: ModelConfig, *,
                      resize_method: str = "bicubic") -> dict[str, Any]:
  """Reads a pretrained ViT file -> the Flax `params['vit']` subtree for `config` (numpy float32).

  The file's width, patch size and (for `.npz`, where it is recorded) head count must equal the
  config's, and it must hold at least `config.vit_depth` blocks; its first `vit_depth` blocks are
  used. When the file's position grid differs from `config.grid` the position embedding is resized
  with `resize_pos_embed` (`resize_method`: "bicubic" or "linear"), so a model at a smaller
  `image_size` can still start from the weights.

  Raises:
    FileNotFoundError: no file at `path`.
    ValueError: an unknown suffix, an unreadable file, or a ViT of another width, patch size, head
      count or smaller depth than the config's (the message gives both).
    CheckpointMismatchError: entries the config needs are missing or mis-shaped (all listed).
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path}: no such pretrained ViT file")
  if resize_method not in _RESIZE_METHODS:
    raise ValueError(f"resize_method must be one of {_RESIZE_METHODS}, not {resize_method!r}")
  expected = _expected_shapes(config)
  suffix = os.path.splitext(path)[1].lower()
  if suffix == ".npz":
    with np.load(path, allow_pickle=False) as archive:
      flat, ignored, file_depth = _from_augreg(archive, expected, config, path)
  elif suffix in _TORCH_SUFFIXES or suffix == ".safetensors":
    state = _read_safetensors(path) if suffix == ".safetensors" else _read_torch(path)
    flat, ignored, file_depth = _from_timm(state, expected, config, path)
  else:
    raise ValueError(f"{path}: unknown pretrained ViT format {suffix!r}; expected an AugReg .npz, "
                     f"a timm state_dict ({', '.join(_TORCH_SUFFIXES)}) or .safetensors")

  old_rows = flat[("pos_embed",)].shape[1]
  flat[("pos_embed",)] = resize_pos_embed(flat[("pos_embed",)], config.grid, resize_method)
  misshaped = [f"{'/'.join(p)}: file gives {flat[p].shape}, the config wants {tuple(shape)}"
               for p, shape in expected.items() if flat[p].shape != tuple(shape)]
  if misshaped:
    raise CheckpointMismatchError(f"{path}: mis-shaped ({len(misshaped)}): {'; '.join(misshaped)}")

  note = f"{path}: loaded blocks 0-{config.vit_depth - 1} of the file's {file_depth}"
  if old_rows != flat[("pos_embed",)].shape[1]:
    old_grid = math.isqrt(old_rows - 1)
    note += (f"; position grid resized {old_grid}x{old_grid} -> {config.grid}x{config.grid} "
             f"({resize_method})")
  if ignored:
    note += f"; ignored {', '.join(ignored)}"
  _log.info(note)
  return flax.traverse_util.unflatten_dict(
      {p: np.ascontiguousarray(v, dtype=np.float32) for p, v in flat.items()})


def merge_backbone(params: Mapping[str, Any], vit_params: Mapping[str, Any]) -> dict[str, Any]:
  """Returns a copy of the model's `params` with `params['vit']` replaced by `vit_params`.

  `params` is the `params` collection of PromptIQA (not the whole variables dict); the new leaves
  become jax arrays with the dtypes of the ones they replace, and `params` itself is not changed. Raises CheckpointMismatchError listing missing,
  unexpected and mis-shaped leaves when `vit_params` does not fit the model's ViT exactly.
  """
  if "vit" not in params:
    raise ValueError(f"params has no 'vit' subtree (top-level keys: {sorted(params)}); pass the "
                     "'params' collection, e.g. variables['params']")
  current = flax.traverse_util.flatten_dict(flax.core.unfreeze(params["vit"]))
  new = flax.traverse_util.flatten_dict(flax.core.unfreeze(vit_params))
  problems = []
  for title, paths in (("missing", sorted(set(current) - set(new))),
                       ("unexpected", sorted(set(new) - set(current)))):
    if paths:
      problems.append(f"{title} ({len(paths)}): {', '.join('/'.join(p) for p in paths)}")
  misshaped = [f"{'/'.join(p)}: {np.shape(new[p])} vs the model's {np.shape(current[p])}"
               for p in sorted(set(current) & set(new)) if np.shape(new[p]) != np.shape(current[p])]
  if misshaped:
    problems.append(f"mis-shaped ({len(misshaped)}): {'; '.join(misshaped)}")
  if problems:
    raise CheckpointMismatchError("The backbone does not fit params['vit']: " + "; ".join(problems))
  merged = dict(params)
  merged["vit"] = flax.traverse_util.unflatten_dict(
      {p: jnp.asarray(new[p], dtype=leaf.dtype) for p, leaf in current.items()})
  return merged


def resize_pos_embed(pos_embed: np.ndarray, grid: int, method: str = "bicubic") -> np.ndarray:
  """`[1, 1 + g*g, D]` -> `[1, 1 + grid*grid, D]`; row 0 (the class token's) is kept as it is.

  The other rows, a row-major g x g grid, are resampled as a D-channel image with
  `jax.image.resize`: half-pixel-centred sampling (the grid covers the same image area at both
  sizes), Keys cubic (a = -0.5) or linear weights, and an antialiasing (widened) kernel when
  shrinking so that a large grid is averaged down rather than subsampled. At g == grid the input is
  returned unchanged.
  """
  rows = pos_embed.shape[1] - 1 if pos_embed.ndim == 3 and pos_embed.shape[0] == 1 else 0
  old = math.isqrt(rows)
  if rows < 1 or old * old != rows:
    raise ValueError(f"pos_embed of shape {pos_embed.shape} is not [1, 1 + g*g, D]")
  width = pos_embed.shape[2]
  if old == grid:
    return pos_embed
  resized = jax.image.resize(jnp.asarray(pos_embed[0, 1:].reshape(old, old, width), jnp.float32),
                             (grid, grid, width), method=method, antialias=True)
  return np.concatenate([pos_embed[:, :1], np.asarray(resized).reshape(1, grid * grid, width)], 1)


@functools.cache
def _expected_shapes(config: ModelConfig) -> dict[Path, tuple[int, ...]]:
  """Flat leaf paths and shapes of `params['vit']` for `config`, traced without computing.

  Cached (a config is hashable): tracing takes a fraction of a second, more than reading a tiny
  file. Callers only read the returned dict.
  """
  model = VisionTransformer(config.patch_size, config.vit_width, config.vit_depth,
                            config.vit_heads, config.taps, config.mlp_ratio)
  images = jax.ShapeDtypeStruct((1, config.image_size, config.image_size, 3), jnp.float32)
  shapes = jax.eval_shape(lambda x: model.init(jax.random.key(0), x), images)["params"]
  return {p: leaf.shape for p, leaf in flax.traverse_util.flatten_dict(shapes).items()}


def _check_architecture(path: str, config: ModelConfig, width: int, patch: int, depth: int,
                        heads: int | None) -> None:
  """Raises ValueError, naming both sides, when the file's ViT cannot fill the config's."""
  if (width == config.vit_width and patch == config.patch_size and depth >= config.vit_depth
      and heads in (None, config.vit_heads)):
    return
  held = f"width {width}, depth {depth}, patch {patch}"
  held += "" if heads is None else f", {heads} heads"
  raise ValueError(
      f"{path}: the file holds a ViT of {held}; the config asks for width {config.vit_width}, "
      f"depth {config.vit_depth}, patch {config.patch_size}, {config.vit_heads} heads "
      "(the depth may be smaller than the file's: its first blocks are used)")


def _augreg_leaf(path: Path) -> tuple[list[str], Callable[[list[np.ndarray]], np.ndarray]]:
  """The AugReg entries of one Flax leaf and how their arrays become that leaf."""
  if not path[0].startswith("blocks_"):
    return [_AUGREG_STEM[path]], lambda arrays: arrays[0]
  block, sub = f"Transformer/encoderblock_{path[0].removeprefix('blocks_')}/", path[1:]
  if sub[:2] == ("attn", "qkv"):
    # Kernels [D, heads, head_dim] -> [D, heads*head_dim], biases [heads, head_dim] ->
    # [heads*head_dim], stacked q|k|v on the output axis: the (q|k|v, head, head_dim) order the
    # fused Dense splits.
    names = [f"{block}{_MHA}/{part}/{sub[2]}" for part in ("query", "key", "value")]
    return names, lambda arrays: np.concatenate([a.reshape(*a.shape[:-2], -1) for a in arrays], -1)
  if sub == ("attn", "proj", "kernel"):
    # [heads, head_dim, D] -> [heads*head_dim, D]: the input axis in the (head, head_dim) order of
    # the attention output.
    return [block + _AUGREG_BLOCK[sub]], lambda arrays: arrays[0].reshape(-1, arrays[0].shape[-1])
  return [block + _AUGREG_BLOCK[sub]], lambda arrays: arrays[0]


def _from_augreg(archive: Mapping[str, np.ndarray], expected: Mapping[Path, Sequence[int]],
                 config: ModelConfig, path: str) -> tuple[dict[Path, np.ndarray], list[str], int]:
  """AugReg npz -> (flat Flax leaves, the ignored entries summarised, the file's depth).

  Reads only the entries it uses: an npz loads each array on access.
  """
  # A full vision_transformer train state keeps the parameters under `opt/target/`.
  prefix = "opt/target/" if "opt/target/embedding/kernel" in archive.files else ""
  names = {k.removeprefix(prefix) for k in archive.files}
  depth = len({int(m.group(1)) for k in names if (m := _AUGREG_BLOCK_INDEX.match(k))})
  if "embedding/kernel" in names:
    patch, _, _, width = archive[prefix + "embedding/kernel"].shape
    query = f"Transformer/encoderblock_0/{_MHA}/query/kernel"
    heads = archive[prefix + query].shape[1] if query in names else None
    _check_architecture(path, config, width, patch, depth, heads)
  sources = {p: _augreg_leaf(p) for p in expected}
  missing = sorted({n for keys, _ in sources.values() for n in keys if n not in names})
  if missing:
    raise CheckpointMismatchError(f"{path}: missing ({len(missing)}): {', '.join(missing)}")
  flat = {}
  for p, (keys, combine) in sources.items():
    arrays = [archive[prefix + k] for k in keys]
    try:
      flat[p] = combine(arrays)
    except ValueError as err:
      raise CheckpointMismatchError(
          f"{path}: mis-shaped {', '.join(keys)} {[a.shape for a in arrays]} ({err})") from err
  used = {k for keys, _ in sources.values() for k in keys}
  return flat, _summarise(sorted(names - used), _AUGREG_BLOCK_INDEX), depth


def _from_timm(state: Mapping[str, np.ndarray], expected: Mapping[Path, Sequence[int]],
               config: ModelConfig, path: str) -> tuple[dict[Path, np.ndarray], list[str], int]:
  """timm state_dict -> (flat Flax leaves, the ignored entries summarised, the file's depth)."""
  state = {k.removeprefix("module."): v for k, v in state.items()}
  outside = 0
  if any(k.startswith("vit.") for k in state):
    # A PromptIQA release checkpoint: the rest of the model (whose query blocks are also named
    # `blocks.N`) is no part of the backbone.
    outside = sum(not k.startswith("vit.") for k in state)
    state = {k.removeprefix("vit."): v for k, v in state.items() if k.startswith("vit.")}
  depth = len({int(m.group(1)) for k in state if (m := _TIMM_BLOCK_INDEX.match(k))})
  if "patch_embed.proj.weight" in state:
    width, _, patch, _ = state["patch_embed.proj.weight"].shape
    _check_architecture(path, config, width, patch, depth, heads=None)
  # The timm keys are the release's ViT keys without their `vit.` prefix.
  keys = {p: torch_key(p) for p in expected}
  missing = sorted(k for k in keys.values() if k not in state)
  if missing:
    raise CheckpointMismatchError(f"{path}: missing ({len(missing)}): {', '.join(missing)}")
  flat = {p: _to_flax(state[k], tuple(expected[p])) for p, k in keys.items()}
  ignored = _summarise(sorted(set(state) - set(keys.values())), _TIMM_BLOCK_INDEX)
  if outside:
    ignored.append(f"{outside} entries without the 'vit.' prefix")
  return flat, ignored, depth


def _read_torch(path: str) -> dict[str, np.ndarray]:
  """A torch file's state_dict (bare, or under 'state_dict' / 'model') as float32 numpy arrays."""
  import torch  # Only .pth/.bin files need torch.

  try:
    payload = torch.load(path, map_location="cpu", weights_only=True)
  except Exception as err:
    raise ValueError(f"{path}: not a readable PyTorch file ({err})") from err
  if isinstance(payload, dict):
    # Training checkpoints nest the weights (timm/PromptIQA: 'state_dict', DeiT-style: 'model').
    for key in ("state_dict", "model"):
      if isinstance(payload.get(key), dict):
        payload = payload[key]
        break
  if not isinstance(payload, dict):
    raise ValueError(
        f"{path}: expected a state_dict (a dict of tensors), got {type(payload).__name__}")
  # Non-float entries (e.g. BatchNorm counters of a release checkpoint) are no ViT weights.
  return {k: v.detach().float().numpy() for k, v in payload.items()
          if isinstance(v, torch.Tensor) and v.is_floating_point()}


def _read_safetensors(path: str) -> dict[str, np.ndarray]:
  try:
    from safetensors.numpy import load_file
  except ImportError as err:
    raise ValueError(f"{path}: reading .safetensors needs the 'safetensors' package "
                     "(pip install safetensors), or save the state_dict with torch.save") from err
  return load_file(path)


def _summarise(names: Sequence[str], block_index: re.Pattern[str]) -> list[str]:
  """Ignored entry names, with the blocks collapsed to one 'blocks a-b' item."""
  indices = {int(m.group(1)) for name in names if (m := block_index.match(name))}
  items = [f"blocks {min(indices)}-{max(indices)}"] if indices else []
  return items + [name for name in names if not block_index.match(name)]
