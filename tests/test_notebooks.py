"""The notebooks run top to bottom in a python3 kernel (nbclient), in their smoke settings.

They are stored with the outputs of a real run, so that a reader sees the tables and plots without
running anything; each test clears those and executes the notebook afresh. The scoring notebook
runs from the repository root and from notebooks/, the two places users start Jupyter. The kernels
share a JAX compilation cache, so later runs do not compile again.
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


NOTEBOOK_FILES = sorted(f for f in os.listdir(NOTEBOOKS) if f.endswith(".ipynb"))


@pytest.mark.parametrize("name", NOTEBOOK_FILES)
def test_notebooks_are_stored_with_the_outputs_of_a_run(name):
  notebook = nbformat.read(os.path.join(NOTEBOOKS, name), as_version=4)
  nbformat.validate(notebook)
  assert notebook.nbformat == 4
  cells = _code_cells(notebook)
  assert [c.execution_count for c in cells] == list(range(1, len(cells) + 1)), name
  assert any("image/png" in o.get("data", {}) for c in cells for o in c.outputs), name
  errors = [o for c in cells for o in c.outputs if o.get("output_type") == "error"]
  assert not errors, name


def _cleared(path: str):
  """The notebook with its stored outputs (from a real run) removed, as a kernel starts it."""
  notebook = nbformat.read(path, as_version=4)
  nbformat.validate(notebook)
  for cell in _code_cells(notebook):
    cell.outputs, cell.execution_count = [], None
  return notebook


def _execute(path: str, cwd: str, timeout_s: int) -> tuple[str, list]:
  """Runs the cleared notebook in a python3 kernel started in `cwd`; returns its printed text and
  its PNG figures."""
  notebook = _cleared(path)
  NotebookClient(notebook, timeout=timeout_s, kernel_name="python3",
                 resources={"metadata": {"path": cwd}}).execute()
  outputs = [output for cell in _code_cells(notebook) for output in cell.outputs]
  text = "".join(output.get("text", "") for output in outputs)
  return text, [output for output in outputs if "image/png" in output.get("data", {})]


@pytest.mark.parametrize("cwd", [REPO, NOTEBOOKS], ids=["from_repo_root", "from_notebooks"])
def test_score_with_prompts_runs(cwd, tiny_model_dir, kernel_compile_cache, monkeypatch):
  # The kernel inherits the environment: the saved tiny model (not built again) and the cache.
  monkeypatch.setenv("PROMPTIQA_MODEL_DIR", tiny_model_dir)
  monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", kernel_compile_cache)
  text, figures = _execute(SCORE_WITH_PROMPTS, cwd, CELL_TIMEOUT_S)
  assert f"model loaded from {tiny_model_dir}" in text
  assert "prompt 'sharp = good': queries best to worst" in text
  assert "prompt 'blurred = good': queries best to worst" in text
  assert len(figures) == 2  # the prompt, and the queries with their scores


TRAIN_SYNTHETIC = os.path.join(NOTEBOOKS, "train_synthetic.ipynb")


def test_train_synthetic_runs_in_smoke_mode(kernel_compile_cache, monkeypatch, tmp_path):
  """The training notebook in its default (smoke) setting: curves, table and scatter plots."""
  monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", kernel_compile_cache)
  monkeypatch.setenv("PROMPTIQA_DATA_DIR", str(tmp_path / "data"))
  text, figures = _execute(TRAIN_SYNTHETIC, REPO, 300)
  assert "trained steps: 3" in text
  assert "supervised_ceiling" in text and "synthetic_iqa" in text
  # One figure of curves, then one scatter plot per evaluated requirement.
  requirements = datasets.requirement_table("synthetic_iqa").requirements
  assert len(figures) == 1 + len(requirements)


ANALYSES = os.path.join(NOTEBOOKS, "analyses.ipynb")


def test_analyses_run_in_smoke_mode(kernel_compile_cache, monkeypatch, tmp_path):
  """The analyses notebook in its default (smoke) setting: three tables, three plots."""
  monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", kernel_compile_cache)
  monkeypatch.setenv("PROMPTIQA_DATA_DIR", str(tmp_path / "data"))
  monkeypatch.delenv("PROMPTIQA_NOTEBOOK_FULL", raising=False)
  text, figures = _execute(ANALYSES, REPO, 600)
  assert "mode: smoke" in text
  assert "vs prompt size P" in text and "by prompt sampling" in text and "no_random_family" in text
  assert len(figures) == 3
