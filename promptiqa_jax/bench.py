"""Throughput of the JAX model beside the PyTorch implementation, measured in one process.

  promptiqa-jax bench --config configs/paper.py --what train,infer,prompt,input --compare torch \\
      --groups 1 --group-size 3 --batch-sizes 1,2,4 --json bench.json

Measurements (`--what`): `train`, the whole training step (forward, backward, optimiser) on
`groups x group_size` images; `infer`, scoring with a cached prompt at each of `--batch-sizes`;
`prompt`, encoding one prompt of `data.prompt_size` pairs (images to fused prompt, a latency:
`seconds`); `input`, the training stream's images/s (`data/throughput.py`, beside the reference's
DataLoader); `profile`, the forward pass component by component (where the time goes). Model
inputs are arrays already in memory (on the device): decoding is timed by `input` alone.

Each record is the median of `--repeats` timed calls after `--warmup` calls; compilation (XLA, or
torch.compile's first call) is reported apart as `compile_s`. FLOPs are counted analytically from
the config (`model_flops`: matmuls and convolutions, 2 per multiply-add; a backward pass counted as
two forwards) and, for JAX, beside XLA's cost analysis (`xla_flops`). MFU is achieved FLOP/s over
the device's peak: the datasheet for known GPUs, else a large float32 matmul measured here. Memory
(`peak_memory_bytes`, `memory_source`): the compiled program's buffers for JAX (arguments + outputs
+ temporaries - donated), the CUDA allocator's peak for PyTorch on GPU, and for PyTorch on CPU the
growth of the resident set's high-water mark while the measurement ran, model built inside it.

JAX and PyTorch run one after the other, each freed before the next. Threads: XLA sizes its CPU
thread pool from the process's CPU affinity, so `--threads N` pins the process to N CPUs before JAX
starts and sets `torch.set_num_threads(N)`; by default both use every CPU the process may run on.
Denormals: XLA's CPU code flushes them to zero, PyTorch's does not by default, and the MALs'
unscaled softmax underflows into them (a float32 matmul over such probabilities ran ~20x slower in
PyTorch here); `--torch-flush-denormal` measures PyTorch with them flushed too.
"""
from __future__ import annotations

import argparse
import dataclasses
import gc
import importlib.util
import json
import os
import platform
import statistics
import tempfile
import time
from typing import Any, Callable, Sequence

import numpy as np

WHATS = ("train", "infer", "prompt", "input", "profile")
# Dense peaks (FLOP/s) by compute dtype. float32 on Hopper: JAX's default matmul precision and
# torch.set_float32_matmul_precision("high") both use TF32 tensor cores (67 TFLOP/s without them).
DATASHEET_PEAKS = {"H100": {"bfloat16": 989e12, "float32": 495e12},
                   "H200": {"bfloat16": 989e12, "float32": 495e12}}


@dataclasses.dataclass(frozen=True)
class Options:
  """What to run and how often. `prompt_size` is P of `infer` and `prompt` (train uses G - 1)."""

  whats: tuple[str, ...] = ("train", "infer", "prompt")
  batch_sizes: tuple[int, ...] = (1, 8)
  groups: int = 1
  group_size: int = 3
  prompt_size: int = 10
  dtype: str = "float32"
  remat: bool = False
  attention: str = "xla"
  warmup: int = 2
  repeats: int = 5
  torch_variants: tuple[str, ...] = ()
  # Flush denormals to zero in PyTorch's threads (XLA's CPU code does by default): records get
  # "+ftz". PyTorch's default keeps them, and the MALs' softmax underflows into denormals.
  torch_flush_denormal: bool = False
  input_workers: int = 0
  input_batches: int = 8
  input_jpeg: tuple[int, int] = (1024, 768)
  peak_matmul: int = 2048  # side of the float32 matmul that measures a CPU's peak
  # XLA compiler options, e.g. {"xla_backend_optimization_level": 0} to compile faster (--quick).
  compiler_options: tuple[tuple[str, Any], ...] = ()


# FLOPs, counted from the config.

def _block(length: int, dim: int, mlp_ratio: int) -> float:
  """A pre-norm transformer block on `length` tokens: qkv, logits, values, proj, MLP."""
  return length * dim * dim * (8 + 4 * mlp_ratio) + 4 * length * length * dim


def _mal(n: int, positions: int, channels: int, reduction: int) -> tuple[float, float]:
  """(spatial, views) of a MAL over n maps: n spatial self-attentions (q, k to C/r and v, logits,
  values), then the feature view (C tokens of width n*L) and the channel view (L tokens of width
  n*C), each three Linear layers and one single-head attention."""
  length, c, cr = positions, channels, channels // reduction
  spatial = n * (2 * length * c * (2 * cr + c) + 2 * length * length * (cr + c))
  views = sum(6 * tokens * width * width + 4 * tokens * tokens * width
              for tokens, width in ((c, n * length), (length, n * c)))
  return spatial, views


