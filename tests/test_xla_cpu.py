"""The XLA:CPU flag the package sets on import (promptiqa_jax/xla_cpu.py)."""
import os
import subprocess
import sys

import pytest

from promptiqa_jax import xla_cpu


@pytest.fixture
def measured_release(monkeypatch: pytest.MonkeyPatch) -> None:
  monkeypatch.setattr(xla_cpu, "_jaxlib_release", lambda: xla_cpu.MEASURED_ON[0])


def test_added_to_empty_and_existing_flags(measured_release: None) -> None:
  environ: dict[str, str] = {}
  assert xla_cpu.configure(environ)
  assert environ["XLA_FLAGS"] == xla_cpu.FLAG
  environ = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
  assert xla_cpu.configure(environ)
  assert environ["XLA_FLAGS"].split() == ["--xla_force_host_platform_device_count=8", xla_cpu.FLAG]


def test_user_setting_wins(measured_release: None) -> None:
  environ = {"XLA_FLAGS": "--xla_cpu_experimental_ynn_fusion_type=dot"}
  assert not xla_cpu.configure(environ)
  assert environ["XLA_FLAGS"] == "--xla_cpu_experimental_ynn_fusion_type=dot"


def test_not_added_for_unmeasured_jaxlib(monkeypatch: pytest.MonkeyPatch) -> None:
  for release in [(0, 4), (1, 0), None]:
    monkeypatch.setattr(xla_cpu, "_jaxlib_release", lambda release=release: release)
    environ: dict[str, str] = {}
    assert not xla_cpu.configure(environ)
    assert "XLA_FLAGS" not in environ


_COMPILED_MAL_BLOCK = """
import promptiqa_jax, jax, jax.numpy as jnp
from promptiqa_jax.models.mal import ScrambledAttentionBlock
x = jnp.zeros((1, 24, 40))
block = ScrambledAttentionBlock()
variables = block.init(jax.random.key(0), x, train=False)
apply = jax.jit(lambda v, x: block.apply(v, x, train=False))
print(apply.lower(variables, x).compile().as_text())
"""


@pytest.mark.skipif(xla_cpu._jaxlib_release() not in xla_cpu.MEASURED_ON,
                    reason="the flag is only set for the jaxlib releases it was measured on")
def test_flag_reaches_the_compiler() -> None:
  """In a fresh process, the MAL attention block compiles without YNNPACK fusions once the package
  is imported, and with them when the user's XLA_FLAGS asks for them (so the check can fail)."""
  def compiled(xla_flags: str) -> str:
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    if xla_flags:
      env["XLA_FLAGS"] = xla_flags
    return subprocess.run([sys.executable, "-c", _COMPILED_MAL_BLOCK], env=env, check=True,
                          capture_output=True, text=True).stdout

  assert "__ynn_fusion" not in compiled("")
  assert "__ynn_fusion" in compiled("--xla_cpu_experimental_ynn_fusion_type=dot,reduce,eltwise")
