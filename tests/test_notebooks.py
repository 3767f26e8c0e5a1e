"""The notebooks run top to bottom in a python3 kernel (nbclient), on the tiny random model.

Each notebook runs from the repository root and from notebooks/, the two places users start
Jupyter. The kernels share a JAX compilation cache, so the second run does not compile again.
"""
import os

import nbformat
import pytest
from nbclient import NotebookClient

from promptiqa_jax.data import datasets

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = os.path.join(REPO, "notebooks")
SCORE_WITH_PROMPTS = os.path.join(NOTEBOOKS, "score_with_prompts.ipynb")
CELL_TIMEOUT_S = 120


@pytest.fixture(scope="module")
def kernel_compile_cache(tmp_path_factory) -> str:
  return str(tmp_path_factory.mktemp("jax_compilation_cache"))


def _code_cells(notebook) -> list:
  return [cell for cell in notebook.cells if cell.cell_type == "code"]


def test_score_with_prompts_is_stored_without_outputs():
  notebook = nbformat.read(SCORE_WITH_PROMPTS, as_version=4)
  nbformat.validate(notebook)
  assert notebook.nbformat == 4
  for cell in _code_cells(notebook):
    assert cell.outputs == [] and cell.execution_count is None, cell.source[:60]


@pytest.mark.parametrize("cwd", [REPO, NOTEBOOKS], ids=["from_repo_root", "from_notebooks"])
def test_score_with_prompts_runs(cwd, tiny_model_dir, kernel_compile_cache, monkeypatch):
  # The kernel inherits the environment: the saved tiny model (not built again) and the cache.
  monkeypatch.setenv("PROMPTIQA_MODEL_DIR", tiny_model_dir)
  monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", kernel_compile_cache)
  notebook = nbformat.read(SCORE_WITH_PROMPTS, as_version=4)
  NotebookClient(notebook, timeout=CELL_TIMEOUT_S, kernel_name="python3",
                 resources={"metadata": {"path": cwd}}).execute()
  outputs = [output for cell in _code_cells(notebook) for output in cell.outputs]
  text = "".join(output.get("text", "") for output in outputs)
  assert f"model loaded from {tiny_model_dir}" in text
  assert "prompt 'sharp = good': queries best to worst" in text
  assert "prompt 'blurred = good': queries best to worst" in text
  figures = [output for output in outputs if "image/png" in output.get("data", {})]
  assert len(figures) == 2  # the prompt, and the queries with their scores


TRAIN_SYNTHETIC = os.path.join(NOTEBOOKS, "train_synthetic.ipynb")


def test_train_synthetic_runs_in_smoke_mode(kernel_compile_cache, monkeypatch, tmp_path):
  """The training notebook in its default (smoke) setting: curves, table and scatter plots."""
  monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", kernel_compile_cache)
  monkeypatch.setenv("PROMPTIQA_DATA_DIR", str(tmp_path / "data"))
  notebook = nbformat.read(TRAIN_SYNTHETIC, as_version=4)
  for cell in _code_cells(notebook):
    assert cell.outputs == [] and cell.execution_count is None, cell.source[:60]
  NotebookClient(notebook, timeout=300, kernel_name="python3",
                 resources={"metadata": {"path": REPO}}).execute()
  outputs = [output for cell in _code_cells(notebook) for output in cell.outputs]
  text = "".join(output.get("text", "") for output in outputs)
  assert "trained steps: 3" in text
  assert "supervised_ceiling" in text and "synthetic_iqa" in text
  figures = [output for output in outputs if "image/png" in output.get("data", {})]
  # One figure of curves, then one scatter plot per evaluated requirement.
  requirements = datasets.requirement_table("synthetic_iqa").requirements
  assert len(figures) == 1 + len(requirements)
