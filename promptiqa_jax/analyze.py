"""The analyses program (promptiqa_jax.analyses), on a trained workdir or by training:

  python -m promptiqa_jax.analyze --config configs/synthetic.py --workdir DIR \\
      --analyses=prompt_size,sampling [--split test] [--sizes 1,2,3,5,10,15,20] [--random_prompts 10]
  python -m promptiqa_jax.analyze --config configs/synthetic.py --workdir ROOT \\
      --analyses=ablations --seeds 0,1,2 [--ablations no_scaling,no_flipping,no_random_family,group5]

prompt_size and sampling load DIR's model (or --checkpoint) and use config.data (eval datasets,
training split, data_dir, prompt_size for sampling); ablations trains ROOT/<variant>/seed<k> from
the config file with its --config.* overrides. Files: DIR/analyses/<analysis>.{json,txt,png}.
"""
from __future__ import annotations

from absl import app, flags
from ml_collections import config_flags

from promptiqa_jax import analyses
from promptiqa_jax.analyses import ablations, common, prompt_size, sampling
from promptiqa_jax.config_files import config_module

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file (get_config).",
                                          lock_config=False)
_WORKDIR = flags.DEFINE_string("workdir", None, "Trained workdir (ablations: the runs' root).")
_ANALYSES = flags.DEFINE_list("analyses", ["prompt_size", "sampling"],
                              "prompt_size, sampling, ablations")
_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "Model directory (default: the workdir's).")
_SPLIT = flags.DEFINE_string("split", "test", "The split scored.")
_SIZES = flags.DEFINE_list("sizes", [str(s) for s in prompt_size.DEFAULT_SIZES],
                           "prompt_size: the prompt sizes P.")
_RANDOM_PROMPTS = flags.DEFINE_integer("random_prompts", 10, "sampling: random prompts (seeds).")
_SEEDS = flags.DEFINE_list("seeds", ["0", "1", "2"], "ablations: seeds of each variant.")
_ABLATIONS = flags.DEFINE_list("ablations", None,
                               "ablations: variants (default: every ABLATIONS of the config file).")

_ON_A_MODEL = {"prompt_size": prompt_size, "sampling": sampling}


def _finish(name: str, module, result) -> None:
  paths = common.write(_WORKDIR.value, name, result, module.table(result), module.figure(result))
  print(module.table(result))
  print(f"wrote {paths['json']}, {paths['txt']}, {paths['png']}", flush=True)


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  unknown = sorted(set(_ANALYSES.value) - {"ablations", *_ON_A_MODEL})
  if unknown:
    raise app.UsageError(f"Unknown analyses {unknown}; use prompt_size, sampling, ablations")
  config = _CONFIG.value
  if any(a in _ON_A_MODEL for a in _ANALYSES.value):
    ctx = analyses.open_context(config, _CHECKPOINT.value or _WORKDIR.value, _SPLIT.value)
    if "prompt_size" in _ANALYSES.value:
      _finish("prompt_size", prompt_size, prompt_size.run(ctx, [int(s) for s in _SIZES.value]))
    if "sampling" in _ANALYSES.value:
      _finish("sampling", sampling,
              sampling.run(ctx, int(config.data.prompt_size), _RANDOM_PROMPTS.value))
  if "ablations" in _ANALYSES.value:
    spec = config_flags.get_config_filename(flags.FLAGS["config"])
    overrides = config_flags.get_override_values(flags.FLAGS["config"])
    variants = _ABLATIONS.value or list(config_module(spec.partition(":")[0]).ABLATIONS)
    result = ablations.run(spec, _WORKDIR.value, variants, [int(s) for s in _SEEDS.value],
                           overrides)
    _finish("ablations", ablations, result)


if __name__ == "__main__":
  flags.mark_flags_as_required(["config", "workdir"])
  app.run(main)
