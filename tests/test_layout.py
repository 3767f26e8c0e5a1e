"""The package's boundaries (README "Layout"), checked where they can break: what a module pulls in
when it is imported or used. Each check runs in a fresh interpreter."""
import os
import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parent.parent


def _run(code: str) -> str:
  result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert result.returncode == 0, result.stderr[-3000:]
  return result.stdout


def test_configs_load_without_tfds_or_grain():
  out = _run("""
import importlib.util, sys
for name in ("synthetic", "paper"):
  spec = importlib.util.spec_from_file_location(name, f"configs/{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  for arg in ("", "smoke"):
    module.get_config(arg)
print(sorted(m for m in ("tensorflow_datasets", "grain", "torch") if m in sys.modules))
""")
  assert out.strip() == "[]"


def test_scoring_path_imports_nothing_from_interop(tiny_model_dir):
  out = _run(f"""
import sys
import numpy as np
from promptiqa_jax import PromptIQA
model = PromptIQA.from_checkpoint({tiny_model_dir!r}, batch_size=2)
size = model.config.image_size
images = np.random.default_rng(0).uniform(-1, 1, (3, size, size, 3)).astype(np.float32)
prompt = model.encode_prompt(images[:2], [0.2, 0.8])
scores = model.score(images[2:], prompt)
assert scores.shape == (1,)
print(sorted(m for m in sys.modules if m.startswith("promptiqa_jax.interop") or m == "torch"))
""")
  assert out.strip() == "[]"


def test_no_module_looks_anything_up_through_sys_modules():
  offenders = [str(path.relative_to(REPO)) for path in (REPO / "promptiqa_jax").rglob("*.py")
               if "sys.modules[" in path.read_text()]
  assert offenders == []
