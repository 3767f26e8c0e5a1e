"""The `promptiqa-jax bench` command: the JAX model beside the PyTorch implementation, one process.

  promptiqa-jax bench --config configs/paper.py --what train,infer,prompt,input --compare torch \\
      --groups 1 --group-size 3 --batch-sizes 1,2,4 --json bench.json

Measurements (`--what`): `train`, the whole training step (forward, backward, optimiser) on
`groups x group_size` images; `infer`, scoring with a cached prompt at each of `--batch-sizes`;
`prompt`, encoding one prompt of `data.prompt_size` pairs (images to fused prompt, a latency:
`seconds`); `input`, the training stream's images/s (`input_stream.py`, beside the reference's
DataLoader); `profile`, the forward pass component by component (where the time goes). Model
inputs are arrays already in memory (on the device): decoding is timed by `input` alone.

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
import os
from typing import Any

import jax

from promptiqa_jax.bench import jax_side, report, timing, torch_side
from promptiqa_jax.bench.flops import model_flops
from promptiqa_jax.bench.plan import WHATS, Options
from promptiqa_jax.config_files import load_config
from promptiqa_jax.models.config import ModelConfig


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


def run(config: Any, opts: Options, compare_torch: bool = False) -> dict[str, Any]:
  """Every measurement of `opts` for an experiment config; the report `main` writes as JSON."""
  cfg = dataclasses.replace(ModelConfig.from_mapping(config.model.to_dict()), dtype=opts.dtype,
                            remat=opts.remat, attention=opts.attention)
  cfg.validate()
  bench_report = {"environment": timing.environment(), "load_average_start": os.getloadavg(),
                  "options": dataclasses.asdict(opts), "model": cfg.to_dict()}
  peak, source = timing.device_peak(opts.dtype, opts.peak_matmul)
  bench_report.update(peak_flops=peak, peak_source=source,
                      model_flops=model_flops(cfg, opts.prompt_size), notes=[])
  records: list[dict[str, Any]] = []
  if any(w != "input" for w in opts.whats):
    records += _model_measure(cfg, config.optim, opts, peak, compare_torch, bench_report["notes"])
  if "input" in opts.whats:
    # TFDS, OpenCV and grain: loaded only when the input stream is measured.
    from promptiqa_jax.bench import input_stream

    records += input_stream.input_measure(config, opts, compare_torch)
  bench_report.update(results=records, ratios=report.ratios(records),
                      load_average_end=os.getloadavg())
  return bench_report


def _model_measure(cfg: ModelConfig, optim: Any, opts: Options, peak: float, compare_torch: bool,
                   notes: list[str]) -> list[dict[str, Any]]:
  """JAX's records, then PyTorch's on the same weights (JAX freed first); a reason for skipping
  PyTorch goes to `notes`."""
  variables = jax_side.random_variables(cfg, opts)
  state = None
  if compare_torch and cfg.backbone != "vit":
    notes.append(f"no PyTorch implementation of backbone {cfg.backbone!r}: JAX only")
  elif compare_torch and opts.torch_variants:
    state = torch_side.torch_state(cfg, variables)
  records = jax_side.jax_measure(cfg, variables, optim, opts, peak)
  del variables
  jax.clear_caches()
  gc.collect()
  if state is not None:
    records += torch_side.torch_measure(cfg, state, optim, opts, peak)
    del state
    gc.collect()
  return records


def main(args: argparse.Namespace) -> int:
  """The `promptiqa-jax bench` command: runs, prints the tables, writes `--json`."""
  if args.threads:
    os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:args.threads])
  if args.compare == "torch":
    import torch  # optional: the [torch] extra

    # Before PyTorch starts its threads: they inherit the floating-point mode of this one.
    torch.set_flush_denormal(args.torch_flush_denormal)
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    # TF32 matmuls, as JAX's default precision uses on GPUs; no effect on CPUs.
    torch.set_float32_matmul_precision("high")
  config = load_config(args.config)
  opts = options_from_args(args, config)
  bench_report = run(config, opts, compare_torch=args.compare == "torch")
  bench_report["config"] = args.config
  print(report.format_tables(bench_report))
  if args.json:
    report.write_json(bench_report, args.json)
  return 0

