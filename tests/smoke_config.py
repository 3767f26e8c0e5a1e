"""`configs/synthetic.py:smoke` on a tiny synthetic_iqa build, for tests that run training.

  python -m promptiqa_jax.train --config tests/smoke_config.py:DATA_DIR --workdir WORKDIR
  python -m promptiqa_jax.train --config tests/smoke_config.py:DATA_DIR,no_scaling --workdir ...

The recipe names the default build ("synthetic_iqa:psnr"); here the names point at the build that
`build(DATA_DIR)` makes (6 contents, 5 records each, 16 px) in seconds. Command-line overrides
cannot replace list fields such as config.data.train, hence this file.
"""
import importlib.util
import os

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
BUILD = dict(image_size=16, crops_per_content=1, distorted_per_crop=5,
             contents=("astronaut", "camera", "chelsea", "coffee", "coins", "brick"))


def build(data_dir: str) -> None:
  """Builds the tiny synthetic_iqa into `data_dir` (a no-op if already there)."""
  from promptiqa_jax.data.datasets.synthetic_iqa import builder

  builder.prepare(data_dir, **BUILD)


def recipe(name: str):
  """configs/NAME.py as a module, loaded by path as --config loads it."""
  path = os.path.join(CONFIGS, name + ".py")
  spec = importlib.util.spec_from_file_location(f"configs_{name}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def get_config(arg: str):
  """arg: "DATA_DIR" or "DATA_DIR,ABLATION" (one of configs/synthetic.py's ABLATIONS)."""
  from promptiqa_jax.data.datasets.synthetic_iqa import builder

  data_dir, _, ablation = arg.partition(",")
  config = recipe("synthetic").get_config(",".join(["smoke"] + ([ablation] if ablation else [])))
  named = "synthetic_iqa/" + builder.make_config(**BUILD).name
  config.data.data_dir = data_dir
  config.data.train = [n.replace("synthetic_iqa", named, 1) for n in config.data.train]
  config.data.eval = [n.replace("synthetic_iqa", named, 1) for n in config.data.eval]
  return config

ABLATIONS = recipe("synthetic").ABLATIONS
