"""The training program: `python -m promptiqa_jax.train --config configs/NAME.py --workdir DIR`.

A pure update step `(state, batch) -> (state, metrics)` under `jax.jit` with explicit shardings on a
`(data, fsdp)` mesh and a donated state; per-process input from the grain stream assembled into
global arrays; orbax checkpoints (train state, grain iterator state, config) with automatic resume
and a clean save on SIGTERM; evaluation every `train.eval_every` steps. Multi-process: on TPU pods
and under SLURM `jax.distributed.initialize()` finds its peers (--distributed=on); elsewhere pass
--coordinator_address, --num_processes and --process_id. launch/ holds a launcher for each case.
"""
from __future__ import annotations

import json
import os
import signal
import sys
import time
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
from absl import app, flags, logging
from ml_collections import config_flags

from promptiqa_jax import sharding
from promptiqa_jax.checkpoint import save_model
from promptiqa_jax.models.config import ModelConfig
from promptiqa_jax.models.promptiqa import PromptIQANet
from promptiqa_jax.optim import build_optimizer


@flax.struct.dataclass
class TrainState:
  """Everything the update step changes. `rng` is a raw uint32 key, so it checkpoints as an array."""

  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  rng: jax.Array


def model_config_of(config: ml_collections.ConfigDict) -> ModelConfig:
  return ModelConfig.from_mapping(config.model.to_dict())


def trainable_fn(model_config: ModelConfig) -> Callable[[tuple[str, ...]], bool] | None:
  """Which parameters the optimiser updates (None: all)."""
  if model_config.backbone != "vit" and model_config.freeze_backbone:
    return lambda path: path[:2] != ("backbone", "cnn")
  return None


def init_variables(model: PromptIQANet, model_config: ModelConfig, init: Any, rng: jax.Array,
                   group_size: int) -> dict[str, Any]:
  """Random init, then the pretrained pieces the `init` config section names."""
  size = model_config.image_size
  images = jnp.zeros((1, group_size, size, size, 3), jnp.float32)
  scores = jnp.zeros((1, group_size), jnp.float32)
  variables = flax.core.unfreeze(jax.jit(model.init)(rng, images, scores))
  if init.get("checkpoint"):
    from promptiqa_jax.checkpoint import load_model

    loaded, loaded_config = load_model(init.checkpoint)
    if loaded_config != model_config:
      raise ValueError(f"init.checkpoint {init.checkpoint} holds a model of another config: "
                       f"{loaded_config} vs {model_config}")
    return flax.core.unfreeze(loaded)
  if init.get("pretrained_vit"):
    from promptiqa_jax.interop.pretrained import load_vit_backbone, merge_backbone

    variables["params"] = merge_backbone(variables["params"],
                                         load_vit_backbone(init.pretrained_vit, model_config))
  if model_config.backbone != "vit":
    from promptiqa_jax.interop.lpips_weights import load_cnn_params

    variables["params"]["backbone"]["cnn"] = load_cnn_params(model_config.backbone,
                                                             init.get("cnn_weights") or None)
  return variables


def make_train_step(model: PromptIQANet, tx: optax.GradientTransformation,
                    schedule: Callable[[Any], Any]) -> Callable[[TrainState, dict], tuple]:
  """The pure update: L1 loss on the leave-one-out predictions, in train mode."""

  def train_step(state: TrainState, batch: dict[str, jax.Array]):
    dropout_rng = jax.random.fold_in(state.rng, state.step)

    def loss_fn(params):
      predictions, updates = model.apply(
          {"params": params, "batch_stats": state.batch_stats}, batch["image"], batch["score"],
          train=True, rngs={"dropout": dropout_rng}, mutable=["batch_stats"])
      return jnp.mean(jnp.abs(predictions - batch["score"])), updates["batch_stats"]

    (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {
        "loss": loss,
        "learning_rate": schedule(state.step),
        "grad_norm": optax.tree.norm(grads),
        "param_norm": optax.tree.norm(params),
    }
    new_state = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                              opt_state=opt_state)
    return new_state, metrics

  return train_step


