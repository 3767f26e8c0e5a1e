"""The analyses (promptiqa_jax.analyses and the analyze program): their outputs' structure and a
property each must show, on fake_iqa's oracle model (whose outcomes are known) and, for the
ablations, on tiny training runs."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import fake_iqa
import smoke_config
from fake_iqa import OracleModel, data_config
from promptiqa_jax.analyses import ablations, common, prompt_size, sampling
from promptiqa_jax.evaluators.common import EvalContext, eval_settings

fake_data_dir = fake_iqa.fake_data_dir
levels_by_image = fake_iqa.levels_by_image
MULTI = ["fake_multi:sharp", "fake_multi:bright", "fake_multi:combo"]
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def oracle_context(fake_data_dir, levels_by_image):
  config = data_config(fake_data_dir, eval=MULTI, prompt_size=5)
  return EvalContext(OracleModel(levels_by_image), config, eval_settings(None), "test")


def test_prompt_size_curve_reaches_the_requirement(oracle_context, tmp_path):
  result = prompt_size.run(oracle_context, [1, 2, 3, 5, 10])
  assert result["sizes"] == [1, 2, 3, 5, 10] and set(result["srcc"]) == set(MULTI)
  assert all(len(v) == 5 for v in result["srcc"].values())
  assert set(result["groups"]) == set(common.GROUPS)
  for name, curve in result["srcc"].items():
    # An affine map in two levels needs three pairs; from then on the oracle reproduces each
    # requirement, and one pair cannot do better.
    assert curve[2:] == pytest.approx([1.0, 1.0, 1.0]), name
    assert not curve[0] > curve[-1]
  assert result["groups"]["train_requirements"][-1] == pytest.approx(1.0)
  assert result["groups"]["heldout_in_family"][-1] == pytest.approx(1.0)
  assert result["groups"]["heldout_out_of_family"] == [None] * 5
  paths = common.write(tmp_path, "prompt_size", result, prompt_size.table(result),
                       prompt_size.figure(result))
  assert json.load(open(paths["json"]))["sizes"] == [1, 2, 3, 5, 10]
  assert "P=10" in open(paths["txt"]).read() and os.path.getsize(paths["png"]) > 1000


def test_sampling_compares_interval_random_and_halves(oracle_context):
  result = sampling.run(oracle_context, size=5, random_prompts=4)
  for name in MULTI:
    row = result["srcc"][name]
    assert set(row) == set(sampling.COLUMNS) and len(result["random_srcc"][name]) == 4
    # Five pairs determine the oracle's affine map wherever they are drawn from.
    assert row["interval"] == pytest.approx(1.0) and row["random_mean"] == pytest.approx(1.0)
    assert row["random_std"] == pytest.approx(0.0, abs=1e-9)
    assert row["best_half"] == pytest.approx(1.0) and row["worst_half"] == pytest.approx(1.0)
  assert "random_std" in sampling.table(result)


def test_halves_are_halves_by_quality(oracle_context):
  name = "fake_multi:combo"  # lower is better
  scores = oracle_context.scores(name, "train")
  best = common.pick(oracle_context, name, 5, half="best")
  worst = common.pick(oracle_context, name, 5, half="worst")
  assert np.max(scores[best]) <= np.median(scores) <= np.min(scores[worst])
  assert len(common.pick(oracle_context, name, 1)) == 1


@pytest.fixture
def compilation_cache(tmp_path):
  """A persistent compilation cache for this test's runs: the variants train the same programs."""
  import jax

  names = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
           "jax_persistent_cache_min_entry_size_bytes")
  saved = {name: getattr(jax.config, name) for name in names}
  for name, value in zip(names, (str(tmp_path / "jax_cache"), 0.0, 0)):
    jax.config.update(name, value)
  yield
  for name, value in saved.items():
    jax.config.update(name, value)


def test_ablations_train_each_variant_over_seeds(smoke_data_dir, tmp_path, compilation_cache):
  del compilation_cache
  spec = f"{os.path.join(REPO, 'tests', 'smoke_config.py')}:{smoke_data_dir}"
  result = ablations.run(spec, tmp_path, ["no_random_family"], seeds=[0, 1],
                         overrides={"train.num_steps": 2, "eval.plots": False})
  assert list(result["variants"]) == [ablations.RECIPE, "no_random_family"]
  for variant, row in result["variants"].items():
    assert sorted(row["runs"]) == [0, 1]
    assert set(row["mean"]) == set(ablations.KEYS) == set(row["std"])
    config = json.load(open(tmp_path / variant / "seed1" / "config.json"))
    assert config["train"]["seed"] == config["data"]["seed"] == 1
    assert config["train"]["num_steps"] == 2
    assert any(n.endswith(":random") for n in config["data"]["train"]) == (variant == "recipe")
    for key in ablations.KEYS:
      runs = [r[key] for r in row["runs"].values() if r[key] is not None]
      if runs:
        assert row["mean"][key] == pytest.approx(np.mean(runs))
  # A second call reads the finished runs instead of training them again.
  before = os.path.getmtime(tmp_path / "recipe" / "seed0" / "eval" / "final.json")
  again = ablations.run(spec, tmp_path, ["no_random_family"], seeds=[0, 1])
  assert again["variants"] == result["variants"]
  assert os.path.getmtime(tmp_path / "recipe" / "seed0" / "eval" / "final.json") == before
  assert "no_random_family" in ablations.table(result)


def test_analyze_program_on_a_trained_workdir(smoke_data_dir, tmp_path):
  workdir = tmp_path / "run"
  config = f"--config={os.path.join(REPO, 'tests', 'smoke_config.py')}:{smoke_data_dir}"
  env = {**os.environ, "PYTHONPATH": os.path.join(REPO, "tests")}
  subprocess.run([sys.executable, "-m", "promptiqa_jax.train", config, f"--workdir={workdir}",
                  "--config.train.final_eval=false"], check=True, env=env, cwd=REPO,
                 capture_output=True, timeout=600)
  out = subprocess.run([sys.executable, "-m", "promptiqa_jax.analyze", config,
                        f"--workdir={workdir}", "--sizes=1,2,4", "--random_prompts=2"],
                       check=True, env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
  assert "SRCC on split 'test' vs prompt size" in out.stdout
  for name in ("prompt_size", "sampling"):
    result = json.load(open(workdir / "analyses" / f"{name}.json"))
    assert result["analysis"] == name and len(result["srcc"]) == 12
    assert (workdir / "analyses" / f"{name}.png").exists()
  assert json.load(open(workdir / "analyses" / "prompt_size.json"))["sizes"] == [1, 2, 4]
