"""The training library's pieces (promptiqa_jax.trainer), in process: one update against the
release's step (PyTorch, one group per rank, Adam), the checks of the configuration at start, and
configs/paper.py:smoke trained end to end on fake copies of datasets.

The command-line runs (launchers, multiple processes, resume after SIGKILL and SIGTERM) are in
test_launch.py; the device layouts in test_sharding.py.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

import fake_layouts
import smoke_config
from promptiqa_jax import trainer
from promptiqa_jax.data import datasets as dataset_registry
from promptiqa_jax.models.config import ModelConfig


def _assert_float32_agreement(result: dict, loss_rtol: float, stats_atol: float,
                              determined: float) -> None:
  """Checks release_step.float32_agreement's result; `determined`: the least fraction of elements
  whose Adam step the gradient tolerance fixes to 1e-4 lr."""
  assert result["train_step"] == 1
  assert result["learning_rate"] == pytest.approx(result["expected_learning_rate"])
  assert result["loss_rel_diff"] <= loss_rtol
  assert result["grad_norm_rel_diff"] <= 1e-5
  for key in ("mu", "nu", "step", "params"):
    assert result[key] <= 1, (key, result)
  assert result["determined_fraction"] > determined
  assert result["determined_step_error_over_lr"] < 1e-3
  # Every BatchNorm running statistic moved in this step, and moved the same way.
  assert result["stats_count"] > 0
  assert result["stats_min_change"] > 1e-2
  assert result["stats_max_diff"] <= stats_atol


@pytest.mark.slow
def test_one_update_matches_the_release_two_ranks():
  """Same weights, same 2 groups, train mode without dropout: our update equals the release's
  step (two ranks, one group each, gradients averaged, PyTorch Adam with L2 1e-5), BatchNorm
  running statistics the mean of the ranks'. The "global" option equals one process forwarding
  both groups, and the two recipes differ by far more than the tolerance.

  Float32 within float32 tolerance; float64 (both frameworks) to rounding: the same function.
  """
  import torch

  import release_step  # torch, only for the update tests

  torch.set_num_threads(1)
  rng = np.random.default_rng(1)
  images = rng.uniform(-1, 1, (2, 4, 32, 32, 3)).astype(np.float32)
  scores = rng.uniform(0, 1, (2, 4)).astype(np.float32)
  losses = {}
  for batchnorm, groups_per_rank in (("per_group", 1), ("global", 2)):
    # Dropout cannot match across frameworks; everything else is the release's training step.
    config = ModelConfig.tiny(mal_dropout=0.0, score_dropout=0.0, batchnorm=batchnorm)
    result = release_step.float32_agreement(release_step.update_against_release(
        config, images, scores, seed=0, groups_per_rank=groups_per_rank))
    print(f"float32, {batchnorm}:", json.dumps(result))
    # Nearly every element's step is fixed by its gradient (the rest are 0 up to rounding).
    _assert_float32_agreement(result, loss_rtol=1e-6, stats_atol=1e-6, determined=0.95)
    assert (result["stats_rank_spread"] > 1e-2) == (batchnorm == "per_group")
    losses[batchnorm] = result["loss"]

    with jax.enable_x64(True):
      run = release_step.update_against_release(dataclasses.replace(config, dtype="float64"),
                                                images, scores, seed=0,
                                                groups_per_rank=groups_per_rank)
    assert run["loss"] == pytest.approx(run["torch_loss"], rel=1e-13)
    mu_torch, mu_ours = run["torch_moments"]["mu"], run["moments"]["mu"]
    worst = {"grad": 0.0, "params": 0.0, "stats": 0.0}
    for key in run["names"]:
      # The gradient, as (1 - b1) g, to rounding of the tensor's largest entry (gradients that are
      # 0 analytically, a bias under a softmax, are 1e-17 of noise on both sides).
      error = np.abs(mu_ours[key] - mu_torch[key]).max()
      assert error <= 1e-10 * np.abs(mu_torch[key]).max() + 1e-16, (batchnorm, key, error)
      # The parameters after the step (lr 1e-3): noise gradients move theirs by up to 1e-11.
      params_error = np.abs(run["ours"][key] - run["after"][key]).max()
      assert params_error <= 1e-10, (batchnorm, key, params_error)
      worst["grad"] = max(worst["grad"], error / (np.abs(mu_torch[key]).max() + 1e-16))
      worst["params"] = max(worst["params"], params_error)
    for key in run["stats"]:
      error = np.abs(run["ours"][key] - run["after"][key]).max()
      assert error <= 1e-12, (batchnorm, key, error)
      worst["stats"] = max(worst["stats"], error)
    print(f"float64, {batchnorm}: worst", json.dumps({k: float(v) for k, v in worst.items()}))
  assert abs(losses["per_group"] - losses["global"]) > 1e-4


@pytest.mark.slow
@pytest.mark.heavy
def test_one_update_matches_the_release_at_full_size():
  """The reference architecture (318 M parameters), 2 groups of G = 3 on two ranks, weights at
  PyTorch's init spread, in a process of its own (tests/release_step.py): it needs an XLA flag set
  before JAX starts, and its memory (peak 17 GB) is given back when it ends.
  """
  import release_step  # torch, only for the update tests

  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=release_step.FULL_SIZE_XLA_FLAGS)
  run = subprocess.run([sys.executable, release_step.__file__], env=env, capture_output=True,
                       text=True, timeout=3600)
  assert run.returncode == 0, run.stderr[-4000:]
  result = json.loads(run.stdout.split("REPORT ", 1)[1])
  print("float32, full size:", json.dumps(result))
  # Most of the 318 M gradients are small (under 1e-5), where a float32 gradient tolerance leaves
  # Adam's first step open: it fixes the step of 38% of the elements (measured).
  _assert_float32_agreement(result, loss_rtol=1e-5, stats_atol=1e-5, determined=0.3)
  # The two ranks' running statistics differ (by 1.1e-2), 1e5 times more than ours from theirs.
  assert result["stats_rank_spread"] > 1e3 * result["stats_max_diff"]


@pytest.fixture
def smoke(smoke_data_dir):
  """configs/synthetic.py:smoke on the tiny build."""
  return smoke_config.get_config(smoke_data_dir)


@pytest.mark.parametrize("change, error, message", [
    pytest.param(lambda c: c.data.update(train=list(c.data.train) + ["koniq1k"]), ValueError,
                 "config.data.train: Unknown dataset 'koniq1k'; known datasets: ",
                 id="unknown_dataset"),
    pytest.param(lambda c: c.data.update(eval=["synthetic_iqa/nope:psnr"]), FileNotFoundError,
                 "config.data.eval: Dataset 'synthetic_iqa' (version {version}, config 'nope') "
                 "is not built", id="eval_dataset_not_built"),
    pytest.param(lambda c: c.data.update(group_size=1), ValueError,
                 "config.data.group_size must be at least 2, got 1", id="group_of_one"),
    pytest.param(lambda c: c.init.update(cnn_weights="/nowhere/alexnet.ckpt"), FileNotFoundError,
                 "config.init.cnn_weights: /nowhere/alexnet.ckpt does not exist",
                 id="missing_backbone_weights"),
    pytest.param(lambda c: c.init.update(pretrained_vit="/nowhere/vit.npz"), FileNotFoundError,
                 "config.init.pretrained_vit: /nowhere/vit.npz does not exist",
                 id="missing_pretrained_vit"),
    pytest.param(lambda c: c.data.update(image_size=64), ValueError,
                 "config.data.image_size (64) != config.model.image_size (32)",
                 id="image_size_mismatch"),
])
def test_bad_config_fails_at_start(smoke, tmp_path, change, error, message):
  change(smoke)
  workdir = tmp_path / "run"
  # The builder's version, which a rebuilt benchmark changes.
  message = message.format(version=dataset_registry.builder_class("synthetic_iqa").VERSION)
  with pytest.raises(error, match=re.escape(message)):
    trainer.train_and_evaluate(smoke, str(workdir))
  assert not workdir.exists(), "it should fail before writing anything"


def test_groups_must_divide_over_devices(smoke):
  smoke.data.groups_per_batch = 6
  with pytest.raises(ValueError, match=r"groups_per_batch \(6\) is not divisible by the 4 devices"):
    trainer.validate_config(smoke, device_count=4)
  trainer.validate_config(smoke, device_count=3)


def test_evaluation_datasets_are_checked_only_when_evaluating(smoke):
  smoke.data.eval = ["nope"]
  smoke.train.update(eval_every=0, final_eval=False)
  trainer.validate_config(smoke, device_count=1)
  smoke.train.final_eval = True
  with pytest.raises(ValueError, match="config.data.eval: Unknown dataset 'nope'"):
    trainer.validate_config(smoke, device_count=1)


def test_vit_without_pretrained_weights_refuses_to_start(tmp_path):
  """A ViT backbone with neither init.pretrained_vit nor init.checkpoint stops the run before it
  compiles or writes anything, naming the field and the file the reference starts from;
  init.random_vit (set by the tiny smoke model, never by the paper's) lets it start."""
  from promptiqa_jax.models.promptiqa import PromptIQANet

  assert not smoke_config.recipe("paper").get_config("").init.random_vit
  config = smoke_config.recipe("paper").get_config("smoke")
  assert config.init.random_vit
  config.init.random_vit = False
  config.data.data_dir = str(tmp_path / "no_data")
  workdir = tmp_path / "run"
  with pytest.raises(ValueError) as raised:
    trainer.train_and_evaluate(config, str(workdir))
  message = str(raised.value)
  assert message.startswith("config.init.pretrained_vit is empty")
  for part in ("timm's vit_base_patch8_224", "https://storage.googleapis.com/vit_models/augreg/"
               "B_8-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.0-sd_0.0--imagenet2012-steps_20k-"
               "lr_0.01-res_224.npz", "--config.init.checkpoint=", "--config.init.random_vit=True"):
    assert part in message
  assert not workdir.exists()
  with pytest.raises(ValueError, match="config.init.pretrained_vit is empty"):
    trainer.init_variables(PromptIQANet(ModelConfig.tiny()), ModelConfig.tiny(), config.init,
                           jax.random.key(0), group_size=3)
  # Each way out passes; the run then stops at its absent data.
  (tmp_path / "vit.npz").write_bytes(b"")
  (tmp_path / "model").mkdir()
  for field, value in (("random_vit", True), ("pretrained_vit", str(tmp_path / "vit.npz")),
                       ("checkpoint", str(tmp_path / "model"))):
    allowed = config.copy_and_resolve_references()
    allowed.init[field] = value
    with pytest.raises(FileNotFoundError, match="config.data.train: data_dir"):
      trainer.validate_config(allowed, device_count=1)


def test_selection_history_survives_a_resume(tmp_path):
  from promptiqa_jax.evaluators import final

  selection = final.Selection(tmp_path, "validation", "summary.x", start_step=0)
  assert selection.best is None and selection.describe() is None and selection.improves(-1e9)
  selection.record(2, 0.5, write=True)
  selection.record(4, 0.7, write=True)
  selection.record(6, 0.9, write=False)  # another process's copy: memory only
  # Resumed from step 3: the record of step 4 came after that checkpoint and is replayed.
  resumed = final.Selection(tmp_path, "validation", "summary.x", start_step=3)
  assert resumed.best == {"step": 2, "value": 0.5}
  assert resumed.improves(0.6) and not resumed.improves(0.5)
  assert final.Selection(tmp_path, "validation", "summary.x", start_step=9).best["step"] == 4
  assert resumed.describe() == {"split": "validation", "metric": "summary.x", "value": 0.5}
  # A fresh run in the same workdir, or one selecting otherwise, starts over.
  assert final.Selection(tmp_path, "validation", "summary.x", start_step=0).best is None
  assert final.Selection(tmp_path, "test", "summary.x", start_step=9).best is None


def test_final_evaluation_reports_the_final_and_the_best_model(smoke, tmp_path, capsys):
  """Both exported models on the test split, each labelled, in eval/final.json, whose top level is
  the model `score --checkpoint WORKDIR` loads. A constant selection metric (the validation split's
  record count) keeps the first evaluation's model as best_model, so the two differ."""
  from promptiqa_jax import checkpoint, evaluators
  from promptiqa_jax.inference import PromptIQA

  name = smoke.data.eval[0]
  metric = f"datasets.{name}.n"
  smoke.train.update(num_steps=2, eval_every=1, best_metric=metric)
  # Periodic evaluations run train.periodic_evaluators (per_dataset), the final one config.eval's.
  smoke.eval.evaluators = "per_dataset,prompt_controls"
  workdir = tmp_path / "run"
  trainer.train_and_evaluate(smoke, str(workdir))
  printed = capsys.readouterr().out

  final = json.loads((workdir / "eval" / "final.json").read_text())
  periodic = json.loads((workdir / "eval" / "step_1.json").read_text())
  count = periodic["datasets"][name]["n"]
  assert periodic["evaluators"] == ["per_dataset"]
  assert final["evaluators"] == ["per_dataset", "prompt_controls"] and final["flipped_prompt"]
  assert os.fspath(checkpoint.resolve_model_dir(workdir)) == str(workdir / "best_model")
  assert final["model"] == "best_model" and final["split"] == "test" and final["step"] == 1
  models = final["models"]
  assert list(models) == ["final_model", "best_model"]
  assert [models[k][f] for k in models for f in ("directory", "step", "selection")] == [
      "model", 2, None,
      "best_model", 1, {"split": "validation", "metric": metric, "value": count}]
  for section in ("datasets", "summary"):
    assert final[section] == models["best_model"][section], section
  assert models["final_model"]["datasets"] != models["best_model"]["datasets"]
  assert json.loads((workdir / "eval" / "selection.json").read_text())["history"] == [
      {"step": 1, "value": count}]

  # Each model's numbers are its directory's, evaluated afresh.
  for label, directory in (("final_model", "model"), ("best_model", "best_model")):
    written = json.loads((workdir / "eval" / f"{label}.json").read_text())
    assert written["datasets"] == models[label]["datasets"]
    model = PromptIQA.from_checkpoint(workdir / directory, batch_size=smoke.data.eval_batch_size)
    again = evaluators.evaluate(model, smoke.data, smoke.eval, split="test", plots=False)
    for dataset, row in again["datasets"].items():
      assert models[label]["datasets"][dataset]["plcc"] == pytest.approx(row["plcc"], abs=1e-6)
    assert evaluators.report.plot_path(workdir, name, label).is_file()

  assert "== final_model: WORKDIR/model, the last step (2)\nEvaluation of final_model" in printed
  assert (f"== best_model: WORKDIR/best_model, step 1, the best validation {metric} "
          f"({count:.4f}); `promptiqa-jax score --checkpoint WORKDIR` loads this one\n"
          "Evaluation of best_model on split 'test' at step 1") in printed


# Every evaluator module is a library module too, found by walking the package.
_IMPORT_AND_LIST_FLAGS = textwrap.dedent("""
    import importlib, json, pkgutil
    from absl import flags
    from promptiqa_jax import evaluators

    def ours():
      return sorted(m for m in flags.FLAGS.flags_by_module_dict() if "promptiqa_jax" in m)

    libraries = ["promptiqa_jax.checkpoint", "promptiqa_jax.distributed", "promptiqa_jax.trainer"]
    package = evaluators.__name__ + "."
    libraries += [m.name for m in pkgutil.walk_packages(evaluators.__path__, package)]
    for name in libraries:
      importlib.import_module(name)
    defined = ours()
    importlib.import_module("promptiqa_jax.train")
    print(json.dumps({"libraries": libraries, "defined": defined, "program": ours()}))
    """)


def test_library_modules_define_no_flags():
  """Importing the training and evaluation libraries defines no absl flags; the programs do (a
  fresh process: this one may have imported a program)."""
  run = subprocess.run([sys.executable, "-c", _IMPORT_AND_LIST_FLAGS], capture_output=True,
                       text=True, timeout=300, env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert run.returncode == 0, run.stderr[-3000:]
  report = json.loads(run.stdout.splitlines()[-1])
  assert {"promptiqa_jax.evaluators.common", "promptiqa_jax.evaluators.report"} < set(
      report["libraries"])
  assert report["defined"] == []
  # The check sees flags where a program defines them, its distributed ones included.
  assert report["program"] == ["promptiqa_jax.distributed", "promptiqa_jax.train"]


@pytest.mark.slow
def test_paper_smoke_trains_on_fake_datasets(tmp_path):
  """configs/paper.py:smoke, end to end in process (as flax's examples/imagenet/train_test.py)."""
  from promptiqa_jax.checkpoint import load_model
  from promptiqa_jax.data import catalog

  config = smoke_config.recipe("paper").get_config("smoke")
  # The smoke model is the tiny model the other tests use, at its 32 px input.
  assert trainer.model_config_of(config) == ModelConfig.tiny()
  assert config.data.image_size == ModelConfig.tiny().image_size == 32
  data_dir = tmp_path / "tfds"
  for seed, key in enumerate(config.data.train):
    fake_layouts.write_fake_layout(key, str(tmp_path / "manual" / key), n_images=12, seed=seed)
    catalog.prepare(key, data_dir, tmp_path / "manual" / key, config=32)
  config.data.data_dir = str(data_dir)
  config.data.train = [f"{key}/32" for key in config.data.train]
  config.data.eval = list(config.data.train)
  config.train.final_eval = False
  workdir = tmp_path / "run"

  state = trainer.train_and_evaluate(config, str(workdir))

  steps = int(config.train.num_steps)
  assert int(state.step) == steps
  records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in records] == list(range(1, steps + 1))
  assert all(np.isfinite(r["loss"]) and r["grad_norm"] > 0 for r in records)
  # checkpoint_every=2, and the last step.
  assert sorted(int(n) for n in os.listdir(workdir / "checkpoints") if n.isdigit()) == [2, 3]
  variables, model_config = load_model(str(workdir / "model"))
  assert model_config == ModelConfig.tiny()
  for exported, trained in zip(jax.tree_util.tree_leaves(variables["params"]),
                               jax.tree_util.tree_leaves(state.params)):
    np.testing.assert_array_equal(exported, np.asarray(trained))
