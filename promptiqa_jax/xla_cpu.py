"""An XLA:CPU setting measured faster for this model, put into XLA_FLAGS on import of the package.

jaxlib 0.10 hands dot, reduce and elementwise fusions on CPU to YNNPACK by default. On the MALs'
attention blocks (768 tokens of width 3136, softmax fused with the logits) those fusions ran 5x
slower than XLA's own emitters (1.38 s against 0.27 s per block, batch 1, 2-core Xeon), and the
paper-size scoring pass 2.2x slower (7.9 against 3.6 s per image). An empty
`--xla_cpu_experimental_ynn_fusion_type=` turns them off.

The flag only acts if it is set before JAX starts its backend (the first computation), is left
alone when the user's XLA_FLAGS already names it, and is added only for the jaxlib releases it was
measured on: XLA aborts on a flag it does not know, and a later release may tune these fusions.
Only the CPU compiler reads it; GPU and TPU runs are unaffected.
"""
from __future__ import annotations

import importlib.metadata
import os

FLAG = "--xla_cpu_experimental_ynn_fusion_type="
MEASURED_ON = ((0, 10),)  # jaxlib (major, minor) releases


def _jaxlib_release() -> tuple[int, int] | None:
  try:
    major, minor = importlib.metadata.version("jaxlib").split(".")[:2]
    return int(major), int(minor)
  except (importlib.metadata.PackageNotFoundError, ValueError):
    return None


def configure(environ: dict[str, str] | None = None) -> bool:
  """Adds FLAG to `environ["XLA_FLAGS"]` (default os.environ); True when it was added."""
  environ = os.environ if environ is None else environ
  flags = environ.get("XLA_FLAGS", "")
  if FLAG.strip("-=") in flags or _jaxlib_release() not in MEASURED_ON:
    return False
  environ["XLA_FLAGS"] = f"{flags} {FLAG}".strip()
  return True
