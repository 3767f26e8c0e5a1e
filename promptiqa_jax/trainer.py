"""Training: the train state, the update step and the loop `python -m promptiqa_jax.train` runs.

A pure update step `(state, batch) -> (state, metrics)` under `jax.jit` with explicit shardings on a
`(data, fsdp)` mesh and a donated state; per-process input from the grain stream assembled into
global arrays; orbax checkpoints (train state, grain iterator state, config) with automatic resume
and a clean save on SIGTERM; evaluation every `train.eval_every` steps, the best model by
`train.best_metric` exported to WORKDIR/best_model and the final one to WORKDIR/model.
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
from absl import logging
from jax.experimental import multihost_utils

from promptiqa_jax import checkpoint
from promptiqa_jax import evaluators
from promptiqa_jax import sharding
from promptiqa_jax.data import datasets as dataset_registry
from promptiqa_jax.data import sources
from promptiqa_jax.inference import PromptIQA
from promptiqa_jax.models.config import ModelConfig
from promptiqa_jax.models.promptiqa import PromptIQANet
from promptiqa_jax.optim import build_optimizer


@flax.struct.dataclass
class TrainState:
  """Everything the update step changes. `rng` is a raw uint32 key, so it checkpoints as an
  array."""

  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  rng: jax.Array


def model_config_of(config: ml_collections.ConfigDict) -> ModelConfig:
  """The ModelConfig of an experiment config's `model` section."""
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
    loaded, loaded_config = checkpoint.load_model(init.checkpoint)
    if loaded_config != model_config:
      raise ValueError(f"init.checkpoint {init.checkpoint} holds a model of another config: "
                       f"{loaded_config} vs {model_config}")
    return flax.core.unfreeze(loaded)
  if init.get("pretrained_vit"):
    # Optional: the weight readers of interop/ serve only runs that start from released weights.
    from promptiqa_jax.interop.pretrained import load_vit_backbone, merge_backbone

    variables["params"] = merge_backbone(variables["params"],
                                         load_vit_backbone(init.pretrained_vit, model_config))
  if model_config.backbone != "vit":
    # Optional: only the CNN backbones read lpips weights.
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
  # Evaluation datasets too: a typo there would otherwise surface after the first eval_every steps.
  evaluates = int(config.train.eval_every) > 0 or bool(config.train.get("final_eval", True))
  for field in ("train", "eval") if evaluates else ("train",):
    for name in data[field]:
      try:
        builder, builder_config, _ = dataset_registry.parse_name(name)
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
    return bool(np.any(multihost_utils.process_allgather(np.array(self.requested))))


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


class _Throughput:
  """Images per second since the last measurement."""

  def __init__(self, images_per_step: int, step: int):
    self.images_per_step = images_per_step
    self._start, self._step = time.perf_counter(), step

  def measure(self, step: int) -> float:
    elapsed = time.perf_counter() - self._start
    rate = self.images_per_step * (step - self._step) / max(elapsed, 1e-9)
    self._start, self._step = time.perf_counter(), step
    return rate


def host_variables(state: TrainState) -> dict[str, Any]:
  """Parameters and BatchNorm statistics as numpy, gathered to every process."""
  variables = {"params": state.params, "batch_stats": state.batch_stats}
  if jax.process_count() > 1:
    return multihost_utils.process_allgather(variables, tiled=True)
  return jax.device_get(variables)


def metric_at(result: dict[str, Any], dotted: str) -> float:
  """A metric of an evaluation result by its dotted path, e.g. "summary.all_datasets_own_srcc"."""
  value: Any = result
  for key in dotted.split("."):
    if not isinstance(value, dict) or key not in value:
      raise KeyError(f"config.train.best_metric {dotted!r}: no {key!r} in the evaluation result")
    value = value[key]
  return float("nan") if value is None else float(value)


class TrainingEvaluation:
  """The evaluations of one training run: periodic ones on `config.data.eval_split` that export the
  best model by `config.train.best_metric` (WORKDIR/best_model), and at the end the final model's
  export (WORKDIR/model) and its evaluation on `config.train.final_split`."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str, model_config: ModelConfig):
    self.config = config
    self.workdir = workdir
    self.model_config = model_config
    self.best = -np.inf
    self._scorer: PromptIQA | None = None

  def _load(self, state: TrainState) -> tuple[PromptIQA, dict[str, Any]]:
    """The scorer holding `state`'s variables (one scorer, so its functions compile once)."""
    variables = host_variables(state)
    if self._scorer is None:
      self._scorer = PromptIQA(variables, self.model_config,
                               batch_size=int(self.config.data.eval_batch_size))
    else:
      self._scorer.variables = jax.device_put(variables)
    return self._scorer, variables

  def periodic(self, state: TrainState, step: int) -> dict[str, Any]:
    """Evaluates on the eval split; exports the model if it is the best so far."""
    scorer, variables = self._load(state)
    result = evaluators.evaluate(scorer, self.config.data, self.config.eval,
                                 split=self.config.data.eval_split, step=step,
                                 out_dir=self.workdir, plots=False)
    value = metric_at(result, self.config.train.best_metric)
    if jax.process_index() == 0 and np.isfinite(value) and value > self.best:
      self.best = value
      checkpoint.export_model(os.path.join(self.workdir, "best_model"), variables,
                              self.model_config)
    return result

  def finish(self, state: TrainState, step: int) -> None:
    """Exports the final model and, with `config.train.final_eval`, evaluates it."""
    scorer, variables = self._load(state)
    if jax.process_index() == 0:
      checkpoint.export_model(os.path.join(self.workdir, "model"), variables, self.model_config)
    if self.config.train.get("final_eval", True):
      result = evaluators.evaluate(scorer, self.config.data, self.config.eval,
                                   split=self.config.train.final_split, step=step,
                                   out_dir=self.workdir, name="final")
      if jax.process_index() == 0:
        print(evaluators.report.format_table(result), flush=True)


