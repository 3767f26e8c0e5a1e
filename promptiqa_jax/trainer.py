"""Training: the train state, the update step and the loop `python -m promptiqa_jax.train` runs.

A pure update step `(state, batch) -> (state, metrics)` under `jax.jit` with explicit shardings on a
`(data, fsdp)` mesh and a donated state; per-process input from the grain stream assembled into
global arrays; orbax checkpoints (train state, grain iterator state, config) with automatic resume
and a clean save on SIGTERM (promptiqa_jax.preemption); evaluation every `train.eval_every` steps,
the best model by `train.best_metric` exported to WORKDIR/best_model and the final one to
WORKDIR/model; metrics, TensorBoard events, the progress line and profiles as promptiqa_jax.observe
writes them. WORKDIR and config.data.data_dir may be local or gs:// (promptiqa_jax.storage).
"""
from __future__ import annotations

import sys
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from etils import epath
from jax.experimental import multihost_utils
from jax.experimental.compilation_cache import compilation_cache

from promptiqa_jax import checkpoint
from promptiqa_jax import config_defaults
from promptiqa_jax import evaluators
from promptiqa_jax import observe
from promptiqa_jax import preemption
from promptiqa_jax import sharding
from promptiqa_jax import storage
from promptiqa_jax.data import datasets as dataset_registry
from promptiqa_jax.data import sources
from promptiqa_jax.evaluators import final as final_eval
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


def check_backbone_init(model_config: ModelConfig, init: Any) -> None:
  """ValueError when a ViT backbone would start from random weights that nobody asked for: no
  `init.pretrained_vit`, no `init.checkpoint` and no `init.random_vit`."""
  if (model_config.backbone == "vit" and not init.get("pretrained_vit")
      and not init.get("checkpoint") and not init.get("random_vit", False)):
    raise ValueError(
        "config.init.pretrained_vit is empty, so the ViT backbone would start from random "
        "weights. The reference starts from the AugReg ViT-B/8 behind timm's vit_base_patch8_224: "
        f"download {config_defaults.AUGREG_VIT_B8_URL} and pass "
        "--config.init.pretrained_vit=PATH_TO_THAT.npz (a timm state dict of vit_base_patch8_224 "
        "loads too), or fine-tune a trained model with --config.init.checkpoint=MODEL_DIR; "
        "--config.init.random_vit=True starts from random weights on purpose (tests, experiments)")


def init_variables(model: PromptIQANet, model_config: ModelConfig, init: Any, rng: jax.Array,
                   group_size: int) -> dict[str, Any]:
  """Random init, then the pretrained pieces the `init` config section names (a ViT backbone
  needs one, or `init.random_vit`: `check_backbone_init`)."""
  check_backbone_init(model_config, init)
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

    variables["params"] = merge_backbone(
        variables["params"],
        load_vit_backbone(storage.local_file(init.pretrained_vit), model_config))
  if model_config.backbone != "vit":
    # Optional: only the CNN backbones read lpips weights.
    from promptiqa_jax.interop.lpips_weights import load_cnn_params

    weights = init.get("cnn_weights")
    variables["params"]["backbone"]["cnn"] = load_cnn_params(
        model_config.backbone, storage.local_file(weights) if weights else None)
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


