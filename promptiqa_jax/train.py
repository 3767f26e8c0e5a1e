"""The training program: `python -m promptiqa_jax.train --config configs/NAME.py --workdir DIR`.

Trains, resuming from the checkpoints in WORKDIR (a folder or gs://); evaluates every
`train.eval_every` steps and at the end; exports WORKDIR/best_model and WORKDIR/model; writes
metrics and TensorBoard events (WORKDIR/tensorboard). The work is `promptiqa_jax.trainer`'s.
Multi-process: on TPU pods and under SLURM `jax.distributed.initialize()` finds its peers
(--distributed=on); elsewhere pass --coordinator_address, --num_processes and --process_id.
launch/ holds a launcher for each case.
"""
from __future__ import annotations

from absl import app, flags, logging
from ml_collections import config_flags

from promptiqa_jax import distributed, trainer

_CONFIG = config_flags.DEFINE_config_file("config", None, "experiment config file",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "where checkpoints, metrics and results go: a "
                                "folder or gs://BUCKET/PATH")
distributed.define_flags()
flags.adopt_module_key_flags(distributed)


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  # Orbax and grain log every file operation at INFO; --verbosity=0 brings them back.
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  distributed.initialize_from_flags()
  trainer.train_and_evaluate(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
  flags.mark_flags_as_required(["config", "workdir"])
  app.run(main)
