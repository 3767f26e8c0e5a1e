"""The PyTorch side: the implementation in `interop/torch_model.py`, on the same weights, timed
as the JAX side is, by plain functions over a `TorchRun` (one variant on one device).

Variants: `eager`, `compile` (torch.compile; its compilation is the first call, reported as
`compile_s`), `autocast` (bfloat16) and `compile_autocast`. Each measurement builds a fresh model
(its own copy of the weights) inside the memory probe: the CUDA allocator's peak on GPUs, on CPUs
the growth of the resident set's high-water mark. torch is an optional dependency (the [torch]
extra), so it is imported inside the functions that use it.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import gc
import statistics
from typing import Any, Callable

import jax
import numpy as np

from promptiqa_jax.bench import profile
from promptiqa_jax.bench.flops import workload_flops
from promptiqa_jax.bench.plan import Inputs, Options, Workload, random_inputs, workloads
from promptiqa_jax.bench.report import record
from promptiqa_jax.bench.timing import HostPeak, timed
from promptiqa_jax.interop.convert import flax_to_torch


@dataclasses.dataclass(frozen=True)
class TorchRun:
  """One PyTorch variant on one device: how the model is called and how its records are named."""

  variant: str  # eager, compile, autocast or compile_autocast
  device: str  # cuda or cpu
  flush_denormal: bool = False  # set for the process by the bench command; the name gets "+ftz"

  @property
  def compiled(self) -> bool:
    return self.variant.startswith("compile")

  @property
  def dtype(self) -> str:
    return "bfloat16" if self.variant.endswith("autocast") else "float32"

  @property
  def name(self) -> str:
    return self.variant + ("+ftz" if self.flush_denormal else "")


def torch_state(cfg: Any, variables: Any) -> dict[str, np.ndarray]:
  """Flax variables -> the PyTorch implementation's state_dict (numpy copies), BatchNorm counters
  added."""
  import torch  # optional: the [torch] extra

  from promptiqa_jax.interop.torch_model import TorchPromptIQA

  with torch.device("meta"):
    shapes = {k: tuple(v.shape) for k, v in TorchPromptIQA(cfg).state_dict().items()}
  state = flax_to_torch(jax.tree_util.tree_map(np.array, variables), shapes)
  state.update({k: np.zeros((), np.int64) for k in shapes if k.endswith("num_batches_tracked")})
  return state


def torch_measure(cfg: Any, state: dict[str, np.ndarray], optim: Any, opts: Options,
                  peak: float) -> list[dict[str, Any]]:
  """PyTorch records of `opts.whats` for each of `opts.torch_variants` (eager, compile, autocast,
  compile_autocast), then the profile (with `eager` among them); a fresh model (own copy of
  `state`) per measurement."""
  import torch  # optional: the [torch] extra

  device = "cuda" if torch.cuda.is_available() else "cpu"
  inputs = random_inputs(cfg.image_size, opts).map(functools.partial(_nchw, device),
                                                   functools.partial(_tensor, device))
  measure = functools.partial(_measure, cfg=cfg, state=state, inputs=inputs, optim=optim,
                              opts=opts, peak=peak)
  results = [measure(TorchRun(variant, device, opts.torch_flush_denormal), work)
             for variant in opts.torch_variants for work in workloads(opts)]
  if "profile" in opts.whats and "eager" in opts.torch_variants:
    run = TorchRun("eager", device, opts.torch_flush_denormal)
    results += torch_profile(_build(cfg, state, device).eval(), cfg, run, inputs, opts, peak)
  return results


def _tensor(device: str, array: np.ndarray) -> Any:
  import torch  # optional: the [torch] extra

  return torch.from_numpy(np.ascontiguousarray(array, np.float32)).to(device)


def _nchw(device: str, images: np.ndarray) -> Any:
  """[..., H, W, 3] -> a tensor [..., 3, H, W] on `device`."""
  return _tensor(device, np.moveaxis(images, -1, -3))


def _build(cfg: Any, state: dict[str, np.ndarray], device: str) -> Any:
  """A fresh model on `device` holding its own copy of `state`."""
  import torch  # optional: the [torch] extra

  from promptiqa_jax.interop.torch_model import TorchPromptIQA

  with torch.device("meta"):
    model = TorchPromptIQA(cfg)
  model.load_state_dict({k: torch.tensor(v) for k, v in state.items()}, assign=True)
  return model.to(device)


def _measure(run: TorchRun, work: Workload, *, cfg: Any, state: dict[str, np.ndarray],
             inputs: Inputs, optim: Any, opts: Options, peak: float) -> dict[str, Any]:
  """The record of `work` for `run`: a fresh model set up and timed inside the memory probe."""
  import torch  # optional: the [torch] extra

  torch._dynamo.reset()
  if run.device == "cuda":
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
  with HostPeak() as host:
    model = _build(cfg, state, run.device)
    call = _call(run, model, work, inputs, optim)
    first, times = timed(functools.partial(_synced, run, call), opts.warmup, opts.repeats)
  if run.device == "cuda":
    memory = dict(peak_memory_bytes=torch.cuda.max_memory_allocated(),
                  memory_source="cuda_allocator")
  else:
    memory = dict(peak_memory_bytes=host.bytes, memory_source="host_rss_high_water")
  extra = {"compile_s": first - statistics.median(times)} if run.compiled else {}
  result = record("torch", run.name, work.what, work.batch, run.dtype, work.images, times,
                  workload_flops(cfg, work.what, work.batch, work.prompt_size), peak,
                  **memory, **extra)
  del model, call
  gc.collect()
  return result


def _call(run: TorchRun, model: Any, work: Workload, inputs: Inputs,
          optim: Any) -> Callable[[], Any]:
  """One timed call of `work`, set up on `model` (mode, compilation, the cached prompt)."""
  if work.what == "prompt":
    return functools.partial(_no_grad, _encoder(run, model.eval()), inputs.prompt_images,
                             inputs.prompt_scores)
  if work.what == "infer":
    model.eval()
    with _autocast(run):
      fused = _no_grad(_encoder(run, model), inputs.prompt_images, inputs.prompt_scores)
    score = _maybe_compile(run, lambda x: model.score_with_fused(model.image_features(x), fused))
    return functools.partial(_no_grad, score, inputs.infer[work.batch])
  return _train_call(run, model.train(), inputs, optim)


def _train_call(run: TorchRun, model: Any, inputs: Inputs, optim: Any) -> Callable[[], Any]:
  """One Adam step on the L1 loss, with the optimiser settings of the JAX training."""
  import torch  # optional: the [torch] extra

  optimizer = torch.optim.Adam(model.parameters(), lr=float(optim.lr),
                               betas=(float(optim.b1), float(optim.b2)),
                               eps=float(optim.eps), weight_decay=float(optim.weight_decay))
  loss_fn = _maybe_compile(run, lambda x, s: (model(x, s) - s).abs().mean())
  return functools.partial(_train_step, optimizer, loss_fn, inputs.train_images,
                           inputs.train_scores)


def _train_step(optimizer: Any, loss_fn: Callable, images: Any, scores: Any) -> None:
  optimizer.zero_grad(set_to_none=True)
  loss_fn(images, scores).backward()
  optimizer.step()


def _encoder(run: TorchRun, model: Any) -> Callable:
  """(prompt images, scores) -> the fused prompt."""
  return _maybe_compile(run, lambda x, s: model.fuse_prompt(
      model.prompt_vectors(model.image_features(x), s)))


def _maybe_compile(run: TorchRun, fn: Callable) -> Callable:
  import torch  # optional: the [torch] extra

  return torch.compile(fn, dynamic=False) if run.compiled else fn


def _autocast(run: TorchRun) -> contextlib.AbstractContextManager:
  import torch  # optional: the [torch] extra

  if run.dtype == "float32":
    return contextlib.nullcontext()
  return torch.autocast(run.device, dtype=torch.bfloat16)


def _synced(run: TorchRun, call: Callable[[], Any]) -> Any:
  """`call()` in the run's autocast, waited for on the device."""
  import torch  # optional: the [torch] extra

  with _autocast(run):
    out = call()
  if run.device == "cuda":
    torch.cuda.synchronize()
  return out


