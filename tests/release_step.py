"""One training step of the release, run its way in PyTorch, against our jitted update.

The release trains with DistributedDataParallel, one group of G images per GPU and no
SyncBatchNorm. Each rank forwards its own group in train mode (the CNN head's BatchNorm normalises
with that group's statistics and moves its own running statistics), takes the L1 loss over its G
predictions, and DDP averages the ranks' gradients before every rank takes the same
torch.optim.Adam step (coupled L2 weight decay). `release_step` runs the ranks one after another on
one model, accumulating gradients: a train-mode forward does not read the running statistics, so
this computes what R copies with identical weights compute, with one rank's activations in memory
at a time. Every rank's running statistics start from the same values; the release saves rank 0's,
and the model here is left holding the mean of the ranks' (what promptiqa_jax keeps).

`update_against_release` runs promptiqa_jax.trainer's update on the same weights and batch;
`float32_agreement` measures the two against each other. Run as a program, it does so at full size
(the reference architecture, 2 groups of G = 3) and prints `REPORT {json}`: tests/test_train.py
runs it in a process of its own, with an XLA flag that must be set before JAX starts.
"""
from __future__ import annotations

import json
import os
import resource
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import update_check  # noqa: E402  (a sibling module, importable once the folder is on the path)
from promptiqa_jax import config_defaults, sharding, trainer  # noqa: E402
from promptiqa_jax.interop import torch_model  # noqa: E402
from promptiqa_jax.interop.convert import flax_to_torch, torch_to_flax  # noqa: E402
from promptiqa_jax.models.config import ModelConfig  # noqa: E402
from promptiqa_jax.models.promptiqa import PromptIQANet  # noqa: E402
from promptiqa_jax.optim import build_optimizer  # noqa: E402

_RUNNING = ("running_mean", "running_var")
# The absolute part of the float32 gradient tolerance against the release's step. Each MAL gamma is
# one scalar whose gradient sums B x C x grid^2 terms, which PyTorch sums per rank: there both
# frameworks' float32 stand up to 3e-7 (tiny config) from float64, the gradients' 1e-7 elsewhere.
RANKS_GRAD_ATOL = 1e-6
# XLA's CPU scheduler ordered for memory rather than concurrency: the full-size update's temporary
# buffers shrink from 13.4 GB to 11.7 GB (memory_analysis), which a 24 GB machine needs.
FULL_SIZE_XLA_FLAGS = "--xla_cpu_enable_concurrency_optimized_scheduler=false"


def release_step(model: torch.nn.Module, images: np.ndarray, scores: np.ndarray,
                 optimizer: torch.optim.Optimizer, groups_per_rank: int = 1) -> dict[str, Any]:
  """One update of `model` (in train mode) on `images [g, G, H, W, 3]`, `scores [g, G]`.

  Rank r forwards groups [r * groups_per_rank, (r + 1) * groups_per_rank) in one call (BatchNorm
  statistics over all of them: groups_per_rank = g is the single-process, global-statistics
  variant). Returns {"loss": mean of the ranks' losses, "grads": {name: gradient averaged over
  ranks, as numpy}, "rank_stats": [{buffer name: running statistic after that rank's forward}]}.
  """
  groups = scores.shape[0]
  if groups % groups_per_rank:
    raise ValueError(f"{groups} groups do not split into ranks of {groups_per_rank}")
  ranks = groups // groups_per_rank
  buffers = {name: b for name, b in model.named_buffers() if name.endswith(_RUNNING)}
  start = {name: b.detach().clone() for name, b in buffers.items()}
  optimizer.zero_grad(set_to_none=True)
  losses, rank_stats = [], []
  for rank in range(ranks):
    part = slice(rank * groups_per_rank, (rank + 1) * groups_per_rank)
    with torch.no_grad():
      for name, buffer in buffers.items():
        buffer.copy_(start[name])
    x = torch.from_numpy(np.ascontiguousarray(np.moveaxis(images[part], -1, -3)))
    target = torch.from_numpy(np.ascontiguousarray(scores[part]))
    loss = torch.nn.functional.l1_loss(model(x, target), target)
    # DDP averages the ranks' gradients: each rank's share is its own gradient / ranks.
    (loss / ranks).backward()
    losses.append(loss.item())
    rank_stats.append({name: b.detach().numpy().copy() for name, b in buffers.items()})
    del x, target, loss
  with torch.no_grad():
    for name, buffer in buffers.items():
      buffer.copy_(torch.from_numpy(np.mean([s[name] for s in rank_stats], axis=0)))
    # Every rank counted one batch; the count was advanced R times above.
    for name, count in model.named_buffers():
      if name.endswith("num_batches_tracked"):
        count.sub_(ranks - 1)
  grads = {name: p.grad.numpy().copy() for name, p in model.named_parameters()}
  optimizer.step()
  return {"loss": float(np.mean(losses)), "grads": grads, "rank_stats": rank_stats}


