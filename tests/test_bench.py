"""The bench command in its quickest mode, and the FLOP counts and model options it relies on.

Compiling is what costs here, so the JAX measurements run on the smallest model (the synthetic
recipe's smoke config), the PyTorch measurements on the tiny reference architecture without JAX,
and the checks of the reference architecture's JAX side trace without compiling.
"""
import json
import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _abstract_variables(cfg):
  import jax
  import jax.numpy as jnp

  from promptiqa_jax.models.promptiqa import PromptIQANet

  size = cfg.image_size
  return jax.eval_shape(PromptIQANet(cfg).init, jax.random.PRNGKey(0),
                        jax.ShapeDtypeStruct((1, 2, size, size, 3), jnp.float32),
                        jax.ShapeDtypeStruct((1, 2), jnp.float32))


def test_analytic_flops_match_xla_at_paper_size():
  import jax
  import jax.numpy as jnp

  from promptiqa_jax.bench import flops
  from promptiqa_jax.models.config import ModelConfig
  from promptiqa_jax.models.promptiqa import PromptIQANet

  cfg = ModelConfig.paper()
  module = PromptIQANet(cfg)

  def score(v, images, fused):
    features = module.apply(v, images, method=PromptIQANet.image_features)
    return module.apply(v, features, fused, method=PromptIQANet.score_with_fused)

  lowered = jax.jit(score).lower(_abstract_variables(cfg),
                                 jax.ShapeDtypeStruct((2, 224, 224, 3), jnp.float32),
                                 jax.ShapeDtypeStruct((10, cfg.prompt_width), jnp.float32))
  analytic = flops.workload_flops(cfg, "infer", 2, 10)
  # XLA also counts element-wise work (softmax, LayerNorm, GELU): 0.5% more at this size.
  assert 1.0 <= lowered.cost_analysis()["flops"] / analytic < 1.02
  parts = flops.model_flops(cfg, 10)
  assert parts["image"] == pytest.approx(584e9, rel=0.01)
  assert parts["mal_views"] > parts["vit"]  # the MALs' two views are most of the work


def test_quick_bench_on_smoke_config(tmp_path):
  from promptiqa_jax import cli

  out = tmp_path / "bench.json"
  assert cli.main(["bench", "--config", os.path.join(REPO, "configs", "synthetic.py") + ":smoke",
                   "--quick", "--compare", "torch", "--what", "train,infer,prompt,input",
                   "--json", str(out)]) == 0
  report = json.loads(out.read_text())
  assert {"device", "versions", "threads"} <= set(report["environment"])
  assert report["peak_flops"] > 0
  assert report["notes"] == ["no PyTorch implementation of backbone 'alexnet': JAX only"]
  measured = {(r["impl"], r["variant"], r["what"]) for r in report["results"]}
  assert measured == {
      ("jax", "xla", "train"), ("jax", "xla", "infer"), ("jax", "xla", "prompt"),
      ("jax", "grain_jpeg", "input"), ("jax", "grain_png32", "input"),
      ("torch", "dataloader_jpeg", "input")}
  for r in report["results"]:
    assert r["images_per_s"] > 0 and r["seconds"] > 0 and r["batch"] >= 1, r
    if r["what"] != "input":
      assert r["flops"] > 0 and r["mfu"] > 0 and r["compile_s"] > 0, r
      assert r["peak_memory_bytes"] > 0 and r["xla_flops"] > 0, r
  assert {r["jax"] for r in report["ratios"]} == {"grain_jpeg uint8", "grain_png32 uint8"}


def test_input_stream_table_on_tiny_images(tmp_path, capsys):
  from promptiqa_jax.bench import input_stream

  # Two batches of 2 groups of 11 (warm-up and timed): the fewest the reference's loader accepts.
  input_stream.main(["--root", str(tmp_path), "--num-images", "44", "--size", "64x48",
                     "--image-size", "32", "--workers", "0", "--batches", "1"])
  rows = [line.split(" | ") for line in capsys.readouterr().out.splitlines()
          if line.startswith("| ") and "---" not in line][1:]
  assert [row[0] for row in rows] == [
      "| grain stream, JPEG originals", "| grain stream, 32 PNG build",
      "| reference: torch DataLoader + cv2, JPEG files"]
  assert all(row[1] == "0" and float(row[2]) > 0 for row in rows), rows
  assert len(os.listdir(tmp_path / "images")) == 44


