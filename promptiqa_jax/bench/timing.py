"""Timing and memory probes, the device's peak FLOP/s, and the environment a run reports.

Each record is the median of `repeats` timed calls after `warmup` calls; the first call (XLA's or
torch.compile's compilation) is timed apart. MFU is achieved FLOP/s over the device's peak: the
datasheet for known TPUs and GPUs (`datasheet_peak`), else a large float32 matmul measured here.
"""
from __future__ import annotations

import os
import platform
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

# Dense peaks (FLOP/s) of one JAX device by compute dtype, from the vendors' datasheets. float32
# is the rate JAX's default matmul precision gets: one bfloat16 pass on a TPU's MXUs, TF32 tensor
# cores on Ampere and Hopper (as torch.set_float32_matmul_precision("high"); an H100 without them
# does 67 TFLOP/s). A TPU's kind is one of its names (jax.Device.device_kind spells v5e "TPU v5
# lite", v5p "TPU v5", v6e "TPU v6 lite"); a GPU's kind contains its name, so the variants come
# before their family.
DATASHEET_PEAKS: tuple[tuple[tuple[str, ...], dict[str, float]], ...] = (
    (("TPU v4",), {"bfloat16": 275e12, "float32": 275e12}),
    (("TPU v5 lite", "TPU v5e"), {"bfloat16": 197e12, "float32": 197e12}),
    (("TPU v5", "TPU v5p"), {"bfloat16": 459e12, "float32": 459e12}),
    (("TPU v6 lite", "TPU v6e"), {"bfloat16": 918e12, "float32": 918e12}),
    (("A100",), {"bfloat16": 312e12, "float32": 156e12}),
    (("H100 PCIe",), {"bfloat16": 756e12, "float32": 378e12}),
    (("H100 NVL", "H200 NVL"), {"bfloat16": 835e12, "float32": 418e12}),
    (("H100", "H200"), {"bfloat16": 989e12, "float32": 495e12}),
)


def timed(call: Callable[[], Any], warmup: int, repeats: int) -> tuple[float, list[float]]:
  """(seconds of the first call, seconds of each of `repeats` calls after `warmup` in all)."""
  start = time.perf_counter()
  call()
  first = time.perf_counter() - start
  for _ in range(warmup - 1):
    call()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    call()
    times.append(time.perf_counter() - start)
  return first, times


class HostPeak:
  """Growth of the resident set's high-water mark (Linux /proc) over a `with` block: `bytes`."""

  def __enter__(self) -> "HostPeak":
    try:
      with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current resident size
    except OSError:
      pass
    self.start, self.bytes = _proc_status("VmRSS"), None
    return self

  def __exit__(self, *exc: Any) -> None:
    peak = _proc_status("VmHWM")
    if peak is not None and self.start is not None:
      self.bytes = max(peak - self.start, 0)


def _proc_status(field: str) -> int | None:
  try:
    with open("/proc/self/status") as f:
      for line in f:
        if line.startswith(field + ":"):
          return int(line.split()[1]) * 1024
  except OSError:
    pass
  return None


def datasheet_peak(kind: str, dtype: str) -> tuple[float, str] | None:
  """(dense peak FLOP/s, its source) of a device kind in `dtype`; None for a kind without one
  (CPUs, "TPU v4 lite", unlisted GPUs)."""
  for names, peaks in DATASHEET_PEAKS:
    for name in names:
      if (kind == name) if name.startswith("TPU") else (name in kind):
        return peaks[dtype], f"datasheet {name} dense {dtype}"
  return None


def device_peak(dtype: str, n: int = 2048) -> tuple[float, str]:
  """(peak FLOP/s, where it comes from): the datasheet for known TPUs and GPUs, else a measured
  matmul."""
  known = datasheet_peak(jax.devices()[0].device_kind, dtype)
  if known is not None:
    return known
  # No vendor figure: the better of XLA's and numpy's float32 n x n matmul, the fastest of 10 (a
  # peak is the best the device does; a median of a few 0.1 s calls on a shared VM came out 40%
  # low once).
  a = np.random.default_rng(0).standard_normal((n, n), np.float32)
  matmul = jax.jit(jnp.matmul)
  on_device = jax.device_put(a)
  jax_s = min(timed(lambda: matmul(on_device, on_device).block_until_ready(), 2, 10)[1])
  numpy_s = min(timed(lambda: a @ a, 2, 10)[1])
  rates = {"jax": 2 * n ** 3 / jax_s, "numpy": 2 * n ** 3 / numpy_s}
  best = max(rates, key=rates.get)
  return rates[best], (f"measured float32 {n}^3 matmul, {best} (jax {rates['jax'] / 1e9:.0f}, "
                       f"numpy {rates['numpy'] / 1e9:.0f} GFLOP/s); used for every dtype")


def environment() -> dict[str, Any]:
  """Device, versions, threads and XLA_FLAGS."""
  versions = {"python": platform.python_version()}
  for name in ("jax", "jaxlib", "flax", "optax", "numpy", "torch", "grain"):
    try:
      versions[name] = __import__(name).__version__
    except ImportError:
      pass
  cpu = platform.processor()
  try:
    with open("/proc/cpuinfo") as f:
      cpu = next((line.split(":", 1)[1].strip() for line in f
                  if line.startswith("model name")), cpu)
  except OSError:
    pass
  device = jax.devices()[0]
  threads = {"cpus": len(os.sched_getaffinity(0)),
             "xla": "intra-op pool sized from the CPU affinity"}
  if "torch" in versions:
    import torch  # optional: the [torch] extra; imported above only if installed

    threads["torch"] = torch.get_num_threads()
  return {"device": {"platform": device.platform, "kind": device.device_kind, "count":
                     len(jax.devices()), "cpu": cpu},
          "versions": versions, "threads": threads, "xla_flags": os.environ.get("XLA_FLAGS", "")}
