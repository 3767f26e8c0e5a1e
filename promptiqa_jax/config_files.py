"""Experiment config files (`configs/NAME.py` with `get_config(arg)`) loaded by path, as
`--config path[:arg]` loads them, for tools that pick a config by name at run time."""
from __future__ import annotations

import importlib.util
import os
import types
from typing import Any


def config_module(path: str) -> types.ModuleType:
  """The config file at `path` as a module (its get_config and whatever else it declares)."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"--config {path}: no such config file")
  name = "config_" + os.path.splitext(os.path.basename(path))[0]
  module_spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module


def load_config(spec: str) -> Any:
  """`path/to/config.py[:arg]` -> the ConfigDict of its `get_config(arg)`."""
  path, _, arg = str(spec).partition(":")
  return config_module(path).get_config(arg)
