"""Experiment config files (`configs/NAME.py` with `get_config(arg)`) loaded by path, as
`--config path[:arg]` loads them, for tools that pick a config by name at run time."""
from __future__ import annotations

import importlib.util
import os
from typing import Any


def load_config(spec: str) -> Any:
  """`path/to/config.py[:arg]` -> the ConfigDict of its `get_config(arg)`."""
  path, _, arg = str(spec).partition(":")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"--config {path}: no such config file")
  name = "config_" + os.path.splitext(os.path.basename(path))[0]
  module_spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg)