def update_against_release(config: ModelConfig, images: np.ndarray, scores: np.ndarray, *,
                           seed: int, gain: float = 1.0, groups_per_rank: int = 1) -> dict:
  """Our jitted update vs `release_step` on the same weights and batch, both in `config.dtype`
  (float32, or float64 under jax.enable_x64 for exact agreement).

  Adam's first step moves every parameter by about lr: lr 1e-3 makes the step stand far above
  float32 rounding of the parameters. Returns the arrays of both sides (release names). One side's
  state at a time is in memory (at full size each holds 5 GB): ours first, then the PyTorch model is
  built again from its seed.
  """
  dtype = np.dtype(config.dtype)
  optim = config_defaults.optim_config(lr=1e-3)

  def release_model():
    model = torch_model.randomize_(torch_model.TorchPromptIQA(config), seed, gain)
    return model.to(getattr(torch, dtype.name)).train()

  reference = release_model()
  shapes = {k: tuple(v.shape) for k, v in reference.state_dict().items()}
  # Variables in the compute dtype: float64 parameters give float64 gradients.
  variables = jax.tree_util.tree_map(
      lambda v: jnp.asarray(v, dtype),
      torch_to_flax({k: v.detach().numpy() for k, v in reference.state_dict().items()}, config))
  del reference
  tx, schedule = build_optimizer(optim, 10, trainer.trainable_fn(config))
  state = trainer.TrainState(step=jnp.zeros((), jnp.int32), params=variables["params"],
                             batch_stats=variables["batch_stats"],
                             opt_state=jax.jit(tx.init)(variables["params"]),
                             rng=jax.random.PRNGKey(0))
  del variables
  mesh = sharding.make_mesh(1, 1)
  shardings = sharding.state_sharding(state, mesh)
  step = trainer.jit_train_step(trainer.make_train_step(PromptIQANet(config), tx, schedule),
                                mesh, shardings)
  batch = sharding.global_batch({"image": images.astype(dtype), "score": scores.astype(dtype)},
                                mesh)
  # Unoptimised code compiles in half the time; it rounds differently only at float32 level.
  compiled = step.lower(state, batch).compile(
      compiler_options={"xla_backend_optimization_level": 0})
  state, metrics = compiled(state, batch)
  del batch, compiled
  metrics = jax.device_get(metrics)
  ours = flax_to_torch({"params": state.params, "batch_stats": state.batch_stats}, shapes)
  moments = {m: flax_to_torch({"params": optax.tree_utils.tree_get(state.opt_state, m)}, shapes)
             for m in ("mu", "nu")}
  step_count = int(state.step)
  del state

  reference = release_model()
  before = {k: v.detach().numpy().copy() for k, v in reference.state_dict().items()}
  adam = torch.optim.Adam(reference.parameters(), lr=optim.lr, betas=(optim.b1, optim.b2),
                          eps=optim.eps, weight_decay=optim.weight_decay)
  released = release_step(reference, images.astype(dtype), scores.astype(dtype), adam,
                          groups_per_rank)
  return {
      "optim": optim, "names": [name for name, _ in reference.named_parameters()],
      "before": before, "ours": ours, "moments": moments, "grads": released["grads"],
      # Views of the PyTorch tensors, which they keep alive.
      "after": {k: v.detach().numpy() for k, v in reference.state_dict().items()},
      "torch_moments": {m: {name: adam.state[p][key].numpy()
                            for name, p in reference.named_parameters()}
                        for m, key in (("mu", "exp_avg"), ("nu", "exp_avg_sq"))},
      "train_step": step_count, "learning_rate": float(metrics["learning_rate"]),
      "loss": float(metrics["loss"]), "torch_loss": released["loss"],
      "grad_norm": float(metrics["grad_norm"]), "rank_stats": released["rank_stats"],
      "stats": [k for k in before if k.endswith(_RUNNING)],
  }


