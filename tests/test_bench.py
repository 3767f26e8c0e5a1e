"""The bench command in its quickest mode, and the FLOP counts and model options it relies on."""
import dataclasses
import json
import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _abstract_score(cfg, batch: int, prompt_size: int):
  """`jax.jit(score).lower(...)` on abstract parameters and inputs: traced, never compiled."""
  import jax
  import jax.numpy as jnp

  from promptiqa_jax.models.promptiqa import PromptIQA

  module, size = PromptIQA(cfg), cfg.image_size
  variables = jax.eval_shape(module.init, jax.random.PRNGKey(0),
                             jax.ShapeDtypeStruct((1, 2, size, size, 3), jnp.float32),
                             jax.ShapeDtypeStruct((1, 2), jnp.float32))

  def score(v, images, fused):
    features = module.apply(v, images, method=PromptIQA.image_features)
    return module.apply(v, features, fused, method=PromptIQA.score_with_fused)

  return jax.jit(score).lower(variables, jax.ShapeDtypeStruct((batch, size, size, 3), jnp.float32),
                              jax.ShapeDtypeStruct((prompt_size, cfg.prompt_width), jnp.float32))


def test_analytic_flops_match_xla_at_paper_size():
  from promptiqa_jax import bench
  from promptiqa_jax.models.config import ModelConfig

  cfg = ModelConfig.paper()
  analytic = bench.workload_flops(cfg, "infer", 2, 10)
  xla = _abstract_score(cfg, 2, 10).cost_analysis()["flops"]
  # XLA also counts element-wise work (softmax, LayerNorm, GELU): 0.5% more at this size.
  assert 1.0 <= xla / analytic < 1.02
  parts = bench.model_flops(cfg, 10)
  assert parts["image"] == pytest.approx(584e9, rel=0.01)
  assert parts["mal_views"] > parts["vit"]  # the MALs' two views are most of the work


def test_quick_bench_on_smoke_config(tmp_path):
  from promptiqa_jax import cli

  out = tmp_path / "bench.json"
  assert cli.main(["bench", "--config", os.path.join(REPO, "configs", "paper.py") + ":smoke",
                   "--quick", "--compare", "torch", "--what", "train,infer,prompt,input",
                   "--json", str(out)]) == 0
  report = json.loads(out.read_text())
  assert {"device", "versions", "threads"} <= set(report["environment"])
  assert report["peak_flops"] > 0
  measured = {(r["impl"], r["variant"], r["what"]) for r in report["results"]}
  assert measured == {
      ("jax", "xla", "train"), ("jax", "xla", "infer"), ("jax", "xla", "prompt"),
      ("torch", "eager", "train"), ("torch", "eager", "infer"), ("torch", "eager", "prompt"),
      ("jax", "grain_jpeg", "input"), ("jax", "grain_png32", "input"),
      ("torch", "dataloader_jpeg", "input")}
  for r in report["results"]:
    assert r["images_per_s"] > 0 and r["seconds"] > 0 and r["dtype"] and r["batch"] >= 1, r
    if r["what"] != "input":
      assert r["flops"] > 0 and 0 < r["mfu"], r
    if r["impl"] == "jax" and r["what"] != "input":
      assert r["compile_s"] > 0 and r["peak_memory_bytes"] > 0, r
      # Small maps: XLA skips padding in its convolution count, and element-wise work weighs more.
      assert 0.7 < r["xla_flops"] / r["flops"] < 1.5, r
  assert {(r["what"], r["batch"]) for r in report["ratios"]} >= {("train", 2), ("infer", 2),
                                                                   ("prompt", 2), ("input", 2)}


def test_bench_rejects_unknown_measurements():
  from promptiqa_jax import cli

  assert cli.main(["bench", "--config", os.path.join(REPO, "configs", "paper.py") + ":smoke",
                   "--what", "infer,speed"]) == cli.EXIT_USAGE


def test_remat_keeps_the_parameters_and_the_function():
  import jax
  import jax.numpy as jnp
  import numpy as np

  from promptiqa_jax.models.config import ModelConfig
  from promptiqa_jax.models.vit import VisionTransformer

  cfg = ModelConfig.tiny()
  plain, remat = (VisionTransformer(cfg.patch_size, cfg.vit_width, cfg.vit_depth, cfg.vit_heads,
                                    cfg.taps, remat=flag) for flag in (False, True))
  images = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (2, 32, 32, 3)), jnp.float32)
  variables = plain.init(jax.random.PRNGKey(0), images)
  assert (jax.tree_util.tree_structure(remat.init(jax.random.PRNGKey(0), images))
          == jax.tree_util.tree_structure(variables))

  def grads(module):
    return jax.grad(lambda v: sum(jnp.sum(t ** 2) for t in module.apply(v, images)))(variables)

  for a, b in zip(jax.tree_util.tree_leaves(grads(plain)), jax.tree_util.tree_leaves(grads(remat))):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_model_options_are_validated():
  from promptiqa_jax.models.config import ModelConfig

  with pytest.raises(ValueError, match="attention='cudnn' needs dtype='bfloat16'"):
    ModelConfig.tiny(attention="cudnn").validate()
  with pytest.raises(ValueError, match="attention must be"):
    ModelConfig.tiny(attention="flash").validate()
  dataclasses.replace(ModelConfig.tiny(), dtype="bfloat16", attention="cudnn", remat=True).validate()