def jit_train_step(train_step: Callable, mesh: jax.sharding.Mesh, state_shardings: Any) -> Callable:
  """`train_step` under jit: the state laid out by `state_shardings` and donated, the batch's groups
  split over every device of `mesh`, the metrics replicated."""
  return jax.jit(train_step, in_shardings=(state_shardings, sharding.batch_sharding(mesh)),
                 out_shardings=(state_shardings, sharding.replicated(mesh)), donate_argnums=(0,))


def validate_config(config: ml_collections.ConfigDict, device_count: int) -> None:
  """Fails at start, naming the field, for configurations that cannot run."""
  data = config.data
  if int(data.group_size) < 2:
    raise ValueError(f"config.data.group_size must be at least 2, got {data.group_size}")
  if int(data.groups_per_batch) % device_count:
    raise ValueError(f"config.data.groups_per_batch ({data.groups_per_batch}) is not divisible by "
                     f"the {device_count} devices: each device takes whole groups")
  if int(data.image_size) != int(config.model.image_size):
    raise ValueError(f"config.data.image_size ({data.image_size}) != config.model.image_size "
                     f"({config.model.image_size})")
  for field in ("pretrained_vit", "checkpoint", "cnn_weights"):
    path = config.init.get(field)
    if path and not os.path.exists(path):
      raise FileNotFoundError(f"config.init.{field}: {path} does not exist")
  from promptiqa_jax.data import sources

  # Evaluation datasets too: a typo there would otherwise surface after the first eval_every steps.
  evaluates = int(config.train.eval_every) > 0 or bool(config.train.get("final_eval", True))
  for field in ("train", "eval") if evaluates else ("train",):
    for name in data[field]:
      try:
        builder, builder_config, _ = sources.parse_name(name)
        sources.prepared_dir(builder, data.data_dir, builder_config)
      except (ValueError, FileNotFoundError) as err:
        raise type(err)(f"config.data.{field}: {err}") from None


class _Preemption:
  """Remembers a SIGTERM so the loop can save and exit between steps."""

  def __init__(self):
    self.requested = False
    self._previous = signal.signal(signal.SIGTERM, self._handle)

  def close(self) -> None:
    """Gives SIGTERM back to the handler it had (train_and_evaluate may run inside a notebook)."""
    signal.signal(signal.SIGTERM, self._previous)

  def _handle(self, signum, frame):
    logging.warning("SIGTERM received: saving a checkpoint and exiting")
    self.requested = True

  def any_process(self) -> bool:
    if jax.process_count() == 1:
      return self.requested
    from jax.experimental import multihost_utils

    return bool(np.any(multihost_utils.process_allgather(np.array(self.requested))))


def checkpoint_manager(workdir: str, config: ml_collections.ConfigDict) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(
      max_to_keep=int(config.train.keep_checkpoints), create=True,
      enable_async_checkpointing=bool(config.train.get("async_checkpointing", True)))
  return ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), "checkpoints"), options=options)


def _save(manager, state, iterator, config, force=False) -> None:
  import grain

  step = int(jax.device_get(state.step))
  manager.save(step, force=force, args=ocp.args.Composite(
      state=ocp.args.StandardSave(state),
      data=grain.checkpoint.CheckpointSave(iterator),
      config=ocp.args.JsonSave(config.to_dict())))


def _restore(manager, abstract_state, iterator):
  import grain

  step = manager.latest_step()
  restored = manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract_state),
      data=grain.checkpoint.CheckpointRestore(iterator)))
  return restored["state"]


def _host_variables(state: TrainState) -> dict[str, Any]:
  """Parameters and BatchNorm statistics as numpy, gathered to every process."""
  variables = {"params": state.params, "batch_stats": state.batch_stats}
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils

    return multihost_utils.process_allgather(variables, tiled=True)
  return jax.device_get(variables)


