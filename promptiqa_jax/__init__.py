"""PromptIQA in JAX/Flax: prompt-adaptive no-reference image quality assessment.

`from promptiqa_jax import PromptIQA` gives the scoring API (see `promptiqa_jax.inference`); the
import is lazy so that data-loading workers do not pay for JAX. Importing the package sets one
XLA:CPU flag that makes the model 2x faster on CPU (see `promptiqa_jax.xla_cpu`).
"""
from promptiqa_jax import xla_cpu as _xla_cpu

_xla_cpu.configure()

__version__ = "0.1.0"


def __getattr__(name):
  if name in ("PromptIQA", "Prompt"):
    from promptiqa_jax import inference

    return getattr(inference, name)
  raise AttributeError(f"module 'promptiqa_jax' has no attribute {name!r}")