def _evaluates(config: ml_collections.ConfigDict) -> bool:
  return int(config.train.eval_every) > 0 or bool(config.train.get("final_eval", True))


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
    if path and not storage.path(path).exists():
      raise FileNotFoundError(f"config.init.{field}: {path} does not exist")
  check_backbone_init(model_config_of(config), config.init)
  # Evaluation datasets too: a typo there would otherwise surface after the first eval_every steps.
  for field in ("train", "eval") if _evaluates(config) else ("train",):
    for name in data[field]:
      try:
        builder, builder_config, _ = dataset_registry.parse_name(name)
        sources.prepared_dir(builder, data.data_dir, builder_config)
      except (ValueError, FileNotFoundError) as err:
        raise type(err)(f"config.data.{field}: {err}") from None


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
  best model by `config.train.best_metric` (WORKDIR/best_model, its history in
  WORKDIR/eval/selection.json), and at the end the final model's export (WORKDIR/model) and the
  evaluation of both models on `config.train.final_split` (evaluators/final.py)."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: epath.Path,
               model_config: ModelConfig, start_step: int):
    self.config = config
    self.workdir = workdir
    self.model_config = model_config
    # A resumed run keeps the best value its history reached (start_step: where it resumed).
    self.selection = final_eval.Selection(workdir, str(config.data.eval_split),
                                          str(config.train.best_metric), start_step)
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
    """Evaluates on the eval split (WORKDIR/eval/step_<step>.json and plots); exports the model if
    it is the best so far."""
    scorer, variables = self._load(state)
    # Model selection reads the own-prompt summary; the controls (a dozen prompts per held-out
    # requirement) are left to the final evaluation unless train.periodic_evaluators asks for them.
    periodic = ml_collections.ConfigDict(
        (self.config.get("eval") or ml_collections.ConfigDict()).to_dict())
    periodic.evaluators = self.config.train.periodic_evaluators
    result = evaluators.evaluate(scorer, self.config.data, periodic,
                                 split=self.config.data.eval_split, step=step,
                                 out_dir=self.workdir, name=f"step_{step}")
    value = metric_at(result, self.config.train.best_metric)
    # Every process holds the same result, so all of them agree on the best step.
    if np.isfinite(value) and self.selection.improves(value):
      if jax.process_index() == 0:
        checkpoint.export_model(self.workdir / final_eval.DIRECTORIES[final_eval.BEST_MODEL],
                                variables, self.model_config)
      self.selection.record(step, value, write=jax.process_index() == 0)
    return result

  def finish(self, state: TrainState, step: int) -> dict[str, dict[str, Any]]:
    """Exports the final model and, with `config.train.final_eval`, evaluates it and the best model
    (when one was exported) on the final split, each as WORKDIR/eval/<label>.json, both in
    WORKDIR/eval/final.json with the table printed (evaluators/final.py). Returns
    {label: result} ({} without final_eval)."""
    scorer, variables = self._load(state)
    if jax.process_index() == 0:
      checkpoint.export_model(self.workdir / "model", variables, self.model_config)
    if not self.config.train.get("final_eval", True):
      return {}
    best = self.selection.best
    steps = {final_eval.FINAL_MODEL: step}
    # _load gathered the state from every process, so process 0's exports are complete.
    if (self.workdir / final_eval.DIRECTORIES[final_eval.BEST_MODEL]
        / checkpoint.CONFIG_FILE).exists():
      steps[final_eval.BEST_MODEL] = best["step"] if best else None
    results = {}
    for label, model_step in steps.items():
      if label != final_eval.FINAL_MODEL:
        scorer.variables = checkpoint.load_model(self.workdir / final_eval.DIRECTORIES[label])[0]
      results[label] = evaluators.evaluate(scorer, self.config.data, self.config.eval,
                                           split=self.config.train.final_split, step=model_step,
                                           out_dir=self.workdir, name=label)
    if jax.process_index() == 0:
      combined = final_eval.combine(results, final_eval.loaded_label(self.workdir),
                                    self.selection.describe())
      evaluators.report.write_results(combined, self.workdir, "final")
      print(final_eval.format_table(combined), flush=True)
    return results


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


def _log_step(writer: observe.MetricsWriter, progress: observe.Progress, step: int,
              metrics: dict[str, jax.Array], steps_per_epoch: int) -> None:
  """The step's metrics (fetched first: the rates need the device done), rates, epoch and device
  memory to the metrics files, and the progress line."""
  record = {**jax.device_get(metrics), **progress.measure(step), "epoch": step / steps_per_epoch,
            **observe.device_memory()}
  writer.write(step, record, progress.line(step, record))


def _log_evaluation(writer: observe.MetricsWriter, workdir: epath.Path, step: int, prefix: str,
                    name: str, result: dict[str, Any]) -> None:
  """An evaluation's metrics and its scatter plots (those written) to TensorBoard, as
  "<prefix>/<section>/<dataset>/<metric>" and "<prefix>/plots/<dataset>"."""
  if not writer.active:
    return
  scalars = {"/".join(observe.tag_safe(part) for part in key): value
             for key, value in evaluators.report.scalars(result).items()}
  plots = {f"plots/{observe.tag_safe(dataset)}": evaluators.report.plot_path(workdir, dataset, name)
           for dataset in result.get("datasets", {})}
  writer.write_evaluation(step, prefix, scalars,
                          {tag: path for tag, path in plots.items() if path.exists()})