def test_torch_measurements_on_the_tiny_reference():
  import torch

  from promptiqa_jax.bench import plan, report, torch_side
  from promptiqa_jax.config_defaults import optim_config
  from promptiqa_jax.interop.torch_model import TorchPromptIQA
  from promptiqa_jax.models.config import ModelConfig

  cfg = ModelConfig.tiny()
  state = {k: v.numpy() for k, v in TorchPromptIQA(cfg).state_dict().items()}
  opts = plan.Options(whats=("train", "infer", "prompt", "profile"), batch_sizes=(2,), groups=1,
                      group_size=3, prompt_size=2, warmup=1, repeats=1,
                      torch_variants=("eager", "autocast"))
  torch.manual_seed(0)
  results = torch_side.torch_measure(cfg, state, optim_config(), opts, peak=1e9)
  measured = {(r["variant"], r["what"], r["dtype"]) for r in results}
  assert {("eager", w, "float32") for w in ("train", "infer", "prompt")} <= measured
  assert {("autocast", w, "bfloat16") for w in ("train", "infer", "prompt")} <= measured
  assert {r["what"] for r in results if r["what"].startswith("profile/")} == {
      f"profile/{s}" for s in ("vit", "mals", "fusion", "cnn_head", "prompt", "query")}
  for r in results:
    assert r["images_per_s"] > 0 and r["flops"] > 0, r
  twin = dict(results[0], impl="jax", images_per_s=2 * results[0]["images_per_s"])
  assert [r["ratio"] for r in report.ratios([twin, results[0]])] == [pytest.approx(2.0)]


def test_jax_profile_stages_chain_on_the_tiny_reference():
  import jax
  import jax.numpy as jnp

  from promptiqa_jax.bench import jax_side
  from promptiqa_jax.models.config import ModelConfig
  from promptiqa_jax.models.promptiqa import PromptIQANet

  cfg = ModelConfig.tiny()
  module, variables = PromptIQANet(cfg), _abstract_variables(cfg)

  def stage(fn, *args):
    return jax.eval_shape(lambda v, *a: module.apply(v, *a, method=fn), variables, *args)

  stages = dict(jax_side.jax_stages(cfg))
  assert list(stages) == ["vit", "mals", "fusion", "cnn_head", "prompt", "query"]
  value = jax.ShapeDtypeStruct((3, 32, 32, 3), jnp.float32)
  for name in ("vit", "mals", "fusion", "cnn_head"):
    value = stage(stages[name], value)
  assert value.shape == (3, cfg.prompt_width)
  fused = stage(stages["prompt"], value, jax.ShapeDtypeStruct((3,), jnp.float32))
  assert stage(stages["query"], value, fused).shape == (3,)


def test_remat_keeps_the_parameters_and_rematerialises():
  import dataclasses

  import jax
  import jax.numpy as jnp

  from promptiqa_jax.models.config import ModelConfig
  from promptiqa_jax.models.promptiqa import PromptIQANet

  cfg = ModelConfig.tiny()
  remat = dataclasses.replace(cfg, remat=True)
  variables = _abstract_variables(cfg)
  assert (jax.tree_util.tree_structure(_abstract_variables(remat))
          == jax.tree_util.tree_structure(variables))

  def loss(params, batch_stats, images, scores):
    predictions, _ = PromptIQANet(remat).apply(
        {"params": params, "batch_stats": batch_stats}, images, scores, train=True,
        rngs={"dropout": jax.random.PRNGKey(0)}, mutable=["batch_stats"])
    return jnp.mean(predictions)

  args = (variables["params"], variables["batch_stats"],
          jax.ShapeDtypeStruct((1, 3, 32, 32, 3), jnp.float32),
          jax.ShapeDtypeStruct((1, 3), jnp.float32))
  jaxpr = str(jax.make_jaxpr(jax.grad(loss))(*args))
  # 4 ViT blocks, 3 MALs and the fusion MAL, each rematerialised in the backward pass.
  assert jaxpr.count("checkpoint[") + jaxpr.count("remat") >= 8


def test_model_options_are_validated():
  from promptiqa_jax.models.config import ModelConfig

  with pytest.raises(ValueError, match="attention='cudnn' needs dtype='bfloat16'"):
    ModelConfig.tiny(attention="cudnn").validate()
  with pytest.raises(ValueError, match="attention must be"):
    ModelConfig.tiny(attention="flash").validate()
  ModelConfig.tiny(dtype="bfloat16", attention="cudnn", remat=True).validate()


def test_bench_rejects_unknown_measurements():
  from promptiqa_jax import cli

  assert cli.main(["bench", "--config", os.path.join(REPO, "configs", "paper.py") + ":smoke",
                   "--what", "infer,speed"]) == cli.EXIT_USAGE
