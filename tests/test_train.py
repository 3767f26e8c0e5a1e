"""The training program's pieces, in process: one update against PyTorch's Adam, the checks of the
configuration at start, and configs/paper.py:smoke trained end to end on fake copies of datasets.

The command-line runs (launchers, multiple processes, resume after SIGKILL and SIGTERM) are in
test_launch.py; the device layouts in test_sharding.py.
"""
from __future__ import annotations

import json
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fake_layouts
import smoke_config
import update_check
from promptiqa_jax import config_defaults, sharding, train
from promptiqa_jax.models.config import ModelConfig


@pytest.mark.slow
def test_one_update_matches_pytorch_adam():
  """Same weights, same batch, train mode: our update equals PyTorch's Adam step (L2 1e-5)."""
  import optax
  import torch

  from promptiqa_jax.interop import torch_model
  from promptiqa_jax.interop.convert import flax_to_torch, torch_to_flax
  from promptiqa_jax.models.promptiqa import PromptIQANet
  from promptiqa_jax.optim import build_optimizer

  torch.set_num_threads(1)
  # Dropout cannot match across frameworks; everything else is the reference's training step.
  config = ModelConfig.tiny(mal_dropout=0.0, score_dropout=0.0)
  reference = torch_model.randomize_(torch_model.TorchPromptIQA(config), seed=0).train()
  before = {k: v.detach().numpy().copy() for k, v in reference.state_dict().items()}
  variables = torch_to_flax(before, config)
  # Adam's first step moves every parameter by about lr: a large lr makes the step stand far
  # above float32 rounding of the parameters.
  optim = config_defaults.optim_config(lr=1e-3)
  assert optim.weight_decay == 1e-5
  tx, schedule = build_optimizer(optim, 10, train.trainable_fn(config))
  rng = np.random.default_rng(1)
  images = rng.uniform(-1, 1, (2, 4, 32, 32, 3)).astype(np.float32)
  scores = rng.uniform(0, 1, (2, 4)).astype(np.float32)

  state = train.TrainState(step=jnp.zeros((), jnp.int32), params=variables["params"],
                           batch_stats=variables["batch_stats"],
                           opt_state=tx.init(variables["params"]), rng=jax.random.PRNGKey(0))
  mesh = sharding.make_mesh(1, 1)
  shardings = sharding.state_sharding(state, mesh)
  step = train.jit_train_step(train.make_train_step(PromptIQANet(config), tx, schedule), mesh,
                              shardings)
  state = jax.device_put(state, shardings)
  batch = sharding.global_batch({"image": images, "score": scores}, mesh)
  # Unoptimised code compiles in half the time; it rounds differently only at float32 level.
  compiled = step.lower(state, batch).compile(
      compiler_options={"xla_backend_optimization_level": 0})
  new_state, metrics = jax.device_get(compiled(state, batch))

  adam = torch.optim.Adam(reference.parameters(), lr=optim.lr, betas=(optim.b1, optim.b2),
                          eps=optim.eps, weight_decay=optim.weight_decay)
  predictions = reference(torch.from_numpy(np.ascontiguousarray(np.moveaxis(images, -1, -3))),
                          torch.from_numpy(scores))
  loss = torch.nn.functional.l1_loss(predictions, torch.from_numpy(scores))
  loss.backward()
  names = [name for name, _ in reference.named_parameters()]
  raw_grads = {name: p.grad.numpy().copy() for name, p in reference.named_parameters()}
  adam.step()
  after = {k: v.detach().numpy() for k, v in reference.state_dict().items()}

  assert int(new_state.step) == 1
  assert float(metrics["learning_rate"]) == pytest.approx(optim.lr)
  assert float(metrics["loss"]) == pytest.approx(loss.item(), rel=1e-6)
  torch_grad_norm = np.sqrt(sum(float((g.astype(np.float64)**2).sum()) for g in raw_grads.values()))
  assert float(metrics["grad_norm"]) == pytest.approx(torch_grad_norm, rel=1e-5)

  shapes = {k: v.shape for k, v in before.items()}
  ours = flax_to_torch({"params": new_state.params, "batch_stats": new_state.batch_stats}, shapes)
  moments = {m: flax_to_torch({"params": optax.tree_utils.tree_get(new_state.opt_state, m)}, shapes)
             for m in ("mu", "nu")}
  torch_state = {name: adam.state[p] for name, p in reference.named_parameters()}
  result = update_check.compare_first_step(
      before={k: before[k] for k in names},
      grads={k: raw_grads[k] + optim.weight_decay * before[k] for k in names},
      expected={"params": {k: after[k] for k in names},
                "mu": {k: torch_state[k]["exp_avg"].numpy() for k in names},
                "nu": {k: torch_state[k]["exp_avg_sq"].numpy() for k in names}},
      actual={"params": {k: ours[k] for k in names}, "mu": moments["mu"], "nu": moments["nu"]},
      # optax divides nu by 1 - b2**t formed in float32: 1 - float32(0.999) is 1.3e-5 off 0.001,
      # so its first step is 6.4e-6 shorter than PyTorch's (which forms it in float64).
      lr=optim.lr, b1=optim.b1, b2=optim.b2, eps=optim.eps, step_rtol=1e-5)
  print("Adam step vs torch:", json.dumps(result))
  for key in ("mu", "nu", "step", "params"):
    assert result[key] <= 1, (key, result)
  # Nearly every element's step is fixed by its gradient (the rest are 0 up to rounding).
  assert result["determined_fraction"] > 0.95

  # BatchNorm running statistics (momentum 0.1, unbiased variance), which moved in this step.
  stats = [k for k in before if k.endswith(("running_mean", "running_var"))]
  assert stats
  for key in stats:
    assert np.abs(after[key] - before[key]).max() > 1e-2, key
    np.testing.assert_allclose(ours[key], after[key], rtol=1e-6, atol=1e-6, err_msg=key)