def _no_grad(fn: Callable, *args: Any) -> Any:
  import torch  # optional: the [torch] extra

  with torch.no_grad():
    return fn(*args)


def torch_profile(model: Any, cfg: Any, run: TorchRun, inputs: Inputs, opts: Options,
                  peak: float) -> list[dict[str, Any]]:
  """The JAX profile's stages on the PyTorch implementation (eager), on the prompt's images."""
  runners = [(name, functools.partial(_run_stage, run, fn, opts)) for name, fn in profile.stages(
      cfg, {"vit": model.backbone_taps,
            "mals": lambda taps: model.mal_maps(model.tap_maps(taps)),
            "fusion": model.fuse_maps,
            "cnn_head": model.head_features,
            "prompt": lambda f, s: model.fuse_prompt(model.prompt_vectors(f, s)),
            "query": model.score_with_fused})]
  return profile.chain("torch", run.name, cfg, runners, inputs.prompt_images,
                       inputs.prompt_scores, opts, peak)


def _run_stage(run: TorchRun, fn: Callable, opts: Options,
               *args: Any) -> tuple[Any, list[float], dict[str, Any]]:
  """One stage timed on its own: (its output, seconds per call, no extra record fields)."""
  call = functools.partial(_synced, run, functools.partial(_no_grad, fn, *args))
  _, times = timed(call, opts.warmup, opts.repeats)
  return call(), times, {}
