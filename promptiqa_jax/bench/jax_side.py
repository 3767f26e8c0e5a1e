"""The JAX side: each workload compiled ahead of time and timed, and the per-stage profile.

Model inputs are arrays already on the device. A record carries the compile time (`compile_s`),
XLA's FLOP count (`xla_flops`) and, as `peak_memory_bytes`, the compiled program's buffers:
arguments + outputs + temporaries - donated (`memory_source` "xla_buffers").
"""
from __future__ import annotations

import functools
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from promptiqa_jax import trainer
from promptiqa_jax.bench import profile
from promptiqa_jax.bench.flops import workload_flops
from promptiqa_jax.bench.plan import Options, Workload, random_inputs, workloads
from promptiqa_jax.bench.report import record
from promptiqa_jax.bench.timing import timed
from promptiqa_jax.models.promptiqa import PromptIQANet
from promptiqa_jax.optim import build_optimizer


def compile_aot(fn: Callable, args: tuple, opts: Options,
                donate: tuple[int, ...] = ()) -> tuple[Any, dict[str, Any]]:
  """AOT-compiles `fn(*args)`: the executable, and its compile time, XLA FLOPs and buffer bytes."""
  start = time.perf_counter()
  compiled = jax.jit(fn, donate_argnums=donate).lower(*args).compile(
      compiler_options=dict(opts.compiler_options) or None)
  info: dict[str, Any] = {"compile_s": time.perf_counter() - start}
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  if cost and "flops" in cost:
    info["xla_flops"] = float(cost["flops"])
  memory = compiled.memory_analysis()
  if memory is not None:
    info["peak_memory_bytes"] = int(memory.argument_size_in_bytes + memory.output_size_in_bytes
                                    + memory.temp_size_in_bytes - memory.alias_size_in_bytes)
    info["memory_source"] = "xla_buffers"
  return compiled, info


def random_variables(cfg: Any, opts: Options) -> Any:
  """The model's variables at random init, on the device."""
  size = cfg.image_size
  init_args = (jax.random.PRNGKey(0), np.zeros((1, 2, size, size, 3), np.float32),
               np.zeros((1, 2), np.float32))
  return compile_aot(PromptIQANet(cfg).init, init_args, opts)[0](*init_args)


def jax_measure(cfg: Any, variables: Any, optim: Any, opts: Options,
                peak: float) -> list[dict[str, Any]]:
  """JAX records of `opts.whats` (profile, prompt, infer, train) for the model config `cfg`.

  `variables` (on the device) are donated to the training step, measured last.
  """
  module = PromptIQANet(cfg)
  inputs = random_inputs(cfg.image_size, opts).map(jnp.asarray, jnp.asarray)
  results = []
  if "profile" in opts.whats:
    results += jax_profile(module, cfg, variables, inputs.prompt_images, inputs.prompt_scores,
                           opts, peak)
  if "prompt" in opts.whats or "infer" in opts.whats:
    prompt_args = (variables, inputs.prompt_images, inputs.prompt_scores)
    encoder = compile_aot(functools.partial(_encode, module), prompt_args, opts)
    fused = encoder[0](*prompt_args)  # the cached prompt that scoring uses
  for work in workloads(opts):
    if work.what == "prompt":
      executable, args = encoder, prompt_args
    elif work.what == "infer":
      args = (variables, inputs.infer[work.batch], fused)
      executable = compile_aot(functools.partial(_score, module), args, opts)
    else:  # train, last: the step donates its state, which holds `variables` (no copy of them)
      state, step = _train_state(module, cfg, variables, optim)
      args = (state, {"image": inputs.train_images, "score": inputs.train_scores})
      executable = compile_aot(step, args, opts, donate=(0,))
    results.append(_measure(cfg, opts, peak, work, executable, args, donated=work.what == "train"))
  return results


