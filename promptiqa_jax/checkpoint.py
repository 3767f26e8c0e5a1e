"""Checkpoints: exported model directories, and the training run's own checkpoints.

Layout of an exported model directory (`save_model`, `load_model`, `export_model`):
  DIR/model_config.json   ModelConfig fields
  DIR/variables/          orbax checkpoint of {"params": ..., "batch_stats": ...}
Training checkpoints (`checkpoint_manager`, `save_checkpoint`, `restore_checkpoint`) live in
WORKDIR/checkpoints/<step>/: the train state, the grain iterator's state and the config.
Every directory may be local or in a bucket (gs://; see promptiqa_jax.storage).
"""
from __future__ import annotations

import json
import os
import shutil
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from promptiqa_jax import storage
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
  """Writes `variables` and `config` under `directory` (created; must not hold a model yet).

  The config file comes last: a directory holding it holds a whole model.
  """
  directory = storage.path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  target = directory / VARIABLES_DIR
  if target.exists():
    raise FileExistsError(f"{directory} already holds a model; choose an empty directory")
  # Empty collections (a CNN-backbone model has no BatchNorm statistics) are left out, as
  # `load_model` leaves them out of the structure it restores into.
  variables = {k: v for k, v in dict(variables).items() if jax.tree_util.tree_leaves(v)}
  with _checkpointer() as checkpointer:
    checkpointer.save(target, jax.tree_util.tree_map(np.asarray, variables))
  storage.write_text(directory / CONFIG_FILE, json.dumps(config.to_dict(), indent=2))


def resolve_model_dir(directory: str | os.PathLike) -> epath.Path:
  """A model directory, or a training workdir (its `best_model/`, else its final `model/`)."""
  directory = storage.path(directory)
  if not (directory / CONFIG_FILE).is_file():
    for exported in ("best_model", "model"):
      if (directory / exported / CONFIG_FILE).is_file():
        return directory / exported
  return directory


def load_model(directory: str | os.PathLike) -> tuple[dict[str, Any], ModelConfig]:
  """Reads a model directory (or a training workdir) -> (variables as numpy, ModelConfig)."""
  directory = resolve_model_dir(directory)
  config_path = directory / CONFIG_FILE
  if not config_path.is_file():
    raise FileNotFoundError(
        f"{directory}: not a promptiqa_jax model directory (no {CONFIG_FILE}); create one with "
        "`promptiqa-jax convert --torch best_model.pth.tar --out DIR` or by training")
  config = ModelConfig.from_mapping(json.loads(config_path.read_text()))
  target = {k: jax.tree_util.tree_map(lambda leaf: np.zeros(leaf.shape, leaf.dtype), v)
            for k, v in abstract_variables(config).items() if jax.tree_util.tree_leaves(v)}
  with _checkpointer() as checkpointer:
    variables = checkpointer.restore(directory / VARIABLES_DIR, target)
  return jax.tree_util.tree_map(np.asarray, variables), config


def export_model(directory: str | os.PathLike, variables: Any, config: ModelConfig) -> None:
  """`save_model` replacing any model in `directory`: written beside it, then renamed over it, so
  that a reader never finds half a model."""
  directory = storage.path(directory)
  if storage.is_remote(directory):
    # A bucket renames a folder object by object. Instead the old model's config file goes first
    # and the new one's comes last (save_model): a reader finds a whole model or none.
    if (directory / CONFIG_FILE).exists():
      (directory / CONFIG_FILE).unlink()
    if directory.exists():
      directory.rmtree()
    save_model(directory, variables, config)
    return
  directory = os.fspath(directory)
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
  return ocp.CheckpointManager(storage.path(workdir) / "checkpoints", options=options)


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