def model_flops(cfg: Any, prompt_size: int) -> dict[str, float]:
  """Forward FLOPs of each component: per image, per pair, per prompt or per query.

  Per image: `vit`, `mal_spatial` and `mal_views` (the MALs over the taps), `fusion_mal`,
  `fusion_block`, `cnn_head` (or, for the small models' backbones, `cnn` and `cnn_mlp`) and their
  sum `image`. `pair`: one prompt vector from an image-score pair. `fusion`: prompt fusion of
  `prompt_size` vectors, once per prompt. `query`: one query scored against `prompt_size` fused
  vectors. ViT blocks after the last tap are not counted (they cannot change the output).
  """
  d, ratio = cfg.prompt_width, cfg.mlp_ratio
  parts: dict[str, float] = {}
  if cfg.backbone != "vit":
    parts["cnn"], parts["cnn_mlp"] = _stats_encoder_flops(cfg)
  else:
    width, grid, reduction = cfg.vit_width, cfg.grid, cfg.mal_qk_reduction
    length = grid * grid
    parts["vit"] = (2 * length * cfg.patch_size ** 2 * 3 * width
                    + (max(cfg.taps) + 1) * _block(length + 1, width, ratio))
    spatial, views = _mal(len(cfg.taps), length, width, reduction)
    parts["mal_spatial"], parts["mal_views"] = cfg.num_mals * spatial, cfg.num_mals * views
    parts["fusion_mal"] = sum(_mal(cfg.num_mals, length, width, reduction))
    parts["fusion_block"] = _block(length, width, ratio)
    size, cin, head = grid, width, 0
    for cout, kernel, pool in cfg.cnn_head:
      size -= kernel - 1
      head += 2 * size * size * kernel * kernel * cin * cout
      size, cin = size // pool, cout
    parts["cnn_head"] = head
  parts["image"] = sum(parts.values())
  parts["pair"] = (cfg.pair_depth * _block(2, d, ratio) + 4 * d * cfg.pair_mlp_hidden
                   + (2 * d if cfg.score_embedding == "linear" else 0))
  parts["fusion"] = cfg.prompt_fusion_depth * _block(prompt_size, d, ratio)
  parts["query"] = (cfg.query_depth * _block(prompt_size + 1, d, ratio)
                    + 2 * d * cfg.score_hidden + 2 * cfg.score_hidden)
  return {k: float(v) for k, v in parts.items()}


def _stats_encoder_flops(cfg: Any) -> tuple[float, float]:
  """(convolutions, MLP) of a CNN-statistics backbone, from its layers' shapes (no compute)."""
  import flax.linen as nn
  import jax

  from promptiqa_jax.models.lpips_backbones import NETWORKS

  network = NETWORKS[cfg.backbone][0]()
  images = jax.ShapeDtypeStruct((1, cfg.image_size, cfg.image_size, 3), np.float32)

  def shapes(x):
    params = network.init(jax.random.PRNGKey(0), x)["params"]
    convs_only = lambda module, _: isinstance(module, nn.Conv)  # noqa: E731
    stages, state = network.apply({"params": params}, x, mutable=["intermediates"],
                                  capture_intermediates=convs_only)
    return params, stages, state["intermediates"]

  params, stages, convs_out = jax.eval_shape(shapes, images)
  convs = sum(2 * np.prod(convs_out[name]["__call__"][0].shape[1:3]) * np.prod(p["kernel"].shape)
              for name, p in params.items())
  stats = 2 * sum(stage.shape[-1] for stage in stages)  # mean and std per channel
  return float(convs), 2.0 * cfg.backbone_hidden * (stats + cfg.prompt_width)


def workload_flops(cfg: Any, what: str, batch: int, prompt_size: int) -> float:
  """FLOPs of one timed call: `infer` of `batch` queries, `prompt` of `prompt_size` pairs, or a
  `train` step on `batch` groups of `prompt_size + 1` (forward, and a backward of two forwards
  that does not enter a frozen CNN backbone)."""
  f = model_flops(cfg, prompt_size)
  if what == "infer":
    return batch * (f["image"] + f["query"])
  if what == "prompt":
    return prompt_size * (f["image"] + f["pair"]) + f["fusion"]
  if what == "train":
    images = batch * (prompt_size + 1)
    forward = images * (f["image"] + f["pair"] + f["fusion"] + f["query"])
    frozen = images * f.get("cnn", 0.0) if cfg.freeze_backbone else 0.0
    return 3 * forward - 2 * frozen
  raise ValueError(f"no FLOP count for {what!r}")


