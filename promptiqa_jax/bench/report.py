"""Results: one record per measurement, JAX/PyTorch ratios, markdown tables and the JSON report."""
from __future__ import annotations

import json
import statistics
from typing import Any, Sequence


def record(impl: str, variant: str, what: str, batch: int, dtype: str, images: int,
           times: list[float], flops: float | None, peak_flops: float,
           **extra: Any) -> dict[str, Any]:
  """One result: median seconds per call, images/s and, given the call's FLOPs, FLOP/s and MFU."""
  seconds = statistics.median(times)
  result = dict(impl=impl, variant=variant, what=what, batch=batch, dtype=dtype,
                images_per_s=images / seconds, seconds=seconds, seconds_all=times)
  if flops:
    result.update(flops=flops, flops_per_s=flops / seconds, mfu=flops / seconds / peak_flops)
  result.update(extra)
  print(_line(result), flush=True)
  return result


def _line(r: dict[str, Any]) -> str:
  rate = f"{r['flops_per_s'] / 1e9:.1f} GFLOP/s" if "flops_per_s" in r else ""
  return (f"{r['impl']}/{r['variant']} {r['what']} batch={r['batch']} {r['dtype']}: "
          f"{r['images_per_s']:.3f} img/s, {r['seconds']:.4g} s {rate}")


def ratios(results: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
  """JAX images/s over PyTorch images/s, for each pair of records of the same (what, batch)."""
  return [dict(what=t["what"], batch=t["batch"], jax=f"{j['variant']} {j['dtype']}",
               torch=f"{t['variant']} {t['dtype']}", ratio=j["images_per_s"] / t["images_per_s"])
          for j in results for t in results if j["impl"] == "jax" and t["impl"] == "torch"
          and (j["what"], j["batch"]) == (t["what"], t["batch"])]


def format_tables(report: dict[str, Any]) -> str:
  """The results and ratios as markdown tables."""
  env = report["environment"]
  lines = [f"device: {env['device']['kind']} ({env['device']['cpu']}), "
           f"{env['threads']['cpus']} CPUs, load {report['load_average_start'][0]:.2f} -> "
           f"{report['load_average_end'][0]:.2f}, "
           f"peak {report['peak_flops'] / 1e9:.0f} GFLOP/s ({report['peak_source']})", "",
           "| impl | variant | what | batch | dtype | images/s | median s | compile s | "
           "GFLOP/s | MFU | XLA/analytic FLOPs | peak memory |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|"]
  lines += [_row(r) for r in report["results"]]
  if report["ratios"]:
    lines += ["", "| what | batch | JAX | PyTorch | JAX / PyTorch |", "|---|---|---|---|---|"]
    lines += [f"| {r['what']} | {r['batch']} | {r['jax']} | {r['torch']} | {r['ratio']:.2f}x |"
              for r in report["ratios"]]
  lines += [f"note: {note}" for note in report["notes"]]
  return "\n".join(lines)


def _row(r: dict[str, Any]) -> str:
  """One record as a row of the results table; what a record lacks stays blank."""
  gflops = f"{r['flops_per_s'] / 1e9:.1f}" if "flops_per_s" in r else ""
  mfu = f"{100 * r['mfu']:.1f}%" if "mfu" in r else ""
  xla = f"{r['xla_flops'] / r['flops']:.3f}" if r.get("xla_flops") and r.get("flops") else ""
  compile_s = f"{r['compile_s']:.1f}" if "compile_s" in r else ""
  memory = (f"{r['peak_memory_bytes'] / 2**30:.2f} GiB ({r['memory_source']})"
            if r.get("peak_memory_bytes") is not None else "")
  return (f"| {r['impl']} | {r['variant']} | {r['what']} | {r['batch']} | {r['dtype']} | "
          f"{r['images_per_s']:.3g} | {r['seconds']:.4g} | {compile_s} | {gflops} | {mfu} | "
          f"{xla} | {memory} |")


def write_json(report: dict[str, Any], path: str) -> None:
  """The whole report (results, ratios, device, versions, options) as JSON at `path`."""
  with open(path, "w") as f:
    json.dump(report, f, indent=1)