def float32_agreement(run: dict, grad_atol: float = RANKS_GRAD_ATOL) -> dict:
  """update_check's ratios of the Adam step (<= 1 passes) and the measured differences."""
  optim, names, before = run["optim"], run["names"], run["before"]
  result = update_check.compare_first_step(
      before={k: before[k] for k in names},
      grads={k: run["grads"][k] + optim.weight_decay * before[k] for k in names},
      expected={"params": {k: run["after"][k] for k in names}, **run["torch_moments"]},
      actual={"params": {k: run["ours"][k] for k in names}, **run["moments"]},
      # optax divides nu by 1 - b2**t formed in float32: 1 - float32(0.999) is 1.3e-5 off 0.001,
      # so its first step is 6.4e-6 shorter than PyTorch's (which forms it in float64).
      lr=optim.lr, b1=optim.b1, b2=optim.b2, eps=optim.eps, step_rtol=1e-5, grad_atol=grad_atol)
  torch_grad_norm = np.sqrt(sum(float((g.astype(np.float64)**2).sum())
                                for g in run["grads"].values()))
  stats = run["stats"]
  result.update(
      train_step=run["train_step"], learning_rate=run["learning_rate"],
      expected_learning_rate=optim.lr,
      loss=run["loss"], loss_rel_diff=abs(run["loss"] / run["torch_loss"] - 1),
      grad_norm_rel_diff=abs(run["grad_norm"] / torch_grad_norm - 1),
      stats_count=len(stats),
      stats_max_diff=max(float(np.abs(run["ours"][k] - run["after"][k]).max()) for k in stats),
      stats_min_change=min(float(np.abs(run["after"][k] - before[k]).max()) for k in stats),
      # How far apart the ranks' own running statistics ended (0 with one rank).
      stats_rank_spread=max(float(np.abs(r[k] - run["rank_stats"][0][k]).max())
                            for r in run["rank_stats"] for k in stats))
  return result


def main() -> None:
  """The full-size comparison: prints `REPORT {json}` with its time and peak memory."""
  start = time.perf_counter()
  torch.set_num_threads(2)
  rng = np.random.default_rng(2)
  images = rng.uniform(-1, 1, (2, 3, 224, 224, 3)).astype(np.float32)
  scores = rng.uniform(0, 1, (2, 3)).astype(np.float32)
  config = ModelConfig.paper(mal_dropout=0.0, score_dropout=0.0, remat=True)
  # Weights at PyTorch's init spread: larger ones make the MAL softmax nearly one-hot and amplify
  # float32 rounding (see test_parity).
  result = float32_agreement(update_against_release(config, images, scores, seed=3,
                                                    gain=3**-0.5))
  result["seconds"] = time.perf_counter() - start
  result["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
  print("REPORT " + json.dumps(result))


if __name__ == "__main__":
  main()
