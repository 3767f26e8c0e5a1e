"""What a benchmark run measures: `Options` (what and how often), the model calls it times
(`Workload`) and their random inputs, shared by the JAX and PyTorch sides."""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple

import numpy as np

WHATS = ("train", "infer", "prompt", "input", "profile")


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


class Workload(NamedTuple):
  """One timed call: `prompt` (encode `batch` pairs), `infer` (score `batch` queries with a cached
  prompt) or `train` (a step on `batch` groups); `images` per call; the prompt's size."""

  what: str
  batch: int
  images: int
  prompt_size: int


def workloads(opts: Options) -> list[Workload]:
  """The model calls `opts.whats` asks for, in the order they are measured: prompt, infer at each
  batch size, train (last: JAX's step donates the variables the others use)."""
  p, g, n = opts.prompt_size, opts.groups, opts.group_size
  works = [Workload("prompt", p, p, p)] if "prompt" in opts.whats else []
  if "infer" in opts.whats:
    works += [Workload("infer", batch, batch, p) for batch in opts.batch_sizes]
  if "train" in opts.whats:
    works.append(Workload("train", g, g * n, n - 1))
  return works


@dataclasses.dataclass(frozen=True)
class Inputs:
  """Random model inputs: images in [-1, 1] and scores in [0, 1]; numpy NHWC as generated, each
  side `map`s them onto its device (PyTorch's images as NCHW)."""

  prompt_images: Any  # [P, S, S, 3]
  prompt_scores: Any  # [P]
  infer: dict[int, Any]  # batch size -> [batch, S, S, 3]
  train_images: Any  # [groups, group_size, S, S, 3]
  train_scores: Any  # [groups, group_size]

  def map(self, image: Callable[[np.ndarray], Any], score: Callable[[np.ndarray], Any]) -> Inputs:
    """The same inputs with `image` applied to each image array and `score` to each score array."""
    return Inputs(image(self.prompt_images), score(self.prompt_scores),
                  {batch: image(x) for batch, x in self.infer.items()},
                  image(self.train_images), score(self.train_scores))


def random_inputs(image_size: int, opts: Options) -> Inputs:
  """float32 inputs of every workload of `opts` (and the profile, on the prompt's images)."""
  rng = np.random.default_rng(0)

  def uniform(low, high, shape):
    return rng.uniform(low, high, shape).astype(np.float32)

  image, groups = (image_size, image_size, 3), (opts.groups, opts.group_size)
  return Inputs(uniform(-1, 1, (opts.prompt_size,) + image), uniform(0, 1, opts.prompt_size),
                {batch: uniform(-1, 1, (batch,) + image) for batch in opts.batch_sizes},
                uniform(-1, 1, groups + image), uniform(0, 1, groups))
