"""Scoring big folders: parallel decoding in input order, error rows in place, and batches split
over 8 simulated devices scoring as one device does."""
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from promptiqa_jax import folder_scoring
from promptiqa_jax.data import preprocess

TESTS = os.path.dirname(os.path.abspath(__file__))
PROMPT_SCORES = [0.2, 0.5, 0.9]


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> list[str]:
  """11 images of different sizes, with an empty file and a text file among them."""
  root = tmp_path_factory.mktemp("folder")
  rng = np.random.default_rng(0)
  paths = []
  for index in range(11):
    path = root / f"{index:02d}.png"
    if index == 4:
      path.write_bytes(b"")
    elif index == 7:
      path.write_text("not an image")
    else:
      size = (16 + 3 * index, 40 - 2 * index, 3)
      Image.fromarray(rng.integers(0, 256, size, dtype=np.uint8)).save(path)
    paths.append(str(path))
  return paths


def test_parallel_decoding_keeps_the_input_order(folder):
  serial = list(folder_scoring.decode_in_order(folder, 32, workers=0))
  parallel = list(folder_scoring.decode_in_order(folder, 32, workers=3, ahead=2))
  assert [index for index, _ in parallel] == list(range(len(folder)))
  for (_, expected), (_, actual) in zip(serial, parallel):
    if isinstance(expected, str):
      assert actual == expected
    else:
      np.testing.assert_array_equal(actual, expected)
  assert parallel[4][1] == f"{folder[4]}: empty file"
  assert parallel[7][1].startswith(f"{folder[7]}: not an image")
  np.testing.assert_array_equal(
      parallel[5][1], preprocess.preprocess(preprocess.load_image(folder[5]), 32))


def test_score_files_rows_in_order_errors_in_place(folder, tiny_model):
  prompt = tiny_model.encode_prompt(folder[:3], PROMPT_SCORES)
  done = []
  rows = folder_scoring.score_files(tiny_model, folder, prompt, workers=3, progress=done.append)
  assert [row.path for row in rows] == folder
  assert sum(done) == len(folder)
  good = [path for index, path in enumerate(folder) if index not in (4, 7)]
  expected = dict(zip(good, tiny_model.score(good, prompt)))
  for index, row in enumerate(rows):
    if index in (4, 7):
      assert row.score is None and row.error.startswith(folder[index])
    else:
      assert row.error is None and row.score == float(expected[row.path]), index
      assert row.score_raw is None  # the prompt is on [0, 1]


EIGHT_DEVICES = """
import json, sys
import jax
from promptiqa_jax import folder_scoring
from promptiqa_jax.inference import PromptIQA

model_dir, paths = sys.argv[1], json.loads(sys.argv[2])
devices = jax.local_devices()
one = PromptIQA.from_checkpoint(model_dir, batch_size=8, devices=devices[:1])
eight = PromptIQA.from_checkpoint(model_dir, batch_size=8)
result = {"devices": len(devices), "split_over": eight.batch_sharding.num_devices}
for name, model in (("one", one), ("eight", eight)):
  prompt = model.encode_prompt(paths[:3], %r)
  rows = folder_scoring.score_files(model, paths, prompt, workers=2)
  result[name] = [row.score for row in rows]
print(json.dumps(result))
""" % (PROMPT_SCORES,)


def test_eight_devices_score_as_one(folder, tiny_model_dir):
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS="--xla_force_host_platform_device_count=8")
  # 9 readable images: one full batch of 8 and one padded batch of 1, each split 8 ways.
  result = subprocess.run([sys.executable, "-c", EIGHT_DEVICES, tiny_model_dir,
                           json.dumps(folder)], capture_output=True, text=True, env=env,
                          timeout=900, check=False, cwd=pathlib.Path(TESTS).parent)
  assert result.returncode == 0, result.stderr[-3000:]
  scores = json.loads(result.stdout.splitlines()[-1])
  assert scores["devices"] == 8 and scores["split_over"] == 8
  one, eight = scores["one"], scores["eight"]
  assert [s is None for s in one] == [s is None for s in eight] == [i in (4, 7) for i in range(11)]
  one = np.array([s for s in one if s is not None])
  eight = np.array([s for s in eight if s is not None])
  print(f"8 devices vs 1: max abs difference {np.abs(one - eight).max():.3g}")  # pytest -s
  np.testing.assert_allclose(eight, one, rtol=0, atol=1e-6)
