"""Evaluation: results, files, the feature cache, prompt controls and the ceiling, on fake datasets.

Most tests use fake_iqa.OracleModel (its features are the records' distortion levels, and fake_multi's
requirements are affine in them), so every outcome is known: its own prompt (or a flipped one)
reproduces a requirement exactly, another requirement's prompt reproduces that other requirement,
and a constant prompt predicts a constant.
"""
import json
import math
import os
import subprocess
import sys
import textwrap
import zlib

import jax
import ml_collections
import numpy as np
import pytest

import fake_iqa
from fake_iqa import OracleModel, data_config
from promptiqa_jax import evaluators
from promptiqa_jax import metrics
from promptiqa_jax.data import prompts as prompts_lib
from promptiqa_jax.data import sources
from promptiqa_jax.evaluators import common, report, ridge

fake_data_dir = fake_iqa.fake_data_dir  # the session-wide fake build
levels_by_image = fake_iqa.levels_by_image

MULTI = ["fake_multi:sharp", "fake_multi:bright", "fake_multi:combo"]  # combo is held out


def _truth(data_dir, name, split="test"):
  return sources.open_dataset(name, split, data_dir).all_scores()


def _multi_config(data_dir, **overrides):
  return data_config(data_dir, **{"eval": MULTI, **overrides})


def test_prompt_controls_and_ceiling_on_a_known_model(fake_data_dir, levels_by_image):
  model = OracleModel(levels_by_image)
  result = evaluators.evaluate(model, _multi_config(fake_data_dir), split="test", step=7)

  assert result["evaluators"] == ["per_dataset", "prompt_controls", "supervised_ceiling"]
  for name in MULTI:  # the own prompt reproduces each requirement
    assert result["datasets"][name]["srcc"] == pytest.approx(1.0)
    assert result["datasets"][name]["rmse"] == pytest.approx(0.0, abs=1e-5)
    assert result["datasets"][name]["n"] == 6
  # The controls run on the held-out requirement only.
  for section in ("heldout", "flipped_prompt", "mismatched_prompt", "constant_prompt",
                  "supervised_ceiling"):
    assert list(result[section]) == ["fake_multi:combo"], section
  combo = _truth(fake_data_dir, "fake_multi:combo")
  assert result["heldout"]["fake_multi:combo"] == result["datasets"]["fake_multi:combo"]
  flipped = result["flipped_prompt"]["fake_multi:combo"]
  assert flipped["srcc"] == pytest.approx(1.0) and flipped["rmse"] == pytest.approx(0, abs=1e-5)

  # Another requirement's prompt predicts that requirement: metrics of its truth against combo's.
  others = {n: metrics.quality_metrics(_truth(fake_data_dir, n), combo) for n in MULTI[:2]}
  mismatched = result["mismatched_prompt"]["fake_multi:combo"]
  for key in ("srcc", "plcc", "krcc", "rmse"):
    assert mismatched[key] == pytest.approx(np.mean([m[key] for m in others.values()]), abs=1e-5)
  assert mismatched["prompts"] == 2
  assert result["mismatched_prompt_srcc"]["fake_multi:combo"] == pytest.approx(
      {n: m["srcc"] for n, m in others.items()}, abs=1e-5)

  constant = result["constant_prompt"]["fake_multi:combo"]
  assert math.isnan(constant["srcc"]) and "constant" in constant["note"]
  assert constant["rmse"] == pytest.approx(np.sqrt(np.mean((0.5 - combo) ** 2)), abs=1e-5)

  # combo is linear in the features (SRCC is not tested: float error breaks the truth's ties).
  ceiling = result["supervised_ceiling"]["fake_multi:combo"]
  assert ceiling["plcc"] == pytest.approx(1.0) and ceiling["rmse"] < 1e-4
  assert ceiling["penalty"] == min(common.EVAL_DEFAULTS["ceiling_penalties"])

  summary = result["summary"]
  assert summary["train_requirements_own_srcc"] == pytest.approx(1.0)
  assert summary["heldout_own_srcc"] == pytest.approx(1.0)
  assert summary["heldout_own_minus_mismatched_srcc"] == pytest.approx(1 - mismatched["srcc"])
  assert summary["heldout_flipped_srcc"] == pytest.approx(1.0)
  assert summary["heldout_constant_srcc"] is None
  assert summary["heldout_ceiling_srcc"] == ceiling["srcc"]

  # Every image featurised exactly once: all 6 test records and, for the ceiling, all 20 training
  # records (the prompts' features come out of those).
  assert sorted(model.featurised.values()) == [1] * 26

  assert result["step"] == 7 and result["split"] == "test"
  assert result["prompt"] == {"split": "train", "size": 5, "sampling": "interval", "seed": 0}
  assert set(result["prompts"]) == set(MULTI)