def _train_loop(config: ml_collections.ConfigDict, workdir: epath.Path, state: TrainState,
                train_step: Callable, stream: Any, iterator: Any, manager: Any,
                mesh: jax.sharding.Mesh, evaluation: TrainingEvaluation) -> TrainState:
  """Steps from `state` to the last step, with metrics, checkpoints and evaluations on the way;
  exits the process after saving once a SIGTERM reached any process (every process stops after
  the same step)."""
  num_steps = int(config.train.num_steps)
  if num_steps <= 0:
    num_steps = int(config.optim.epochs) * stream.steps_per_epoch
  step = int(jax.device_get(state.step))
  writer = observe.MetricsWriter(workdir, step)
  progress = observe.Progress(num_steps, step, stream.groups_per_batch * stream.group_size)
  profiler = observe.Profiler(str(config.train.profile_steps), workdir)
  stop = preemption.StopSignal(step)
  eval_every = int(config.train.eval_every)
  try:
    while step < num_steps:
      profiler.before(step)
      state, metrics = train_step(state, sharding.global_batch(next(iterator), mesh))
      step += 1
      with progress.paused():  # writing a trace takes seconds
        profiler.after(step, metrics)
      if step % int(config.train.log_every) == 0 or step == num_steps:
        _log_step(writer, progress, step, metrics, stream.steps_per_epoch)
      if step % int(config.train.checkpoint_every) == 0:
        with progress.paused():
          checkpoint.save_checkpoint(manager, state, iterator, config)
          # The events of every step a restart keeps, so that TensorBoard shows each step once.
          writer.flush()
      if eval_every > 0 and step % eval_every == 0:
        with progress.paused():
          result = evaluation.periodic(state, step)
          _log_evaluation(writer, workdir, step, f"eval/{evaluation.config.data.eval_split}",
                          f"step_{step}", result)
      if stop.reached(step):
        _save_last(manager, state, iterator, config, step)
        logging.warning("saved step %d after SIGTERM; exiting", step)
        iterator.close()
        sys.exit(0)
    stop.close()
    _save_last(manager, state, iterator, config, step)
    iterator.close()
    for label, result in evaluation.finish(state, step).items():
      _log_evaluation(writer, workdir, step, f"final/{config.train.final_split}/{label}", label,
                      result)
  finally:
    stop.close()
    profiler.stop()
    writer.close()
  return state


def use_compilation_cache(directory: str) -> None:
  """Keeps compiled programs in `directory` (local or gs://) for later starts; "" changes nothing.

  Every program is kept, however fast it compiled or small it is, so that the CPU's training step
  is too. JAX checks its cache settings once per process; they are checked again here, for a
  process (a notebook) that compiled before.
  """
  if not directory:
    return
  jax.config.update("jax_compilation_cache_dir", str(storage.path(directory)))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
  compilation_cache.reset_cache()


def _with_local_data(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """`config`, or for a bucket data_dir a copy reading the datasets the run needs from their local
  mirror (sources.local_data_config)."""
  names = list(config.data.train) + (list(config.data.eval) if _evaluates(config) else [])
  data = sources.local_data_config(config.data, names)
  if data is config.data:
    return config
  local = config.copy_and_resolve_references()
  local.data = data
  return local


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> TrainState:
  """Trains (resuming from `workdir` if it holds checkpoints) and evaluates; returns the state."""
  # Optional here: grain (the input pipeline) loads only once training starts.
  from promptiqa_jax.data import train_stream

  use_compilation_cache(str(config.train.compilation_cache_dir))
  workdir = storage.path(workdir)
  mesh = sharding.make_mesh(int(config.mesh.data), int(config.mesh.fsdp))
  validate_config(config, mesh.size)
  # The run reads its data through `run_config`; checkpoints and config.json keep `config`.
  run_config = _with_local_data(config)
  model_config = model_config_of(config)
  model = PromptIQANet(model_config)
  stream = train_stream(run_config.data, jax.process_index(), jax.process_count())
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
    storage.write_text(workdir / "config.json", config.to_json(indent=2))
  manager = checkpoint.checkpoint_manager(
      workdir, int(config.train.keep_checkpoints),
      asynchronous=bool(config.train.get("async_checkpointing", True)))
  iterator = iter(stream)
  if manager.latest_step() is not None:
    state = checkpoint.restore_checkpoint(manager, abstract_state, iterator)
    logging.warning("resumed from step %d", int(state.step))
  else:
    state = jax.jit(create_state, out_shardings=state_shardings)()
  return _train_loop(config, workdir, state, train_step, stream, iterator, manager, mesh,
                     TrainingEvaluation(run_config, workdir, model_config,
                                        int(jax.device_get(state.step))))
