"""The reference's optimiser: PyTorch Adam with L2 weight decay, cosine learning rate per epoch.

PyTorch's `Adam(weight_decay=wd)` adds `wd * param` to the gradient before the moments (coupled L2),
unlike AdamW; `add_decayed_weights` placed before `scale_by_adam` does exactly that. The reference
steps its cosine schedule once per epoch: lr(e) = lr * 0.5 * (1 + cos(pi * e / E)).
"""
from __future__ import annotations

from typing import Any, Callable

import jax.numpy as jnp
import optax


def per_epoch_cosine(lr: float, epochs: int, steps_per_epoch: int,
                     warmup_steps: int = 0) -> Callable[[Any], Any]:
  """Learning rate at a step: cosine over epochs, constant within an epoch, optional linear warmup."""
  if epochs <= 0 or steps_per_epoch <= 0:
    raise ValueError(f"epochs ({epochs}) and steps_per_epoch ({steps_per_epoch}) must be positive")

  def schedule(step):
    epoch = jnp.minimum(step // steps_per_epoch, epochs)
    value = lr * 0.5 * (1 + jnp.cos(jnp.pi * epoch / epochs))
    if warmup_steps:
      value = value * jnp.minimum(1.0, (step + 1) / warmup_steps)
    return value

  return schedule


def build_optimizer(optim: Any, steps_per_epoch: int,
                    trainable: Callable[[tuple[str, ...]], bool] | None = None
                    ) -> tuple[optax.GradientTransformation, Callable[[Any], Any]]:
  """(optimizer, schedule) from the `optim` config section.

  Fields: lr, weight_decay, b1, b2, eps, epochs, warmup_steps (optional). `trainable(path)`
  decides per parameter path; frozen parameters get no update and no weight decay.
  """
  schedule = per_epoch_cosine(float(optim.lr), int(optim.epochs), steps_per_epoch,
                              int(optim.get("warmup_steps", 0)))
  tx = optax.chain(
      optax.add_decayed_weights(float(optim.weight_decay)),
      optax.scale_by_adam(b1=float(optim.b1), b2=float(optim.b2), eps=float(optim.eps)),
      optax.scale_by_learning_rate(schedule),
  )
  if trainable is not None:
    def labels(params):
      return _map_with_path(lambda path, _: "train" if trainable(path) else "frozen", params)

    tx = optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)
  return tx, schedule


def _map_with_path(fn, tree):
  import jax

  return jax.tree_util.tree_map_with_path(
      lambda path, leaf: fn(tuple(getattr(k, "key", str(k)) for k in path), leaf), tree)
