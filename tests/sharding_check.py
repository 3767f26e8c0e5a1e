"""One update of a small PromptIQA on 1 device, on 8 (data=8) and on data=4 x fsdp=2; prints JSON.

Run by tests/test_sharding.py in a subprocess with 8 simulated CPU devices (XLA_FLAGS=
--xla_force_host_platform_device_count=8 must be set before JAX starts; pytest keeps one device).
The model keeps every kind of layer of the reference (ViT, MAL, BatchNorm head, prompt
transformers) and its dropout: BatchNorm statistics are each group's own (the release's per-GPU
statistics) wherever the group lands, and dropout masks must not depend on how the batch is split. The update is the trainer's (make_train_step under
jit_train_step).
"""
import json
import os
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from promptiqa_jax import sharding, trainer
from promptiqa_jax.models.config import ModelConfig
from promptiqa_jax.models.promptiqa import PromptIQANet
from promptiqa_jax.optim import build_optimizer

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import update_check  # noqa: E402  (a sibling module, importable once the folder is on the path)

GROUPS, GROUP_SIZE = 8, 3
# Small enough to compile three times in a test; still one of every layer kind. The head's last
# stage pools a 2x2 map, so each group's BatchNorm sees G x 4 values per channel (the reference's
# G x 9): over G = 3 values alone, its 1/std amplifies float32 rounding of the gradients about
# tenfold (measured: 1 vs 8 devices 8e-7 apart on a MAL gamma; in float64 2e-17).
CONFIG = ModelConfig.tiny(image_size=16, vit_depth=1, taps=(0,), num_mals=1, pair_depth=1,
                          prompt_fusion_depth=1, query_depth=1, cnn_head=((16, 3, 1), (16, 1, 2)))
OPTIM = ml_collections.ConfigDict(dict(lr=1e-3, weight_decay=1e-5, b1=0.9, b2=0.999, eps=1e-8,
                                       epochs=2, warmup_steps=0))
# Small enough that fsdp=2 splits the ViT, MAL and head kernels.
FSDP_MIN_SIZE = 256


def one_update(state, batch, mesh, min_size):
  """(state after one step, metrics, number of state arrays split over fsdp), as host numpy."""
  model = PromptIQANet(CONFIG)
  tx, schedule = build_optimizer(OPTIM, 10)
  shardings = sharding.state_sharding(state, mesh, min_size)
  step = trainer.jit_train_step(trainer.make_train_step(model, tx, schedule), mesh, shardings)
  state = jax.device_put(state, shardings)
  global_batch = sharding.global_batch(batch, mesh)
  # Unoptimised code compiles in half the time; every layout gets the same level.
  compiled = step.lower(state, global_batch).compile(
      compiler_options={"xla_backend_optimization_level": 0})
  new_state, metrics = compiled(state, global_batch)
  split = [leaf for leaf in jax.tree_util.tree_leaves(new_state)
           if "fsdp" in jax.tree_util.tree_leaves(tuple(leaf.sharding.spec))
           and leaf.addressable_shards[0].data.shape != leaf.shape]
  return jax.device_get(new_state), jax.device_get(metrics), len(split)


def flat(tree):
  return {jax.tree_util.keystr(path): np.asarray(leaf)
          for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def main():
  assert jax.device_count() == 8, f"expected 8 simulated devices, got {jax.devices()}"
  model = PromptIQANet(CONFIG)
  rng = np.random.default_rng(0)
  size = CONFIG.image_size
  batch = {"image": rng.uniform(-1, 1, (GROUPS, GROUP_SIZE, size, size, 3)).astype(np.float32),
           "score": rng.uniform(0, 1, (GROUPS, GROUP_SIZE)).astype(np.float32)}
  variables = jax.jit(model.init)(jax.random.PRNGKey(0), batch["image"][:1], batch["score"][:1])
  tx, _ = build_optimizer(OPTIM, 10)
  state = jax.device_get(trainer.TrainState(
      step=jnp.zeros((), jnp.int32), params=variables["params"],
      batch_stats=variables["batch_stats"], opt_state=tx.init(variables["params"]),
      rng=jax.random.PRNGKey(1)))

  devices = jax.devices()
  reference, ref_metrics, _ = one_update(state, batch, sharding.make_mesh(1, 1, devices[:1]),
                                         FSDP_MIN_SIZE)
  ref_mu = optax.tree_utils.tree_get(reference.opt_state, "mu")
  grads = {k: v / (1 - OPTIM.b1) for k, v in flat(ref_mu).items()}
  report = {"loss": float(ref_metrics["loss"])}
  for name, (data, fsdp) in {"data8": (8, 1), "data4_fsdp2": (4, 2)}.items():
    new, metrics, split = one_update(state, batch, sharding.make_mesh(data, fsdp), FSDP_MIN_SIZE)
    sides = [{"params": flat(s.params), "mu": flat(optax.tree_utils.tree_get(s.opt_state, "mu")),
              "nu": flat(optax.tree_utils.tree_get(s.opt_state, "nu"))} for s in (reference, new)]
    result = update_check.compare_first_step(flat(state.params), grads, *sides, lr=OPTIM.lr,
                                             b1=OPTIM.b1, b2=OPTIM.b2, eps=OPTIM.eps)
    stats_ref, stats_new = flat(reference.batch_stats), flat(new.batch_stats)
    result["batch_stats_max_diff"] = max(float(np.abs(stats_new[k] - stats_ref[k]).max())
                                         for k in stats_ref)
    result["batch_stats_max_change"] = max(
        float(np.abs(stats_ref[k] - v).max()) for k, v in flat(state.batch_stats).items())
    result["loss_diff"] = abs(float(metrics["loss"]) - report["loss"])
    result["grad_norm_rel_diff"] = abs(float(metrics["grad_norm"]) / float(
        ref_metrics["grad_norm"]) - 1)
    result["params_max_diff"] = max(float(np.abs(v - flat(reference.params)[k]).max())
                                    for k, v in flat(new.params).items())
    result["split_arrays"] = split
    result["train_step"] = int(new.step)
    report[name] = result
  print("REPORT " + json.dumps(report))


if __name__ == "__main__":
  main()