# Timing, memory, records.

def timed(call: Callable[[], Any], warmup: int, repeats: int) -> tuple[float, list[float]]:
  """(seconds of the first call, seconds of each of `repeats` calls after `warmup` in all)."""
  start = time.perf_counter()
  call()
  first = time.perf_counter() - start
  for _ in range(warmup - 1):
    call()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    call()
    times.append(time.perf_counter() - start)
  return first, times


class HostPeak:
  """Growth of the resident set's high-water mark (Linux /proc) over a `with` block: `bytes`."""

  def __enter__(self) -> "HostPeak":
    try:
      with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current resident size
    except OSError:
      pass
    self.start, self.bytes = _proc_status("VmRSS"), None
    return self

  def __exit__(self, *exc: Any) -> None:
    peak = _proc_status("VmHWM")
    if peak is not None and self.start is not None:
      self.bytes = max(peak - self.start, 0)


def _proc_status(field: str) -> int | None:
  try:
    with open("/proc/self/status") as f:
      for line in f:
        if line.startswith(field + ":"):
          return int(line.split()[1]) * 1024
  except OSError:
    pass
  return None


def record(impl: str, variant: str, what: str, batch: int, dtype: str, images: int,
           times: list[float], flops: float | None, peak_flops: float,
           **extra: Any) -> dict[str, Any]:
  """One result: median seconds per call, images/s and, given the call's FLOPs, FLOP/s and MFU."""
  seconds = statistics.median(times)
  result = dict(impl=impl, variant=variant, what=what, batch=batch, dtype=dtype,
                images_per_s=images / seconds, seconds=seconds, seconds_all=times)
  if flops:
    result.update(flops=flops, flops_per_s=flops / seconds, mfu=flops / seconds / peak_flops)
  result.update(extra)
  print(_line(result), flush=True)
  return result


def _line(r: dict[str, Any]) -> str:
  rate = f"{r['flops_per_s'] / 1e9:.1f} GFLOP/s" if "flops_per_s" in r else ""
  return (f"{r['impl']}/{r['variant']} {r['what']} batch={r['batch']} {r['dtype']}: "
          f"{r['images_per_s']:.3f} img/s, {r['seconds']:.4g} s {rate}")


# JAX.

def _jax_compile(fn: Callable, args: tuple, opts: Options,
                 donate: tuple[int, ...] = ()) -> tuple[Any, dict]:
  """AOT-compiles `fn(*args)`: the executable, and its compile time, XLA FLOPs and buffer bytes."""
  import jax

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


def jax_measure(cfg: Any, variables: Any, optim: Any, opts: Options,
                peak: float) -> list[dict[str, Any]]:
  """JAX records of `opts.whats` (train, infer, prompt, profile) for the model config `cfg`.

  `variables` (on the device) are donated to the training step, measured last.
  """
  import jax
  import jax.numpy as jnp

  from promptiqa_jax.models.promptiqa import PromptIQANet

  module = PromptIQANet(cfg)
  rng = np.random.default_rng(0)
  size, p = cfg.image_size, opts.prompt_size
  variant = "+".join(["xla"] + (["remat"] if cfg.remat else []) + (
      ["cudnn_attention"] if cfg.attention == "cudnn" else []))
  prompt_images = jnp.asarray(rng.uniform(-1, 1, (p, size, size, 3)), jnp.float32)
  prompt_scores = jnp.asarray(rng.uniform(0, 1, p), jnp.float32)
  results = []

  def measure(what, batch, images, fn, args, donate=(), prompt_size=p, executable=None):
    compiled, info = executable or _jax_compile(fn, args, opts, donate)
    holder = list(args)

    def call():
      out = compiled(*holder)
      if donate:  # the train step: its new state is the next call's (donated) input
        holder[0] = out[0]
      jax.block_until_ready(out)

    _, times = timed(call, opts.warmup, opts.repeats)
    flops = workload_flops(cfg, what, batch, prompt_size)
    results.append(record("jax", variant, what, batch, cfg.dtype, images, times, flops, peak,
                          **info))

  def encode(v, images, scores):
    features = module.apply(v, images, method=PromptIQANet.image_features)
    vectors = module.apply(v, features, scores, method=PromptIQANet.prompt_vectors)
    return module.apply(v, vectors, method=PromptIQANet.fuse_prompt)

  def score(v, images, fused):
    features = module.apply(v, images, method=PromptIQANet.image_features)
    return module.apply(v, features, fused, method=PromptIQANet.score_with_fused)

  if "prompt" in opts.whats or "infer" in opts.whats:
    prompt_args = (variables, prompt_images, prompt_scores)
    encoder = _jax_compile(encode, prompt_args, opts)
    if "prompt" in opts.whats:
      measure("prompt", p, p, encode, prompt_args, executable=encoder)
    fused = encoder[0](*prompt_args)  # the cached prompt that scoring uses
  if "infer" in opts.whats:
    for batch in opts.batch_sizes:
      images = jnp.asarray(rng.uniform(-1, 1, (batch, size, size, 3)), jnp.float32)
      measure("infer", batch, batch, score, (variables, images, fused))
  if "profile" in opts.whats:
    results += jax_profile(module, cfg, variables, prompt_images, prompt_scores, opts, peak)
  if "train" in opts.whats:
    # Last: the step donates its state, which holds `variables` (no copy of 4 bytes/parameter).
    state, step = _jax_train_state(module, cfg, variables, optim)
    del variables
    shape = (opts.groups, opts.group_size)
    batch = {"image": jnp.asarray(rng.uniform(-1, 1, shape + (size, size, 3)), jnp.float32),
             "score": jnp.asarray(rng.uniform(0, 1, shape), jnp.float32)}
    measure("train", opts.groups, opts.groups * opts.group_size, step, (state, batch), donate=(0,),
            prompt_size=opts.group_size - 1)
    del state, batch
  return results