@pytest.fixture
def smoke(smoke_data_dir):
  """configs/synthetic.py:smoke on the tiny build."""
  return smoke_config.get_config(smoke_data_dir)


@pytest.mark.parametrize("change, error, message", [
    pytest.param(lambda c: c.data.update(train=list(c.data.train) + ["koniq1k"]), ValueError,
                 "config.data.train: Unknown dataset 'koniq1k'; known datasets: ",
                 id="unknown_dataset"),
    pytest.param(lambda c: c.data.update(eval=["synthetic_iqa/nope:psnr"]), FileNotFoundError,
                 "config.data.eval: Dataset 'synthetic_iqa' (version 1.0.0, config 'nope') is "
                 "not built", id="eval_dataset_not_built"),
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
  with pytest.raises(error, match=re.escape(message)):
    train.train_and_evaluate(smoke, str(workdir))
  assert not workdir.exists(), "it should fail before writing anything"


def test_groups_must_divide_over_devices(smoke):
  smoke.data.groups_per_batch = 6
  with pytest.raises(ValueError, match=r"groups_per_batch \(6\) is not divisible by the 4 devices"):
    train.validate_config(smoke, device_count=4)
  train.validate_config(smoke, device_count=3)


def test_evaluation_datasets_are_checked_only_when_evaluating(smoke):
  smoke.data.eval = ["nope"]
  smoke.train.update(eval_every=0, final_eval=False)
  train.validate_config(smoke, device_count=1)
  smoke.train.final_eval = True
  with pytest.raises(ValueError, match="config.data.eval: Unknown dataset 'nope'"):
    train.validate_config(smoke, device_count=1)


def test_metrics_file_is_cut_back_to_the_restored_step(tmp_path):
  path = tmp_path / "metrics.jsonl"
  path.write_text("".join(json.dumps({"step": s, "loss": 1.0 / s}) + "\n" for s in range(1, 6)))
  writer = train.MetricsWriter(str(tmp_path), start_step=3)
  writer.write(4, {"loss": 0.5})
  assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [1, 2, 3, 4]


@pytest.mark.slow
def test_paper_smoke_trains_on_fake_datasets(tmp_path):
  """configs/paper.py:smoke, end to end in process (as flax's examples/imagenet/train_test.py)."""
  from promptiqa_jax.checkpoint import load_model
  from promptiqa_jax.data import catalog

  config = smoke_config.recipe("paper").get_config("smoke")
  # The smoke model is the tiny model the other tests use, at its 32 px input.
  assert train.model_config_of(config) == ModelConfig.tiny()
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

  state = train.train_and_evaluate(config, str(workdir))

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