def test_own_prompt_is_the_interval_prompt(fake_data_dir, levels_by_image):
  config = _multi_config(fake_data_dir, eval=["fake_multi:sharp"], prompt_size=4)
  result = evaluators.evaluate(OracleModel(levels_by_image), config, split="test")
  train = _truth(fake_data_dir, "fake_multi:sharp", "train")
  indices = np.asarray(result["prompts"]["fake_multi:sharp"]["indices"])
  np.testing.assert_array_equal(indices, prompts_lib.select_prompt(train, 4, "interval"))
  np.testing.assert_array_equal(result["prompts"]["fake_multi:sharp"]["scores"], train[indices])


def test_prompt_features_once_without_the_ceiling(fake_data_dir, levels_by_image):
  model = OracleModel(levels_by_image)
  settings = ml_collections.ConfigDict({"evaluators": ["per_dataset", "prompt_controls"],
                                        "controls_on": "all"})
  result = evaluators.evaluate(model, _multi_config(fake_data_dir), settings, split="test")
  assert list(result["flipped_prompt"]) == MULTI and "supervised_ceiling" not in result
  assert list(result["heldout"]) == ["fake_multi:combo"]
  prompt_records = set()
  for prompt in result["prompts"].values():
    prompt_records.update(np.asarray(prompt["indices"]).tolist())
  # 3 prompts of 5 (sharing records) and 3 x 2 mismatched prompts reuse the same features.
  assert sorted(model.featurised.values()) == [1] * (6 + len(prompt_records))


def test_files_table_and_plots(fake_data_dir, levels_by_image, tmp_path):
  result = evaluators.evaluate(OracleModel(levels_by_image), _multi_config(fake_data_dir),
                               split="test", step=12, out_dir=tmp_path)
  with open(tmp_path / "eval" / "step_12.json") as f:
    written = json.load(f)  # strict JSON: NaN became null
  assert written["step"] == 12
  assert written["constant_prompt"]["fake_multi:combo"]["srcc"] is None
  assert written["datasets"]["fake_multi:sharp"]["srcc"] == pytest.approx(1.0)
  assert set(written["datasets"]["fake_multi:sharp"]) == {"srcc", "plcc", "krcc", "rmse", "n"}
  assert written["metric_notes"]["plcc"].startswith("Pearson")
  plots = sorted(os.listdir(tmp_path / "eval" / "plots"))
  assert plots == ["fake_multi_bright_step_12.png", "fake_multi_combo_step_12.png",
                   "fake_multi_sharp_step_12.png"]
  assert (tmp_path / "eval" / "plots" / plots[0]).read_bytes()[:4] == b"\x89PNG"

  path = report.write_results(result, tmp_path, "final")
  assert path == str(tmp_path / "eval" / "final.json")

  table = report.format_table(result)
  assert "fake_multi:combo" in table and "step 12" in table and "nan" in table
  assert "heldout_own_minus_mismatched_srcc" in table
  assert "Pearson without logistic fitting" in table