def _jax_train_state(module: Any, cfg: Any, variables: Any, optim: Any) -> tuple[Any, Callable]:
  """A training state on `variables` (donated by the step) and train.py's update step."""
  import jax
  import jax.numpy as jnp

  from promptiqa_jax.optim import build_optimizer
  from promptiqa_jax.train import TrainState, make_train_step, trainable_fn

  tx, schedule = build_optimizer(optim, steps_per_epoch=1000, trainable=trainable_fn(cfg))
  state = TrainState(step=jnp.zeros((), jnp.int32), params=variables["params"],
                     batch_stats=variables.get("batch_stats", {}),
                     opt_state=jax.jit(tx.init)(variables["params"]), rng=jax.random.PRNGKey(0))
  return state, make_train_step(module, tx, schedule)


def jax_stages(cfg: Any) -> list[tuple[str, Callable]]:
  """The profile's stages in order, as functions of the bound model (`apply(..., method=fn)`)."""
  import jax.numpy as jnp

  from promptiqa_jax.models.promptiqa import PromptIQANet

  dtype = jnp.dtype(cfg.dtype)
  return _stages(cfg, {
      "backbone": PromptIQANet.image_features,
      "vit": lambda m, x: m.vit(x.astype(dtype)),
      "mals": lambda m, taps: [mal(taps, False) for mal in m.mals],
      "fusion": lambda m, maps: m.block(m.fusion_mal(maps, False)),
      "cnn_head": lambda m, x: m.cnn(x.reshape((x.shape[0], cfg.grid, cfg.grid, -1)), False),
      "prompt": lambda m, f, s: m.fuse_prompt(m.prompt_vectors(f, s)),
      "query": PromptIQANet.score_with_fused})


def jax_profile(module: Any, cfg: Any, variables: Any, images: Any, scores: Any, opts: Options,
                peak: float) -> list[dict[str, Any]]:
  """Each stage of the forward pass compiled and timed on its own, on the prompt's images."""
  import jax

  def run(fn):
    def stage(*args):
      compiled, info = _jax_compile(lambda v, *a: module.apply(v, *a, method=fn),
                                    (variables,) + args, opts)
      _, times = timed(lambda: jax.block_until_ready(compiled(variables, *args)),
                       opts.warmup, opts.repeats)
      return compiled(variables, *args), times, info
    return stage

  stages = [(name, run(fn)) for name, fn in jax_stages(cfg)]
  return _profile("jax", "xla", cfg, stages, images, scores, opts, peak)


def _stages(cfg: Any, fns: dict[str, Any]) -> list[tuple[str, Any]]:
  """(name, fns[name]) in order: the backbone, or the ViT, MALs, fusion and head; then the
  prompt (pair encoding and fusion) and the query."""
  names = ["vit", "mals", "fusion", "cnn_head"] if cfg.backbone == "vit" else ["backbone"]
  return [(name, fns[name]) for name in names + ["prompt", "query"]]


_STAGE_FLOPS = {"backbone": ("image",), "vit": ("vit",), "mals": ("mal_spatial", "mal_views"),
                "fusion": ("fusion_mal", "fusion_block"), "cnn_head": ("cnn_head",),
                "prompt": ("pair",), "query": ("query",)}