class MetricsWriter:
  """Appends metric records to `workdir/metrics.jsonl` and logs them (process 0 only).

  A run that starts at `start_step` first drops the records of later steps: they come from a run
  stopped before its next checkpoint, whose steps are trained again from `start_step`, so the file
  keeps one record per step of the state's actual history.
  """

  def __init__(self, workdir: str, start_step: int = 0):
    self.path = os.path.join(workdir, "metrics.jsonl")
    self.active = jax.process_index() == 0
    if self.active and os.path.exists(self.path):
      with open(self.path) as f:
        kept = [line for line in f if line.strip() and json.loads(line)["step"] <= start_step]
      with open(self.path + ".tmp", "w") as f:
        f.writelines(kept)
      os.replace(self.path + ".tmp", self.path)

  def write(self, step: int, metrics: dict[str, Any]) -> None:
    if not self.active:
      return
    record = {"step": step, **{k: float(v) for k, v in metrics.items()}}
    with open(self.path, "a") as f:
      f.write(json.dumps(record) + "\n")
    print(f"step {step}: " + ", ".join(f"{k}={v:.4g}" for k, v in record.items() if k != "step"),
          flush=True)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> TrainState:
  """Trains (resuming from `workdir` if it holds checkpoints) and evaluates; returns the state."""
  from promptiqa_jax.data import train_stream

  workdir = os.path.abspath(workdir)
  mesh = sharding.make_mesh(int(config.mesh.data), int(config.mesh.fsdp))
  validate_config(config, mesh.size)
  model_config = model_config_of(config)
  model = PromptIQANet(model_config)
  stream = train_stream(config.data, jax.process_index(), jax.process_count())
  steps_per_epoch = stream.steps_per_epoch
  num_steps = int(config.train.num_steps)
  if num_steps <= 0:
    num_steps = int(config.optim.epochs) * steps_per_epoch
  tx, schedule = build_optimizer(config.optim, steps_per_epoch, trainable_fn(model_config))

  rng = jax.random.PRNGKey(int(config.train.seed))
  init_rng, dropout_rng = jax.random.split(rng)

  def create_state():
    variables = init_variables(model, model_config, config.init, init_rng, stream.group_size)
    return TrainState(step=jnp.zeros((), jnp.int32), params=variables["params"],
                      batch_stats=variables.get("batch_stats", {}),
                      opt_state=tx.init(variables["params"]), rng=dropout_rng)

  abstract_state = jax.eval_shape(create_state)
  state_shardings = sharding.state_sharding(abstract_state, mesh, int(config.mesh.fsdp_min_size))
  abstract_state = jax.tree_util.tree_map(
      lambda leaf, s: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=s),
      abstract_state, state_shardings)
  train_step = jit_train_step(make_train_step(model, tx, schedule), mesh, state_shardings)

  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json(indent=2))
  manager = checkpoint_manager(workdir, config)
  iterator = iter(stream)
  if manager.latest_step() is not None:
    state = _restore(manager, abstract_state, iterator)
    logging.warning("resumed from step %d", int(state.step))
  else:
    state = jax.jit(create_state, out_shardings=state_shardings)()
  step = int(jax.device_get(state.step))
  writer = MetricsWriter(workdir, step)
  evaluator = _Evaluator(config, workdir, model_config)
  preemption = _Preemption()
  images_per_step = stream.groups_per_batch * stream.group_size
  timer_start, timer_step = time.perf_counter(), step
  try:
    while step < num_steps:
      batch = sharding.global_batch(next(iterator), mesh)
      state, metrics = train_step(state, batch)
      step += 1
      if step % int(config.train.log_every) == 0 or step == num_steps:
        metrics = jax.device_get(metrics)
        elapsed = time.perf_counter() - timer_start
        metrics["images_per_s"] = images_per_step * (step - timer_step) / max(elapsed, 1e-9)
        metrics["epoch"] = step / steps_per_epoch
        writer.write(step, metrics)
        timer_start, timer_step = time.perf_counter(), step
      if step % int(config.train.checkpoint_every) == 0:
        _save(manager, state, iterator, config)
      if int(config.train.eval_every) > 0 and step % int(config.train.eval_every) == 0:
        evaluator.run(state, step, config.data.eval_split)
      if preemption.any_process():
        # The step may have been saved just above; orbax refuses to save a step twice.
        if manager.latest_step() != step:
          _save(manager, state, iterator, config, force=True)
        manager.wait_until_finished()
        logging.warning("saved step %d after SIGTERM; exiting", step)
        iterator.close()
        sys.exit(0)
  finally:
    preemption.close()
  if manager.latest_step() != step:
    _save(manager, state, iterator, config, force=True)
  manager.wait_until_finished()
  iterator.close()
  evaluator.finish(state, step)
  return state