def test_evaluator_choice_and_errors(fake_data_dir):
  auto = common.eval_settings(None)
  assert evaluators.evaluator_names(auto, ["fake_iqa_a"]) == ["per_dataset"]
  assert evaluators.evaluator_names(auto, MULTI) == ["per_dataset", "prompt_controls",
                                                     "supervised_ceiling"]
  chosen = common.eval_settings(ml_collections.ConfigDict({"evaluators": "per_dataset, "
                                                                         "supervised_ceiling"}))
  assert evaluators.evaluator_names(chosen, MULTI) == ["per_dataset", "supervised_ceiling"]
  with pytest.raises(ValueError, match="unknown or none.*'nope'"):
    evaluators.evaluator_names(
        common.eval_settings(ml_collections.ConfigDict({"evaluators": ["nope"]})), [])
  with pytest.raises(ValueError, match="Unknown config.eval field.*'folds'"):
    common.eval_settings(ml_collections.ConfigDict({"folds": 3}))
  with pytest.raises(ValueError, match="controls_on"):
    common.eval_settings(ml_collections.ConfigDict({"controls_on": "some"}))

  class Sized:
    config = ml_collections.ConfigDict({"image_size": 224})

  with pytest.raises(ValueError, match="image_size is 12 but the model takes 224"):
    evaluators.evaluate(Sized(), _multi_config(fake_data_dir), split="test")
  with pytest.raises(ValueError, match="'fake_multi:random' draws a random requirement"):
    evaluators.evaluate(OracleModel({}), data_config(fake_data_dir, eval=["fake_multi:random"]))
  with pytest.raises(ValueError, match="Prompt for dataset 'fake_iqa_small'.*5 pairs from 3"):
    evaluators.evaluate(OracleModel({}), data_config(fake_data_dir, eval=["fake_iqa_small"]),
                        split="test")


def test_ridge_recovers_a_linear_map():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(200, 5)) * [1, 10, 0.1, 1, 1] + 3
  x[:, 4] = 2.0  # a constant feature is harmless
  y = x[:, :4] @ [0.5, -0.02, 3.0, 0.0] + 1.0
  penalty, errors = ridge.ridge_cv(x, y, [1e-8, 1e-2, 10.0], folds=5)
  assert penalty == 1e-8 and errors[0] < 1e-10 and np.all(np.diff(errors) > 0)
  fitted = ridge.fit_ridge(x, y, penalty)
  np.testing.assert_allclose(fitted.predict(x[:5]), y[:5], atol=1e-5)
  # Pure noise: the strongest penalty (predict the mean) generalises best.
  penalty, _ = ridge.ridge_cv(x, rng.normal(size=200), [1e-8, 1e-2, 10.0], folds=5)
  assert penalty == 10.0
  with pytest.raises(ValueError, match="8 training records are too few for 5-fold"):
    ridge.ridge_cv(x[:8], y[:8], [1.0], folds=5)


# ModelConfig.tiny shrunk further so that its three functions compile in seconds: one ViT block,
# one MAL, one layer per prompt transformer. (conftest's tiny_model takes far longer to build.)
SMALL = dict(image_size=16, patch_size=2, vit_depth=1, taps=(0,), num_mals=1, pair_depth=1,
             prompt_fusion_depth=1, query_depth=1)


@pytest.fixture(scope="module")
def small_model():
  """A random PromptIQA of SMALL sizes (random arrays in the variables' shapes: no init compile)."""
  from promptiqa_jax.inference import PromptIQA
  from promptiqa_jax.models.promptiqa import abstract_variables
  from promptiqa_jax.models.config import ModelConfig

  config = ModelConfig.tiny(**SMALL)
  rng = np.random.default_rng(0)

  def leaf(path, shape):
    if jax.tree_util.keystr(path).endswith("['var']"):  # BatchNorm variances stay positive
      return np.ones(shape.shape, shape.dtype)
    return (0.2 * rng.normal(size=shape.shape)).astype(shape.dtype)

  variables = jax.tree_util.tree_map_with_path(leaf, abstract_variables(config))
  return PromptIQA(variables, config, batch_size=4)


