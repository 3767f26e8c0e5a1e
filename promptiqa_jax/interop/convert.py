"""Mapping between the release's PyTorch state_dict and this port's Flax variables.

Every Flax leaf has exactly one torch key (`torch_key`), so the mapping runs both ways: a release
checkpoint becomes Flax variables (`torch_to_flax`), and Flax variables become a state_dict with the
release's names (`flax_to_torch`) for the PyTorch oracle and benchmarks. Arrays are numpy here; torch
is imported only to read a checkpoint file.
"""
from __future__ import annotations

import os
import re
from typing import Any, Mapping

import flax
import numpy as np

from promptiqa_jax.models.config import ModelConfig
from promptiqa_jax.models.promptiqa import abstract_variables

# Flax module names that are a list element in the reference (`blocks_3` -> `blocks.3`).
_INDEXED = re.compile(r"^(blocks|i_p_fusion|prompt_fusion|attention_module)_(\d+)$")
_RENAMED = {
    "patch_embed": "patch_embed.proj",
    "pair_mlp_in": "mlp.0",
    "pair_mlp_out": "mlp.2",
    "score_hidden": "score_block.0",
    "score_out": "score_block.3",
}
_LEAVES = {"kernel": "weight", "scale": "weight", "mean": "running_mean", "var": "running_var"}


class CheckpointMismatchError(ValueError):
  """A state_dict that does not fill this model exactly; lists every offending key."""


def torch_key(path: tuple[str, ...]) -> str:
  """The release's state_dict key of a Flax leaf path (collection name excluded)."""
  parts = []
  for index, name in enumerate(path[:-1]):
    if (match := re.fullmatch(r"mals_(\d+)", name)):
      parts.append(f"MALs.{match.group(1)}")
    elif (match := _INDEXED.fullmatch(name)):
      parts.append(f"{match.group(1)}.{match.group(2)}")
    elif index > 0 and path[index - 1] == "cnn" and (match := re.fullmatch(r"(conv|bn)_(\d+)", name)):
      # The reference's head is one nn.Sequential of (conv, bn, relu, pool) per stage.
      parts.append(str(4 * int(match.group(2)) + (match.group(1) == "bn")))
    else:
      parts.append(_RENAMED.get(name, name))
  parts.append(_LEAVES.get(path[-1], path[-1]))
  return ".".join(parts)


def _to_flax(value: np.ndarray, target_shape: tuple[int, ...]) -> np.ndarray:
  if value.ndim == 4 and len(target_shape) == 4:  # conv [O, I, kh, kw] -> [kh, kw, I, O]
    return value.transpose(2, 3, 1, 0)
  if value.ndim == 4 and len(target_shape) == 2:  # 1x1 conv used as a Dense layer
    return value[:, :, 0, 0].T
  if value.ndim == 2 and len(target_shape) == 2:  # Linear [out, in] -> [in, out]
    return value.T
  return value


def _to_torch(value: np.ndarray, torch_shape: tuple[int, ...]) -> np.ndarray:
  if value.ndim == 4:
    return value.transpose(3, 2, 0, 1)
  if value.ndim == 2 and len(torch_shape) == 4:
    return value.T[:, :, None, None]
  if value.ndim == 2:
    return value.T
  return value


def torch_to_flax(state_dict: Mapping[str, np.ndarray], config: ModelConfig) -> dict[str, Any]:
  """Release state_dict (numpy arrays, `module.` prefix allowed) -> Flax `{params, batch_stats}`.

  Raises CheckpointMismatchError listing missing, unexpected and mis-shaped keys.
  """
  state = {k.removeprefix("module."): np.asarray(v) for k, v in state_dict.items()}
  expected = flax.traverse_util.flatten_dict(flax.core.unfreeze(abstract_variables(config)))
  consumed, missing, misshaped, flat = set(), [], [], {}
  for path, leaf in expected.items():
    key = torch_key(path[1:])
    if key not in state:
      missing.append(key)
      continue
    consumed.add(key)
    value = _to_flax(state[key], leaf.shape)
    if value.shape != leaf.shape:
      misshaped.append(f"{key}: checkpoint {tuple(state[key].shape)}, model wants "
                       f"{tuple(_to_torch(np.zeros(leaf.shape), state[key].shape).shape)}")
      continue
    flat[path] = np.ascontiguousarray(value, dtype=leaf.dtype)
  # BatchNorm's update counter has no role in the forward pass.
  consumed.update(k for k in state if k.endswith(".num_batches_tracked")
                  and k.replace("num_batches_tracked", "running_mean") in consumed)
  unexpected = sorted(set(state) - consumed)
  if missing or unexpected or misshaped:
    lines = [f"{title} ({len(keys)}): {', '.join(keys)}"
             for title, keys in (("missing", missing), ("unexpected", unexpected),
                                 ("mis-shaped", misshaped)) if keys]
    raise CheckpointMismatchError(
        "The checkpoint does not match the model config; " + "; ".join(lines))
  return flax.traverse_util.unflatten_dict(flat)


def flax_to_torch(variables: Mapping[str, Any], torch_shapes: Mapping[str, tuple[int, ...]]
                  ) -> dict[str, np.ndarray]:
  """Flax variables -> state_dict arrays with the release's names (no `module.` prefix).

  `torch_shapes` (from the torch model's state_dict) decides 1x1-conv vs Linear layouts.
  """
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(variables))
  state = {}
  for path, value in flat.items():
    key = torch_key(path[1:])
    state[key] = np.ascontiguousarray(_to_torch(np.asarray(value), tuple(torch_shapes[key])))
  return state


def load_torch_checkpoint(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
  """Reads a release checkpoint safely (`weights_only=True`) -> (numpy state_dict, other entries)."""
  try:
    import torch  # Only checkpoint conversion needs torch.
  except ModuleNotFoundError as err:
    raise ModuleNotFoundError("converting a release checkpoint needs PyTorch: "
                              "pip install 'promptiqa-jax[torch]'", name="torch") from err

  if not os.path.exists(path):
    raise FileNotFoundError(f"{path}: no such checkpoint file")
  try:
    payload = torch.load(path, map_location="cpu", weights_only=True)
  except Exception as err:
    raise ValueError(f"{path}: not a readable PyTorch checkpoint ({err})") from err
  state = payload.get("state_dict", payload) if isinstance(payload, dict) else None
  if not isinstance(state, dict):
    raise ValueError(f"{path}: expected a dict with a 'state_dict' entry, got {type(payload).__name__}")
  meta = {k: v for k, v in payload.items() if k != "state_dict"} if "state_dict" in payload else {}
  arrays = {k: v.detach().cpu().numpy() for k, v in state.items() if hasattr(v, "detach")}
  return arrays, meta