def _state_layout(create_state: Callable[[], TrainState], mesh: jax.sharding.Mesh,
                  fsdp_min_size: int) -> tuple[TrainState, Any]:
  """(abstract state carrying its shardings, the shardings) of the state `create_state` makes."""
  abstract_state = jax.eval_shape(create_state)
  shardings = sharding.state_sharding(abstract_state, mesh, fsdp_min_size)
  abstract_state = jax.tree_util.tree_map(
      lambda leaf, s: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=s),
      abstract_state, shardings)
  return abstract_state, shardings


def _save_last(manager: Any, state: TrainState, iterator: Any,
               config: ml_collections.ConfigDict, step: int) -> None:
  """Saves `step` unless it is saved already (orbax refuses to save a step twice), and waits."""
  if manager.latest_step() != step:
    checkpoint.save_checkpoint(manager, state, iterator, config, force=True)
  manager.wait_until_finished()


def _train_loop(config: ml_collections.ConfigDict, workdir: str, model_config: ModelConfig,
                state: TrainState, train_step: Callable, stream: Any, iterator: Any,
                manager: Any, mesh: jax.sharding.Mesh) -> TrainState:
  """Steps from `state` to the last step, with metrics, checkpoints and evaluations on the way;
  exits the process after saving once any process got SIGTERM."""
  num_steps = int(config.train.num_steps)
  if num_steps <= 0:
    num_steps = int(config.optim.epochs) * stream.steps_per_epoch
  step = int(jax.device_get(state.step))
  writer = MetricsWriter(workdir, step)
  evaluation = TrainingEvaluation(config, workdir, model_config)
  throughput = _Throughput(stream.groups_per_batch * stream.group_size, step)
  preemption = _Preemption()
  try:
    while step < num_steps:
      state, metrics = train_step(state, sharding.global_batch(next(iterator), mesh))
      step += 1
      if step % int(config.train.log_every) == 0 or step == num_steps:
        writer.write(step, {**jax.device_get(metrics), "images_per_s": throughput.measure(step),
                            "epoch": step / stream.steps_per_epoch})
      if step % int(config.train.checkpoint_every) == 0:
        checkpoint.save_checkpoint(manager, state, iterator, config)
      if int(config.train.eval_every) > 0 and step % int(config.train.eval_every) == 0:
        evaluation.periodic(state, step)
      if preemption.any_process():
        _save_last(manager, state, iterator, config, step)
        logging.warning("saved step %d after SIGTERM; exiting", step)
        iterator.close()
        sys.exit(0)
  finally:
    preemption.close()
  _save_last(manager, state, iterator, config, step)
  iterator.close()
  evaluation.finish(state, step)
  return state


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> TrainState:
  """Trains (resuming from `workdir` if it holds checkpoints) and evaluates; returns the state."""
  # Optional here: grain (the input pipeline) loads only once training starts.
  from promptiqa_jax.data import train_stream

  workdir = os.path.abspath(workdir)
  mesh = sharding.make_mesh(int(config.mesh.data), int(config.mesh.fsdp))
  validate_config(config, mesh.size)
  model_config = model_config_of(config)
  model = PromptIQANet(model_config)
  stream = train_stream(config.data, jax.process_index(), jax.process_count())
  tx, schedule = build_optimizer(config.optim, stream.steps_per_epoch, trainable_fn(model_config))
  init_rng, dropout_rng = jax.random.split(jax.random.PRNGKey(int(config.train.seed)))

  def create_state():
    variables = init_variables(model, model_config, config.init, init_rng, stream.group_size)
    return TrainState(step=jnp.zeros((), jnp.int32), params=variables["params"],
                      batch_stats=variables.get("batch_stats", {}),
                      opt_state=tx.init(variables["params"]), rng=dropout_rng)

  abstract_state, state_shardings = _state_layout(create_state, mesh,
                                                  int(config.mesh.fsdp_min_size))
  train_step = jit_train_step(make_train_step(model, tx, schedule), mesh, state_shardings)
  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json(indent=2))
  manager = checkpoint.checkpoint_manager(
      workdir, int(config.train.keep_checkpoints),
      asynchronous=bool(config.train.get("async_checkpointing", True)))
  iterator = iter(stream)
  if manager.latest_step() is not None:
    state = checkpoint.restore_checkpoint(manager, abstract_state, iterator)
    logging.warning("resumed from step %d", int(state.step))
  else:
    state = jax.jit(create_state, out_shardings=state_shardings)()
  return _train_loop(config, workdir, model_config, state, train_step, stream, iterator, manager,
                     mesh)
