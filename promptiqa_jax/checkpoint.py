"""Checkpoints: exported model directories, and the training run's own checkpoints.

Layout of an exported model directory (`save_model`, `load_model`, `export_model`):
  DIR/model_config.json   ModelConfig fields
  DIR/variables/          orbax checkpoint of {"params": ..., "batch_stats": ...}
Training checkpoints (`checkpoint_manager`, `save_checkpoint`, `restore_checkpoint`) live in
WORKDIR/checkpoints/<step>/: the train state, the grain iterator's state and the config.
"""
from __future__ import annotations

import json
import os
import shutil
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from promptiqa_jax.models.config import ModelConfig
from promptiqa_jax.models.promptiqa import abstract_variables

CONFIG_FILE = "model_config.json"
VARIABLES_DIR = "variables"


def _checkpointer() -> ocp.StandardCheckpointer:
  """A checkpointer that reads and writes from this process alone.

  Orbax's default joins every process of a multi-process job in barriers, so a model exported by
  process 0 alone (as training does) would wait forever for the others. Exported variables are
  host numpy arrays, complete on each process, so no other process has anything to add.
  """
  me = jax.process_index()
  return ocp.StandardCheckpointer(multiprocessing_options=ocp.options.MultiprocessingOptions(
      primary_host=me, active_processes={me}))


def save_model(directory: str | os.PathLike, variables: Any, config: ModelConfig) -> None:
  """Writes `variables` and `config` under `directory` (created; must not hold a model yet)."""
  directory = os.path.abspath(directory)
  os.makedirs(directory, exist_ok=True)
  target = os.path.join(directory, VARIABLES_DIR)
  if os.path.exists(target):
    raise FileExistsError(f"{directory} already holds a model; choose an empty directory")
  # Empty collections (a CNN-backbone model has no BatchNorm statistics) are left out, as
  # `load_model` leaves them out of the structure it restores into.
  variables = {k: v for k, v in dict(variables).items() if jax.tree_util.tree_leaves(v)}
  with _checkpointer() as checkpointer:
    checkpointer.save(target, jax.tree_util.tree_map(np.asarray, variables))
  with open(os.path.join(directory, CONFIG_FILE), "w") as f:
    json.dump(config.to_dict(), f, indent=2)


def resolve_model_dir(directory: str | os.PathLike) -> str:
  """A model directory, or a training workdir (its `best_model/`, else its final `model/`)."""
  directory = os.path.abspath(directory)
  if not os.path.isfile(os.path.join(directory, CONFIG_FILE)):
    for exported in ("best_model", "model"):
      if os.path.isfile(os.path.join(directory, exported, CONFIG_FILE)):
        return os.path.join(directory, exported)
  return directory


def load_model(directory: str | os.PathLike) -> tuple[dict[str, Any], ModelConfig]:
  """Reads a model directory (or a training workdir) -> (variables as numpy, ModelConfig)."""
  directory = resolve_model_dir(directory)
  config_path = os.path.join(directory, CONFIG_FILE)
  if not os.path.isfile(config_path):
    raise FileNotFoundError(
        f"{directory}: not a promptiqa_jax model directory (no {CONFIG_FILE}); create one with "
        "`promptiqa-jax convert --torch best_model.pth.tar --out DIR` or by training")
  with open(config_path) as f:
    config = ModelConfig.from_mapping(json.load(f))
  target = {k: jax.tree_util.tree_map(lambda leaf: np.zeros(leaf.shape, leaf.dtype), v)
            for k, v in abstract_variables(config).items() if jax.tree_util.tree_leaves(v)}
  with _checkpointer() as checkpointer:
    variables = checkpointer.restore(os.path.join(directory, VARIABLES_DIR), target)
  return jax.tree_util.tree_map(np.asarray, variables), config


def export_model(directory: str | os.PathLike, variables: Any, config: ModelConfig) -> None:
  """`save_model` replacing any model in `directory`: written beside it, then renamed over it, so
  that a reader never finds half a model."""
  directory = os.path.abspath(directory)
  staging = directory + ".tmp"
  shutil.rmtree(staging, ignore_errors=True)
  save_model(staging, variables, config)
  shutil.rmtree(directory, ignore_errors=True)
  os.replace(staging, directory)


def checkpoint_manager(workdir: str | os.PathLike, max_to_keep: int,
                       asynchronous: bool = True) -> ocp.CheckpointManager:
  """The orbax manager of WORKDIR/checkpoints, keeping the last `max_to_keep` steps."""
  options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                         enable_async_checkpointing=asynchronous)
  return ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), "checkpoints"),
                               options=options)


def save_checkpoint(manager: ocp.CheckpointManager, state: Any, iterator: Any, config: Any,
                    force: bool = False) -> None:
  """Saves a train state (at its `step`), the grain `iterator`'s position and the `config`."""
  import grain  # Heavy; the training loop has it loaded already.

  step = int(jax.device_get(state.step))
  manager.save(step, force=force, args=ocp.args.Composite(
      state=ocp.args.StandardSave(state),
      data=grain.checkpoint.CheckpointSave(iterator),
      config=ocp.args.JsonSave(config.to_dict())))


def restore_checkpoint(manager: ocp.CheckpointManager, abstract_state: Any, iterator: Any) -> Any:
  """The latest step's train state, laid out as `abstract_state`; moves `iterator` to where it
  was."""
  import grain  # Heavy; the training loop has it loaded already.

  restored = manager.restore(manager.latest_step(), args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract_state),
      data=grain.checkpoint.CheckpointRestore(iterator)))
  return restored["state"]