class _Evaluator:
  """Periodic evaluation, best-model export and the final test evaluation."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str, model_config: ModelConfig):
    self.config = config
    self.workdir = workdir
    self.model_config = model_config
    self.metric = config.train.best_metric
    self.best = -np.inf
    self.scorer = None

  def _scorer(self, state: TrainState):
    from promptiqa_jax.inference import PromptIQA as Scorer

    variables = _host_variables(state)
    if self.scorer is None:
      self.scorer = Scorer(variables, self.model_config,
                           batch_size=int(self.config.data.eval_batch_size))
    else:
      self.scorer.variables = jax.device_put(variables)
    return self.scorer, variables

  def run(self, state: TrainState, step: int, split: str) -> dict[str, Any]:
    from promptiqa_jax import evaluate

    scorer, variables = self._scorer(state)
    result = evaluate.evaluate(scorer, self.config.data, self.config.eval, split=split, step=step,
                               out_dir=self.workdir, plots=False)
    value = _lookup(result, self.metric)
    if jax.process_index() == 0 and np.isfinite(value) and value > self.best:
      self.best = value
      _export(variables, self.model_config, os.path.join(self.workdir, "best_model"))
    return result

  def finish(self, state: TrainState, step: int) -> None:
    scorer, variables = self._scorer(state)
    if jax.process_index() == 0:
      _export(variables, self.model_config, os.path.join(self.workdir, "model"))
    if self.config.train.get("final_eval", True):
      from promptiqa_jax import evaluate

      result = evaluate.evaluate(scorer, self.config.data, self.config.eval,
                                 split=self.config.train.final_split, step=step,
                                 out_dir=self.workdir, name="final")
      if jax.process_index() == 0:
        print(evaluate.format_table(result), flush=True)


def _lookup(result: dict[str, Any], dotted: str) -> float:
  """A metric of an evaluation result by its dotted path, e.g. "summary.all_datasets_own_srcc"."""
  value: Any = result
  for key in dotted.split("."):
    if not isinstance(value, dict) or key not in value:
      raise KeyError(f"config.train.best_metric {dotted!r}: no {key!r} in the evaluation result")
    value = value[key]
  return float("nan") if value is None else float(value)


def _export(variables: Any, model_config: ModelConfig, directory: str) -> None:
  """Replaces the model directory atomically enough: write beside, then rename."""
  import shutil

  staging = directory + ".tmp"
  shutil.rmtree(staging, ignore_errors=True)
  save_model(staging, variables, model_config)
  shutil.rmtree(directory, ignore_errors=True)
  os.replace(staging, directory)


_CONFIG = config_flags.DEFINE_config_file("config", None, "experiment config file", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "where checkpoints, metrics and results go")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None,
                                   "host:port of process 0, for multi-process runs without a "
                                   "cluster manager (TPU pods and SLURM need none)")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "processes in the job")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "this process's index")
_DISTRIBUTED = flags.DEFINE_enum(
    "distributed", "auto", ["auto", "on", "off"],
    "whether to call jax.distributed.initialize(): 'on' always, JAX finding the job itself (TPU "
    "pod slices through the VM metadata, SLURM, Open MPI); 'auto' with --coordinator_address, "
    "inside a SLURM step of several tasks or a GKE TPU job; 'off' never")


def initialize_distributed() -> None:
  """jax.distributed for multi-process runs: explicit flags, or the job JAX detects."""
  mode = _DISTRIBUTED.value
  if mode == "off":
    return
  if _COORDINATOR.value:
    jax.distributed.initialize(coordinator_address=_COORDINATOR.value,
                               num_processes=_NUM_PROCESSES.value, process_id=_PROCESS_ID.value)
  # A TPU VM shows nothing in its environment (JAX asks the metadata server), hence 'on' for pods.
  # SLURM_JOB_ID alone is no sign of several processes: it is also set in an sbatch script's body.
  elif (mode == "on" or int(os.environ.get("SLURM_STEP_NUM_TASKS", "1")) > 1
        or "TPU_WORKER_HOSTNAMES" in os.environ or "MEGASCALE_COORDINATOR_ADDRESS" in os.environ):
    jax.distributed.initialize()


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  initialize_distributed()
  # Orbax and grain log every file operation at INFO; --verbosity=0 brings them back.
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  logging.warning("devices: %s; process %d of %d", jax.devices(), jax.process_index(),
               jax.process_count())
  train_and_evaluate(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
  flags.mark_flags_as_required(["config", "workdir"])
  app.run(main)