def _small_config(data_dir, **overrides):
  return data_config(data_dir, **{"image_size": 16, "eval_batch_size": 4, **overrides})


def test_a_real_model_end_to_end(fake_data_dir, small_model, tmp_path):
  names = ["fake_iqa_a", "fake_multi:sharp", "fake_multi:combo"]
  result = evaluators.evaluate(small_model, _small_config(fake_data_dir, eval=names),
                               split="test", out_dir=tmp_path)
  assert list(result["datasets"]) == names
  assert [result["datasets"][n]["n"] for n in names] == [7, 6, 6]
  assert list(result["mismatched_prompt"]) == ["fake_multi:combo"]  # other datasets' prompts too
  assert result["mismatched_prompt"]["fake_multi:combo"]["prompts"] == 2
  for name in names:
    assert 0.0 <= result["datasets"][name]["rmse"] <= 1.0
  assert (tmp_path / "eval" / "step_0.json").is_file()
  assert len(os.listdir(tmp_path / "eval" / "plots")) == 3


def test_the_program_function(fake_data_dir, small_model, tmp_path, monkeypatch, capsys):
  from promptiqa_jax.inference import PromptIQA

  loaded = []
  monkeypatch.setattr(PromptIQA, "from_checkpoint",
                      classmethod(lambda cls, path, **kw: loaded.append(path) or small_model))
  config = ml_collections.ConfigDict({"data": _small_config(fake_data_dir, eval=MULTI)})
  result = evaluators.evaluate_checkpoint(config, tmp_path, split="test", plots=False)
  assert loaded == [tmp_path]  # the workdir, with no checkpoint given
  assert "fake_multi:combo" in capsys.readouterr().out
  with open(tmp_path / "eval" / "evaluate.json") as f:
    assert json.load(f)["summary"] == report.jsonable(result["summary"])
  assert not (tmp_path / "eval" / "plots").exists()