def _profile(impl: str, variant: str, cfg: Any, stages: list[tuple[str, Callable]], images: Any,
             scores: Any, opts: Options, peak: float) -> list[dict[str, Any]]:
  """Runs the stages as a chain (each on the previous one's output; the prompt stage on the
  features and scores, the query stage on the features and the fused prompt)."""
  flops = model_flops(cfg, opts.prompt_size)
  n, value, features, results = len(images), images, None, []
  for name, stage in stages:
    args = {"prompt": (features, scores), "query": (features, value)}.get(name, (value,))
    value, times, info = stage(*args)
    count = n * sum(flops[k] for k in _STAGE_FLOPS[name])
    count += flops["fusion"] if name == "prompt" else 0
    results.append(record(impl, variant, f"profile/{name}", n, opts.dtype, n, times, count, peak,
                          **info))
    if name in ("backbone", "cnn_head"):
      features = value
  return results


# PyTorch.

def torch_state(cfg: Any, variables: Any) -> dict[str, np.ndarray]:
  """Flax variables -> the PyTorch implementation's state_dict (numpy copies), BatchNorm counters
  added."""
  import jax
  import torch

  from promptiqa_jax.interop.convert import flax_to_torch
  from promptiqa_jax.interop.torch_model import TorchPromptIQA

  with torch.device("meta"):
    shapes = {k: tuple(v.shape) for k, v in TorchPromptIQA(cfg).state_dict().items()}
  state = flax_to_torch(jax.tree_util.tree_map(np.array, variables), shapes)
  state.update({k: np.zeros((), np.int64) for k in shapes if k.endswith("num_batches_tracked")})
  return state


def torch_measure(cfg: Any, state: dict[str, np.ndarray], optim: Any, opts: Options,
                  peak: float) -> list[dict[str, Any]]:
  """PyTorch records of `opts.whats` for each of `opts.torch_variants` (eager, compile, autocast,
  compile_autocast); a fresh model (own copy of `state`) per measurement."""
  import contextlib

  import torch

  from promptiqa_jax.interop.torch_model import TorchPromptIQA

  device = "cuda" if torch.cuda.is_available() else "cpu"
  sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
  rng = np.random.default_rng(0)
  size, p = cfg.image_size, opts.prompt_size

  def tensor(array):
    return torch.from_numpy(np.ascontiguousarray(array, np.float32)).to(device)

  def nchw(shape):
    return tensor(np.moveaxis(rng.uniform(-1, 1, shape + (size, size, 3)), -1, -3))

  def build():
    with torch.device("meta"):
      model = TorchPromptIQA(cfg)
    model.load_state_dict({k: torch.tensor(v) for k, v in state.items()}, assign=True)
    return model.to(device)

  prompt_images, prompt_scores = nchw((p,)), tensor(rng.uniform(0, 1, p))
  results = []
  for variant in opts.torch_variants:
    compiled = variant.startswith("compile")
    dtype = "bfloat16" if variant.endswith("autocast") else "float32"

    def context():
      if dtype == "float32":
        return contextlib.nullcontext()
      return torch.autocast(device, dtype=torch.bfloat16)

    def measure(what, batch, images, make_call, prompt_size=p):
      """make_call(model) -> a function running one timed call."""
      torch._dynamo.reset()
      if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
      with HostPeak() as host:
        model = build()
        call = make_call(model)

        def synced():
          with context():
            call()
          sync()

        first, times = timed(synced, opts.warmup, opts.repeats)
      memory = (torch.cuda.max_memory_allocated(), "cuda_allocator") if device == "cuda" else (
          host.bytes, "host_rss_high_water")
      extra = {"compile_s": first - statistics.median(times)} if compiled else {}
      name = variant + ("+ftz" if opts.torch_flush_denormal else "")
      results.append(record("torch", name, what, batch, dtype, images, times,
                             workload_flops(cfg, what, batch, prompt_size), peak,
                             peak_memory_bytes=memory[0], memory_source=memory[1], **extra))
      del model, call
      gc.collect()

    def maybe_compile(fn):
      return torch.compile(fn, dynamic=False) if compiled else fn

    def encoder(model):
      return maybe_compile(lambda x, s: model.fuse_prompt(
          model.prompt_vectors(model.image_features(x), s)))

    if "prompt" in opts.whats:
      def prompt_call(model):
        encode = encoder(model.eval())
        return lambda: _no_grad(encode, prompt_images, prompt_scores)
      measure("prompt", p, p, prompt_call)
    if "infer" in opts.whats:
      for batch in opts.batch_sizes:
        images = nchw((batch,))

        def infer_call(model):
          model.eval()
          with context():
            fused = _no_grad(encoder(model), prompt_images, prompt_scores)
          score = maybe_compile(lambda x: model.score_with_fused(model.image_features(x), fused))
          return lambda: _no_grad(score, images)
        measure("infer", batch, batch, infer_call)
    if "train" in opts.whats:
      images, scores = nchw((opts.groups, opts.group_size)), tensor(
          rng.uniform(0, 1, (opts.groups, opts.group_size)))

      def train_call(model):
        model.train()
        optimizer = torch.optim.Adam(model.parameters(), lr=float(optim.lr),
                                     betas=(float(optim.b1), float(optim.b2)),
                                     eps=float(optim.eps), weight_decay=float(optim.weight_decay))
        loss_fn = maybe_compile(lambda x, s: (model(x, s) - s).abs().mean())

        def step():
          optimizer.zero_grad(set_to_none=True)
          loss_fn(images, scores).backward()
          optimizer.step()
        return step
      measure("train", opts.groups, opts.groups * opts.group_size, train_call,
              prompt_size=opts.group_size - 1)
  if "profile" in opts.whats and "eager" in opts.torch_variants:
    results += _torch_profile(build().eval(), cfg, prompt_images, prompt_scores, sync, opts, peak)
  return results