def _measure(cfg: Any, opts: Options, peak: float, work: Workload, executable: tuple[Any, dict],
             args: tuple, donated: bool = False) -> dict[str, Any]:
  """The record of `work`: `executable` = (compiled, compile info) timed on `args`. `donated`:
  each call's new state (its first output) is the next call's first argument."""
  compiled, info = executable
  args = list(args)

  def call():
    out = compiled(*args)
    if donated:
      args[0] = out[0]
    jax.block_until_ready(out)

  _, times = timed(call, opts.warmup, opts.repeats)
  variant = "+".join(["xla"] + (["remat"] if cfg.remat else []) + (
      ["cudnn_attention"] if cfg.attention == "cudnn" else []))
  return record("jax", variant, work.what, work.batch, cfg.dtype, work.images, times,
                workload_flops(cfg, work.what, work.batch, work.prompt_size), peak, **info)


def _encode(module: PromptIQANet, variables: Any, images: jax.Array,
            scores: jax.Array) -> jax.Array:
  """Prompt images [P, H, W, 3] and scores [P] -> the fused prompt."""
  features = module.apply(variables, images, method=PromptIQANet.image_features)
  vectors = module.apply(variables, features, scores, method=PromptIQANet.prompt_vectors)
  return module.apply(variables, vectors, method=PromptIQANet.fuse_prompt)


def _score(module: PromptIQANet, variables: Any, images: jax.Array,
           fused: jax.Array) -> jax.Array:
  """Query images [B, H, W, 3] scored against a fused prompt: [B]."""
  features = module.apply(variables, images, method=PromptIQANet.image_features)
  return module.apply(variables, features, fused, method=PromptIQANet.score_with_fused)


def _train_state(module: PromptIQANet, cfg: Any, variables: Any,
                 optim: Any) -> tuple[trainer.TrainState, Callable]:
  """A training state on `variables` (donated by the step) and the trainer's update step."""
  tx, schedule = build_optimizer(optim, steps_per_epoch=1000, trainable=trainer.trainable_fn(cfg))
  state = trainer.TrainState(
      step=jnp.zeros((), jnp.int32), params=variables["params"],
      batch_stats=variables.get("batch_stats", {}), opt_state=jax.jit(tx.init)(variables["params"]),
      rng=jax.random.PRNGKey(0))
  return state, trainer.make_train_step(module, tx, schedule)


def jax_stages(cfg: Any) -> list[tuple[str, Callable]]:
  """The profile's stages in order, as functions of the bound model (`apply(..., method=fn)`)."""
  dtype = jnp.dtype(cfg.dtype)
  return profile.stages(cfg, {
      "backbone": PromptIQANet.image_features,
      "vit": lambda m, x: m.vit(x.astype(dtype)),
      "mals": lambda m, taps: [mal(taps, False) for mal in m.mals],
      "fusion": lambda m, maps: m.block(m.fusion_mal(maps, False)),
      "cnn_head": lambda m, x: m.cnn(x.reshape((x.shape[0], cfg.grid, cfg.grid, -1)), False),
      "prompt": lambda m, f, s: m.fuse_prompt(m.prompt_vectors(f, s)),
      "query": PromptIQANet.score_with_fused})


def jax_profile(module: PromptIQANet, cfg: Any, variables: Any, images: jax.Array,
                scores: jax.Array, opts: Options, peak: float) -> list[dict[str, Any]]:
  """Each stage of the forward pass compiled and timed on its own, on the prompt's images."""
  runners = [(name, functools.partial(_run_stage, module, variables, fn, opts))
             for name, fn in jax_stages(cfg)]
  return profile.chain("jax", "xla", cfg, runners, images, scores, opts, peak)


def _run_stage(module: PromptIQANet, variables: Any, fn: Callable, opts: Options,
               *args: Any) -> tuple[Any, list[float], dict[str, Any]]:
  """One stage compiled on its own and timed: (its output, seconds per call, compile info)."""
  compiled, info = compile_aot(lambda v, *a: module.apply(v, *a, method=fn),
                               (variables,) + args, opts)
  _, times = timed(lambda: jax.block_until_ready(compiled(variables, *args)),
                   opts.warmup, opts.repeats)
  return compiled(variables, *args), times, info
