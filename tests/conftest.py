"""Fixtures shared by several test modules.

Imports of JAX and the model live inside the fixtures, so test modules that never use them do not
pay for them.

The suite runs on two pytest-xdist workers, a file at a time (setup.cfg), in the order
`pytest_collection_modifyitems` gives.
"""
import pathlib

import pytest

# With one file per xdist unit, the longest files start first, so that neither worker is left with
# one of them at the end; the full-size parity file alone is about 40% of the suite's CPU time.
LONGEST_FILES_FIRST = ("test_parity.py", "test_launch.py", "test_train.py", "test_notebooks.py")
_missing = [n for n in LONGEST_FILES_FIRST if not (pathlib.Path(__file__).parent / n).exists()]
assert not _missing, f"LONGEST_FILES_FIRST names files that are gone: {_missing}"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
  rank = {name: i for i, name in enumerate(LONGEST_FILES_FIRST)}
  # Stable: the order within a file, and of the other files, is kept.
  items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
  """A model directory holding `ModelConfig.tiny()` with random weights (`init` with key 0).

  The random weights make every score meaningless but deterministic. Session-scoped: `init` of the
  whole model is the slowest compile in the suite, so it runs once.
  """
  import jax
  import jax.numpy as jnp

  from promptiqa_jax.inference import PromptIQA
  from promptiqa_jax.models import promptiqa
  from promptiqa_jax.models.config import ModelConfig

  config = ModelConfig.tiny()
  size = config.image_size
  args = (jax.random.key(0), jnp.zeros([1, 2, size, size, 3]), jnp.zeros([1, 2]))
  # `init` runs once, so only its compile time matters: without LLVM optimisation it compiles in
  # about half the time (the values differ from an optimised build by float rounding, ~1e-7).
  init = jax.jit(promptiqa.PromptIQANet(config).init).lower(*args).compile(
      compiler_options={"xla_backend_optimization_level": 0})
  directory = str(tmp_path_factory.mktemp("tiny_model") / "model")
  PromptIQA(init(*args), config, batch_size=4).save(directory)
  return directory


@pytest.fixture(scope="session")
def tiny_model(tiny_model_dir: str):
  """The `tiny_model_dir` model loaded through the API (`PromptIQA`, batch size 3)."""
  from promptiqa_jax.inference import PromptIQA

  return PromptIQA.from_checkpoint(tiny_model_dir, batch_size=3)


@pytest.fixture(scope="session")
def smoke_data_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
  """A data_dir holding the tiny synthetic_iqa build that `tests/smoke_config.py` trains on."""
  import smoke_config

  data_dir = str(tmp_path_factory.mktemp("smoke_tfds"))
  smoke_config.build(data_dir)
  return data_dir