def _no_grad(fn: Callable, *args: Any) -> Any:
  import torch

  with torch.no_grad():
    return fn(*args)


def _torch_profile(model: Any, cfg: Any, images: Any, scores: Any, sync: Callable,
                   opts: Options, peak: float) -> list[dict[str, Any]]:
  """The JAX profile's stages on the PyTorch implementation (eager)."""

  def wrap(fn):
    def stage(*args):
      def call():
        out = _no_grad(fn, *args)
        sync()
        return out
      _, times = timed(call, opts.warmup, opts.repeats)
      return call(), times, {}
    return stage

  stages = [(name, wrap(fn)) for name, fn in _stages(cfg, {
      "vit": model.backbone_taps,
      "mals": lambda taps: model.mal_maps(model.tap_maps(taps)),
      "fusion": model.fuse_maps,
      "cnn_head": model.head_features,
      "prompt": lambda f, s: model.fuse_prompt(model.prompt_vectors(f, s)),
      "query": model.score_with_fused})]
  return _profile("torch", "eager" + ("+ftz" if opts.torch_flush_denormal else ""), cfg, stages,
                  images, scores, opts, peak)


# The input stream.

def input_measure(config: Any, opts: Options, compare_torch: bool) -> list[dict[str, Any]]:
  """Images/s of the training stream (JPEG originals and the stored-at-input-size PNG build) and,
  with `compare_torch`, of the reference's DataLoader, on synthetic photo-like JPEGs."""
  from promptiqa_jax.data import throughput

  g, n, workers = opts.groups, opts.group_size, opts.input_workers
  size = int(config.data.image_size)
  per_run = opts.input_batches * g * n
  loaders = [
      ("jax", "grain_jpeg", lambda d: throughput.stream_throughput(
          d[1], workers, size, n, g, opts.input_batches)),
      ("jax", f"grain_png{size}", lambda d: throughput.stream_throughput(
          d[1], workers, size, n, g, opts.input_batches, resized=True))]
  if compare_torch:
    loaders.append(("torch", "dataloader_jpeg", lambda d: throughput.reference_throughput(
        d[0], workers, size, n, g, opts.input_batches)))
  results = []
  with tempfile.TemporaryDirectory() as root:
    # The reference's loader reads each group once: enough files for warm-up and timed batches.
    dirs = throughput.prepare(root, (max(1, workers) + opts.input_batches) * g * n,
                              *opts.input_jpeg, size)
    for impl, variant, rate in loaders:
      times = [per_run / rate(dirs) for _ in range(opts.repeats)]
      results.append(record(impl, variant, "input", g, "uint8", per_run, times, None, 1.0,
                            workers=workers, jpeg_size="x".join(map(str, opts.input_jpeg))))
  return results


# The whole run.

def load_config(spec: str) -> Any:
  """`path/to/config.py[:arg]` -> the ConfigDict of its `get_config(arg)`."""
  path, _, arg = spec.partition(":")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"--config {path}: no such config file")
  module_spec = importlib.util.spec_from_file_location("bench_config", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg)


