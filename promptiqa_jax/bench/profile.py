"""The forward pass stage by stage (`--what profile`): the stages' order and FLOPs, and the chain
that runs them, the same for JAX and PyTorch; each side supplies how one stage is timed."""
from __future__ import annotations

from typing import Any, Callable

from promptiqa_jax.bench.flops import model_flops
from promptiqa_jax.bench.plan import Options
from promptiqa_jax.bench.report import record

# Each stage's parts of `model_flops`, per image ("prompt" adds the prompt's fusion once).
_STAGE_FLOPS = {"backbone": ("image",), "vit": ("vit",), "mals": ("mal_spatial", "mal_views"),
                "fusion": ("fusion_mal", "fusion_block"), "cnn_head": ("cnn_head",),
                "prompt": ("pair",), "query": ("query",)}

# A stage runner: stage(*inputs) -> (its output, seconds of each timed call, extra record fields).
Stage = Callable[..., tuple[Any, list[float], dict[str, Any]]]


def stages(cfg: Any, fns: dict[str, Any]) -> list[tuple[str, Any]]:
  """(name, fns[name]) in order: the backbone, or the ViT, MALs, fusion and head; then the
  prompt (pair encoding and fusion) and the query."""
  names = ["vit", "mals", "fusion", "cnn_head"] if cfg.backbone == "vit" else ["backbone"]
  return [(name, fns[name]) for name in names + ["prompt", "query"]]


def chain(impl: str, variant: str, cfg: Any, runners: list[tuple[str, Stage]], images: Any,
          scores: Any, opts: Options, peak: float) -> list[dict[str, Any]]:
  """Runs the stages as a chain (each on the previous one's output; the prompt stage on the
  features and scores, the query stage on the features and the fused prompt)."""
  flops = model_flops(cfg, opts.prompt_size)
  n, value, features, results = len(images), images, None, []
  for name, stage in runners:
    args = {"prompt": (features, scores), "query": (features, value)}.get(name, (value,))
    value, times, info = stage(*args)
    count = n * sum(flops[k] for k in _STAGE_FLOPS[name])
    count += flops["fusion"] if name == "prompt" else 0
    results.append(record(impl, variant, f"profile/{name}", n, opts.dtype, n, times, count, peak,
                          **info))
    if name in ("backbone", "cnn_head"):
      features = value
  return results
