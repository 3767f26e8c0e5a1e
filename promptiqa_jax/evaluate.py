"""The evaluation program: a trained model scored on `config.data.eval` (promptiqa_jax.evaluators).

  python -m promptiqa_jax.evaluate --config configs/synthetic.py --workdir DIR
  python -m promptiqa_jax.evaluate --config configs/synthetic.py --workdir DIR --split test \\
      --checkpoint MODEL_DIR --config.data.prompt_size=5

Writes DIR/eval/<name>.json (default evaluate.json) and the scatter plots, and prints the table. Multi-process runs take
the training program's flags (--coordinator_address, --num_processes, --process_id,
--distributed; see promptiqa_jax.distributed): each process featurises its share of every split.
"""
from __future__ import annotations

from absl import app, flags
from ml_collections import config_flags

from promptiqa_jax import distributed, evaluators

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file (get_config).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Training workdir (a folder or gs://BUCKET/PATH); "
                               "results go to WORKDIR/eval/.")
_CHECKPOINT = flags.DEFINE_string("checkpoint", None,
                                  "Model directory (default: the workdir's model).")
_SPLIT = flags.DEFINE_string("split", None, "Split to evaluate (default config.data.eval_split).")
# Not "final": training's eval/final.json holds both exported models and would be overwritten.
_NAME = flags.DEFINE_string("name", "evaluate", "Result name: WORKDIR/eval/NAME.json.")
_STEP = flags.DEFINE_integer("step", None, "Training step to record in the result, if known.")
_PLOTS = flags.DEFINE_bool("plots", None,
                           "Write a scatter plot per dataset (default config.eval.plots).")
distributed.define_flags()
flags.adopt_module_key_flags(distributed)


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  distributed.initialize_from_flags()
  evaluators.evaluate_checkpoint(_CONFIG.value, _WORKDIR.value, _CHECKPOINT.value, _SPLIT.value,
                                 _NAME.value, _STEP.value, _PLOTS.value)


if __name__ == "__main__":
  flags.mark_flags_as_required(["config", "workdir"])
  app.run(main)