def device_peak(dtype: str, n: int = 2048) -> tuple[float, str]:
  """(peak FLOP/s, where it comes from): the datasheet for known GPUs, else a measured matmul."""
  import jax
  import jax.numpy as jnp

  kind = jax.devices()[0].device_kind
  for name, peaks in DATASHEET_PEAKS.items():
    if name in kind:
      return peaks[dtype], f"datasheet {name} dense {dtype}"
  # No vendor figure: the better of XLA's and numpy's float32 n x n matmul, the fastest of 10 (a
  # peak is the best the device does; a median of a few 0.1 s calls on a shared VM came out 40%
  # low once).
  a = np.random.default_rng(0).standard_normal((n, n), np.float32)
  matmul = jax.jit(jnp.matmul)
  on_device = jax.device_put(a)
  jax_s = min(timed(lambda: matmul(on_device, on_device).block_until_ready(), 2, 10)[1])
  numpy_s = min(timed(lambda: a @ a, 2, 10)[1])
  rates = {"jax": 2 * n ** 3 / jax_s, "numpy": 2 * n ** 3 / numpy_s}
  best = max(rates, key=rates.get)
  return rates[best], (f"measured float32 {n}^3 matmul, {best} (jax {rates['jax'] / 1e9:.0f}, "
                       f"numpy {rates['numpy'] / 1e9:.0f} GFLOP/s); used for every dtype")


def environment() -> dict[str, Any]:
  """Device, versions, threads and XLA_FLAGS."""
  import jax

  versions = {"python": platform.python_version()}
  for name in ("jax", "jaxlib", "flax", "optax", "numpy", "torch", "grain"):
    try:
      versions[name] = __import__(name).__version__
    except ImportError:
      pass
  cpu = platform.processor()
  try:
    with open("/proc/cpuinfo") as f:
      cpu = next((line.split(":", 1)[1].strip() for line in f
                  if line.startswith("model name")), cpu)
  except OSError:
    pass
  device = jax.devices()[0]
  threads = {"cpus": len(os.sched_getaffinity(0)),
             "xla": "intra-op pool sized from the CPU affinity"}
  if "torch" in versions:
    import torch

    threads["torch"] = torch.get_num_threads()
  return {"device": {"platform": device.platform, "kind": device.device_kind, "count":
                     len(jax.devices()), "cpu": cpu},
          "versions": versions, "threads": threads, "xla_flags": os.environ.get("XLA_FLAGS", "")}