@pytest.mark.slow
def test_the_program(fake_data_dir, small_model, tmp_path):
  """`python -m promptiqa_jax.evaluate` with flags and a config override, in its own process."""
  small_model.save(tmp_path / "model")
  tests_dir = os.path.dirname(os.path.abspath(__file__))
  (tmp_path / "config.py").write_text(textwrap.dedent(f"""
      import sys
      import ml_collections
      sys.path.insert(0, {tests_dir!r})
      import fake_iqa

      def get_config():
        fake_iqa.register_all()  # the program runs in its own process
        config = ml_collections.ConfigDict()
        config.data = fake_iqa.data_config({fake_data_dir!r}, eval={MULTI!r}, image_size=16)
        return config
      """))
  workdir = tmp_path / "work"
  run = subprocess.run(
      [sys.executable, "-m", "promptiqa_jax.evaluate", f"--config={tmp_path / 'config.py'}",
       f"--workdir={workdir}", f"--checkpoint={tmp_path / 'model'}", "--split=test",
       "--config.data.prompt_size=4", "--noplots"],
      capture_output=True, text=True, timeout=300, env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert run.returncode == 0, run.stderr[-3000:]
  assert "fake_multi:combo" in run.stdout and "summary" in run.stdout
  with open(workdir / "eval" / "evaluate.json") as f:
    result = json.load(f)
  assert result["prompt"]["size"] == 4 and result["step"] is None
  assert "supervised_ceiling" in result and not (workdir / "eval" / "plots").exists()


def test_summary_splits_heldout_requirements_by_family():
  from promptiqa_jax.data import datasets
  from promptiqa_jax.evaluators import summary

  table = datasets.requirement_table("synthetic_iqa")
  names = table.config_names()
  groups = summary.groups(names)
  assert groups["heldout_in_family"] == [
      f"synthetic_iqa:{r.name}" for r in table.heldout() if not r.out_of_family]
  assert groups["heldout_out_of_family"] == [
      f"synthetic_iqa:{r.name}" for r in table.heldout() if r.out_of_family]
  assert len(groups["heldout_out_of_family"]) >= 3 and groups["heldout_in_family"]
  assert groups["train_requirements"] == table.config_names(table.train())

  def section(value):
    return {n: {"srcc": value(i)} for i, n in enumerate(names)}

  result = {"datasets": section(lambda i: 0.01 * i),
            "mismatched_prompt": section(lambda i: -0.01 * i),
            "flipped_prompt": section(lambda i: 0.5),
            "constant_prompt": section(lambda i: float("nan")),
            "supervised_ceiling": section(lambda i: 0.9)}
  result["mismatched_prompt"].pop(names[-1])
  out = summary.summarize(result)
  for group in ("heldout", "heldout_in_family", "heldout_out_of_family"):
    index = [names.index(n) for n in groups[group]]
    with_mismatched = [i for i in index if i != len(names) - 1]
    assert out[f"{group}_own_srcc"] == pytest.approx(0.01 * np.mean(index))
    assert out[f"{group}_mismatched_srcc"] == pytest.approx(-0.01 * np.mean(with_mismatched))
    assert out[f"{group}_own_minus_mismatched_srcc"] == pytest.approx(
        0.02 * np.mean(with_mismatched))
    assert out[f"{group}_flipped_srcc"] == 0.5 and out[f"{group}_ceiling_srcc"] == 0.9
    assert out[f"{group}_constant_srcc"] is None
  assert out["train_requirements_own_srcc"] == pytest.approx(
      0.01 * np.mean([names.index(n) for n in groups["train_requirements"]]))


# config.eval.release_prompt_flips: the release's per-batch flipped prompt (release_prompts.py).


def release_flips(seed, name, num_batches, prompt_size):
  """The rule as the module docstring states it, typed out: one draw per prompt image and batch."""
  rng = np.random.default_rng([seed, 7, zlib.crc32(name.encode("utf-8"))])
  return rng.random((num_batches, prompt_size)) < 0.5


def _train_images(data_dir, name, indices, size):
  source = sources.open_dataset(name, "train", data_dir)
  return np.stack([sources.load_image(source, record, int(index), size)
                   for record, index in zip(source.read(indices), indices)])


def _test_images(data_dir, name, size):
  source = sources.open_dataset(name, "test", data_dir)
  return np.stack([sources.load_image(source, record, index, size)
                   for index, record in enumerate(source.read(range(len(source))))])


class FlipSpy:
  """A FeatureModel whose features tell an image from its flips (means of the top, bottom and left
  halves) and that notes every prompt it encodes and every batch it scores."""

  def __init__(self):
    self.encoded = []  # prompt features [P, 3], in encoding order
    self.scored = []  # (query features [n, 3], the encoding's index)

  def image_features(self, images):
    images = np.asarray(images, np.float32)
    h, w = images.shape[1] // 2, images.shape[2] // 2
    return np.stack([images[:, :h].mean((1, 2, 3)), images[:, h:].mean((1, 2, 3)),
                     images[:, :, :w].mean((1, 2, 3))], -1)

  def encode_prompt_features(self, features, scores):
    self.encoded.append(np.array(features))
    return len(self.encoded) - 1

  def score_features(self, features, prompt):
    self.scored.append((np.array(features), prompt))
    return np.asarray(features, np.float64) @ self.encoded[prompt].mean(0)


@pytest.mark.parametrize("flip, axis", [("vertical", 0), ("horizontal", 1), ("none", None)])
def test_release_prompt_flips_follow_the_release_rule(fake_data_dir, flip, axis):
  """Each evaluated batch is scored with the prompt re-encoded from its images, each flipped as
  training flips it (config.data.flip) where the seeded draw for that batch says so."""
  name = "fake_iqa_a"
  config = data_config(fake_data_dir, eval=[name], eval_batch_size=2, flip=flip, seed=3)
  model = FlipSpy()
  result = evaluators.evaluate(model, config, ml_collections.ConfigDict(
      {"release_prompt_flips": True}), split="test")

  indices = np.asarray(result["prompts"][name]["indices"])
  np.testing.assert_array_equal(indices, prompts_lib.select_prompt(_truth(fake_data_dir, name,
                                                                          "train"), 5))
  flips = release_flips(3, name, 4, 5)  # 7 test records in batches of 2
  assert flips.any() and not flips.all()  # a mix, as the release's p = 0.5 gives
  np.testing.assert_array_equal(result["prompts"][name]["flips"], flips)
  assert result["prompt"]["release_prompt_flips"] is True
  images = _train_images(fake_data_dir, name, indices, config.image_size)
  upright = model.image_features(images)
  turned = model.image_features(images if axis is None else np.flip(images, axis + 1))
  assert (axis is None) == np.allclose(upright, turned)
  assert len(model.encoded) == len(model.scored) == 4
  test_images = _test_images(fake_data_dir, name, config.image_size)
  for batch, row in enumerate(flips):
    np.testing.assert_allclose(model.encoded[batch], np.where(row[:, None], turned, upright))
    queries, prompt = model.scored[batch]
    assert prompt == batch
    np.testing.assert_allclose(queries, model.image_features(test_images[2 * batch:2 * batch + 2]))


def test_without_release_prompt_flips_the_prompt_is_encoded_once_upright(fake_data_dir):
  config = data_config(fake_data_dir, eval=["fake_iqa_a"], eval_batch_size=2)
  results = []
  for settings in (None, ml_collections.ConfigDict({"release_prompt_flips": False})):
    model = FlipSpy()
    results.append(evaluators.evaluate(model, config, settings, split="test"))
    indices = results[-1]["prompts"]["fake_iqa_a"]["indices"]
    assert len(model.encoded) == 1 and len(model.scored) == 1
    np.testing.assert_allclose(model.encoded[0], model.image_features(
        _train_images(fake_data_dir, "fake_iqa_a", indices, config.image_size)))
  assert "flips" not in results[0]["prompts"]["fake_iqa_a"]
  assert json.dumps(report.jsonable(results[0])) == json.dumps(report.jsonable(results[1]))


def test_release_prompt_flips_on_a_real_model(fake_data_dir, small_model):
  """Deterministic for a seed, different across seeds; each batch's predictions are the model's
  scores under the prompt encoded from that batch's flipped images; off, the seed is not used."""
  name = "fake_iqa_a"

  def own(seed, flips):
    settings = common.eval_settings(ml_collections.ConfigDict({"release_prompt_flips": flips}))
    ctx = common.EvalContext(small_model, _small_config(fake_data_dir, eval=[name], seed=seed),
                             settings, "test")
    return ctx.own_predictions(name), ctx

  on, ctx = own(0, True)
  np.testing.assert_array_equal(own(0, True)[0], on)
  assert not np.array_equal(own(1, True)[0], on)
  off = own(0, False)[0]
  np.testing.assert_array_equal(own(1, False)[0], off)
  assert not np.array_equal(off, on)

  prompt = ctx.prompts[name]
  images = _train_images(fake_data_dir, name, prompt.indices, 16)
  test_images = _test_images(fake_data_dir, name, 16)
  flips = ctx.prompt_flips[name]
  np.testing.assert_array_equal(flips, release_flips(0, name, 2, 5))  # 7 records, batches of 4
  for batch, row in enumerate(flips):
    flipped = np.where(row[:, None, None, None], np.flip(images, 1), images)
    encoded = small_model.encode_prompt(flipped, prompt.scores)
    np.testing.assert_allclose(on[4 * batch:4 * batch + 4],
                               small_model.score(test_images[4 * batch:4 * batch + 4], encoded),
                               rtol=1e-5, atol=1e-6)
