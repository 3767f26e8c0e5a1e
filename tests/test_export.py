"""`promptiqa-jax export`: a jax.export scorer that a fresh process runs with JAX and numpy alone.
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from promptiqa_jax import cli
from promptiqa_jax import export as export_lib
from promptiqa_jax.data import preprocess

PROMPT_SCORES = [0.2, 0.5, 0.9]

# Run in a fresh interpreter: nothing of promptiqa_jax is imported, only JAX and numpy.
LOADER = """
import json, sys
import jax
import numpy as np

directory, images_file = sys.argv[1:3]
with open(directory + "/scorer.jaxexport", "rb") as f:
  exported = jax.export.deserialize(f.read())
with np.load(directory + "/weights.npz") as w:
  weights = [w[f"w{i:04d}"] for i in range(len(w.files))]
images = np.load(images_file)
scores = {str(n): np.asarray(exported.call(weights, images[:n])).tolist() for n in (5, 2, 1)}
loaded = sorted(name for name in sys.modules if name.startswith("promptiqa_jax"))
print(json.dumps({"scores": scores, "promptiqa_modules": loaded,
                  "input": str(exported.in_avals[-1])}))
"""


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, object]:
  root = tmp_path_factory.mktemp("export")
  rng = np.random.default_rng(0)
  paths = []
  for index in range(8):
    paths.append(str(root / f"{index}.png"))
    Image.fromarray(rng.integers(0, 256, (20 + index, 24, 3), dtype=np.uint8)).save(paths[-1])
  prompt = root / "prompt.json"
  prompt.write_text(json.dumps([[p, s] for p, s in zip(paths[:3], PROMPT_SCORES)]))
  return {"root": root, "paths": paths, "prompt": str(prompt)}


@pytest.fixture(scope="module")
def exported(files, tiny_model_dir) -> str:
  out = str(files["root"] / "scorer")
  assert cli.main(["export", "--checkpoint", tiny_model_dir, "--prompt", files["prompt"],
                   "--out", out, "--platforms", "cpu,cuda"]) == 0
  return out


def test_a_fresh_process_scores_with_jax_alone(files, exported, tiny_model, tmp_path):
  size = tiny_model.config.image_size
  queries = files["paths"][3:]
  images = np.stack([preprocess.preprocess(preprocess.load_image(p), size) for p in queries])
  np.save(tmp_path / "images.npy", images)
  result = subprocess.run([sys.executable, "-c", LOADER, exported, str(tmp_path / "images.npy")],
                          capture_output=True, text=True, timeout=600, check=False,
                          cwd=str(tmp_path), env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert result.returncode == 0, result.stderr[-3000:]
  output = json.loads(result.stdout.splitlines()[-1])
  assert output["promptiqa_modules"] == []
  assert output["input"] == f"float32[b,{size},{size},3]"  # the batch dimension is symbolic
  expected = tiny_model.score(queries, tiny_model.encode_prompt(files["paths"][:3],
                                                                PROMPT_SCORES))
  for count, scores in output["scores"].items():
    # 1e-6: the fresh process runs without the package's XLA:CPU flag (other fusions).
    np.testing.assert_allclose(scores, expected[:int(count)], rtol=0, atol=1e-6, err_msg=count)


def test_the_manifest_says_how_to_call_it(files, exported, tiny_model):
  with open(os.path.join(exported, export_lib.MANIFEST_FILE)) as f:
    manifest = json.load(f)
  size = tiny_model.config.image_size
  assert manifest["images"]["shape"] == ["N", size, size, 3]
  assert manifest["prompt"]["names"] == files["paths"][:3]
  np.testing.assert_allclose(manifest["prompt"]["scores"], PROMPT_SCORES)
  assert manifest["platforms"] == ["cpu", "cuda"]
  assert manifest["model_identity"] == tiny_model.identity
  with np.load(os.path.join(exported, export_lib.WEIGHTS_FILE)) as weights:
    assert manifest["weights"].endswith(f"w{len(weights.files) - 1:04d}, in this order")


def test_export_refuses_to_overwrite_a_scorer(files, exported, tiny_model_dir, capsys):
  assert cli.main(["export", "--checkpoint", tiny_model_dir, "--prompt", files["prompt"],
                   "--out", exported]) == cli.EXIT_USAGE
  assert f"{exported} already holds a scorer" in capsys.readouterr().err