def ratios(results: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
  """JAX images/s over PyTorch images/s, for each pair of records of the same (what, batch)."""
  return [dict(what=t["what"], batch=t["batch"], jax=f"{j['variant']} {j['dtype']}",
               torch=f"{t['variant']} {t['dtype']}", ratio=j["images_per_s"] / t["images_per_s"])
          for j in results for t in results if j["impl"] == "jax" and t["impl"] == "torch"
          and (j["what"], j["batch"]) == (t["what"], t["batch"])]


def run(config: Any, opts: Options, compare_torch: bool = False) -> dict[str, Any]:
  """Every measurement of `opts` for an experiment config; the report `main` writes as JSON."""
  import jax

  from promptiqa_jax.models.config import ModelConfig
  from promptiqa_jax.models.promptiqa import PromptIQANet

  cfg = dataclasses.replace(ModelConfig.from_mapping(config.model.to_dict()), dtype=opts.dtype,
                            remat=opts.remat, attention=opts.attention)
  cfg.validate()
  report = {"environment": environment(), "load_average_start": os.getloadavg(),
            "options": dataclasses.asdict(opts), "model": cfg.to_dict()}
  peak, source = device_peak(opts.dtype, opts.peak_matmul)
  report.update(peak_flops=peak, peak_source=source,
                model_flops=model_flops(cfg, opts.prompt_size), notes=[])
  results: list[dict[str, Any]] = []
  model_whats = [w for w in opts.whats if w != "input"]
  if model_whats:
    size = cfg.image_size
    init_args = (jax.random.PRNGKey(0), np.zeros((1, 2, size, size, 3), np.float32),
                 np.zeros((1, 2), np.float32))
    variables = jax.jit(PromptIQANet(cfg).init).lower(*init_args).compile(
        dict(opts.compiler_options) or None)(*init_args)
    state = None
    if compare_torch and cfg.backbone != "vit":
      report["notes"].append(f"no PyTorch implementation of backbone {cfg.backbone!r}: JAX only")
    elif compare_torch and opts.torch_variants:
      state = torch_state(cfg, variables)
    results += jax_measure(cfg, variables, config.optim, opts, peak)
    del variables
    jax.clear_caches()
    gc.collect()
    if state is not None:
      results += torch_measure(cfg, state, config.optim, opts, peak)
      del state
      gc.collect()
  if "input" in opts.whats:
    results += input_measure(config, opts, compare_torch)
  report.update(results=results, ratios=ratios(results), load_average_end=os.getloadavg())
  return report


def format_tables(report: dict[str, Any]) -> str:
  """The results and ratios as markdown tables."""
  env = report["environment"]
  lines = [f"device: {env['device']['kind']} ({env['device']['cpu']}), "
           f"{env['threads']['cpus']} CPUs, load {report['load_average_start'][0]:.2f} -> "
           f"{report['load_average_end'][0]:.2f}, "
           f"peak {report['peak_flops'] / 1e9:.0f} GFLOP/s ({report['peak_source']})", "",
           "| impl | variant | what | batch | dtype | images/s | median s | compile s | "
           "GFLOP/s | MFU | XLA/analytic FLOPs | peak memory |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|"]
  for r in report["results"]:
    gflops = f"{r['flops_per_s'] / 1e9:.1f}" if "flops_per_s" in r else ""
    mfu = f"{100 * r['mfu']:.1f}%" if "mfu" in r else ""
    xla = f"{r['xla_flops'] / r['flops']:.3f}" if r.get("xla_flops") and r.get("flops") else ""
    compile_s = f"{r['compile_s']:.1f}" if "compile_s" in r else ""
    memory = (f"{r['peak_memory_bytes'] / 2**30:.2f} GiB ({r['memory_source']})"
              if r.get("peak_memory_bytes") is not None else "")
    lines.append(f"| {r['impl']} | {r['variant']} | {r['what']} | {r['batch']} | {r['dtype']} | "
                 f"{r['images_per_s']:.3g} | {r['seconds']:.4g} | {compile_s} | {gflops} | {mfu} | "
                 f"{xla} | {memory} |")
  if report["ratios"]:
    lines += ["", "| what | batch | JAX | PyTorch | JAX / PyTorch |", "|---|---|---|---|---|"]
    lines += [f"| {r['what']} | {r['batch']} | {r['jax']} | {r['torch']} | {r['ratio']:.2f}x |"
              for r in report["ratios"]]
  lines += [f"note: {note}" for note in report["notes"]]
  return "\n".join(lines)


def options_from_args(args: argparse.Namespace, config: Any) -> Options:
  """Options from the `bench` command line, defaults from the config (`--quick`: fewest runs)."""
  whats = tuple(w.strip() for w in args.what.split(",") if w.strip())
  unknown = sorted(set(whats) - set(WHATS))
  if unknown:
    raise ValueError(f"--what: unknown {unknown}; choose from {', '.join(WHATS)}")
  data = config.data
  if args.batch_sizes:
    batch_sizes = tuple(int(b) for b in args.batch_sizes.split(","))
  else:
    batch_sizes = (2,) if args.quick else (1, int(data.eval_batch_size))
  if args.torch_variants:
    variants = tuple(v.strip() for v in args.torch_variants.split(","))
  elif args.quick:
    variants = ("eager",) if args.dtype == "float32" else ("autocast",)
  else:
    variants = ("eager", "compile") if args.dtype == "float32" else (
        "autocast", "compile_autocast")
  return Options(
      whats=whats, batch_sizes=batch_sizes,
      groups=args.groups or int(data.groups_per_batch),
      group_size=args.group_size or int(data.group_size),
      prompt_size=int(data.prompt_size), dtype=args.dtype, remat=args.remat,
      attention=args.attention,
      warmup=1 if args.quick else args.warmup, repeats=1 if args.quick else args.repeats,
      torch_variants=variants, torch_flush_denormal=args.torch_flush_denormal,
      input_workers=(args.input_workers if args.input_workers is not None
                     else min(int(data.get("num_workers", 0)), os.cpu_count() or 1)),
      input_batches=2 if args.quick else 8,
      input_jpeg=(256, 192) if args.quick else (1024, 768),
      peak_matmul=512 if args.quick else 2048,
      compiler_options=(("xla_backend_optimization_level", 0),) if args.quick else ())


def main(args: argparse.Namespace) -> int:
  """The `promptiqa-jax bench` command: runs, prints the tables, writes `--json`."""
  if args.threads:
    os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:args.threads])
  if args.compare == "torch":
    import torch

    # Before PyTorch starts its threads: they inherit the floating-point mode of this one.
    torch.set_flush_denormal(args.torch_flush_denormal)
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    # TF32 matmuls, as JAX's default precision uses on GPUs; no effect on CPUs.
    torch.set_float32_matmul_precision("high")
  config = load_config(args.config)
  opts = options_from_args(args, config)
  report = run(config, opts, compare_torch=args.compare == "torch")
  report["config"] = args.config
  print(format_tables(report))
  if args.json:
    with open(args.json, "w") as f:
      json.dump(report, f, indent=1)
  return 0
