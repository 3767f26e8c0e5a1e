"""What a training run shows: metrics.jsonl and TensorBoard events, the progress line, device
memory and profiler traces.

Process 0 writes WORKDIR/metrics.jsonl (one record per logged step) and TensorBoard event files in
WORKDIR/tensorboard (tensorboardX: no TensorFlow): the training scalars under "train/", each
evaluation's metrics under "<eval|final>/<split>/<section>/<dataset>/<metric>" with its scatter
plots as images, and prints the progress line. Profiler traces (`train.profile_steps`) go to
WORKDIR/tensorboard/plugins/profile/, where TensorBoard's profile plugin (xprof) finds them.
Every location may be local or gs://.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import tempfile
import time
from typing import Any, Iterator

import jax
import numpy as np
from etils import epath
from PIL import Image

from promptiqa_jax import storage

TENSORBOARD_DIR = "tensorboard"
METRICS_FILE = "metrics.jsonl"


def tag_safe(text: str) -> str:
  """`text` as one level of a TensorBoard tag (characters other than letters, digits, "_", "-",
  "." as "_"; a dataset name such as "synthetic_iqa/size16:psnr" stays one level)."""
  return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)


class MetricsWriter:
  """Writes metric records to WORKDIR/metrics.jsonl and TensorBoard (process 0 only).

  A run that starts at `start_step` first drops the records of later steps: they come from a run
  stopped before its next checkpoint, whose steps are trained again from `start_step`, so the file
  keeps one record per step of the state's actual history (TensorBoard likewise: `purge_step`).
  """

  def __init__(self, workdir: str | os.PathLike, start_step: int = 0):
    self.path = storage.path(workdir) / METRICS_FILE
    self.active = jax.process_index() == 0
    self._lines: list[str] = []  # the file's records, kept for a bucket (see `write`)
    self._board = None
    if not self.active:
      return
    if self.path.exists():
      self._lines = [line for line in self.path.read_text().splitlines(keepends=True)
                     if line.strip() and json.loads(line)["step"] <= start_step]
      storage.write_text(self.path, "".join(self._lines))
    # Optional for the library: the [train] extra brings tensorboardX; only training imports it.
    import tensorboardX

    # Event files are named by the second and the host; a suffix in nanoseconds keeps a restart
    # within the same second from overwriting the file before it, and sorts after it, as
    # TensorBoard reads the files (a restart's purge_step drops the earlier file's later steps).
    self._board = tensorboardX.SummaryWriter(
        logdir=os.fspath(self.path.parent / TENSORBOARD_DIR), flush_secs=30,
        purge_step=start_step + 1 if start_step else None,
        filename_suffix=f".{time.time_ns()}")

  def write(self, step: int, metrics: dict[str, Any], line: str | None = None) -> None:
    """Appends the record {"step", **metrics}, adds each metric as "train/<name>" and prints
    `line` (default: the metrics as name=value)."""
    if not self.active:
      return
    record = {"step": step, **{k: float(v) for k, v in metrics.items()}}
    text = json.dumps(record) + "\n"
    if storage.is_remote(self.path):
      # An object store cannot append to an object: it is written whole each time.
      self._lines.append(text)
      self.path.write_text("".join(self._lines))
    else:
      with self.path.open("a") as f:
        f.write(text)
    for name, value in record.items():
      if name != "step":
        self._board.add_scalar(f"train/{name}", value, step)
    print(line or f"step {step}: " + ", ".join(f"{k}={v:.4g}" for k, v in record.items()
                                               if k != "step"), flush=True)

  def write_evaluation(self, step: int, prefix: str, scalars: dict[str, float],
                       images: dict[str, epath.Path]) -> None:
    """Adds evaluation `scalars` ({"section/dataset/metric": value}) as "<prefix>/<name>" and the
    PNG files `images` ({name: path}) as images, at `step`."""
    if not self.active:
      return
    for name, value in scalars.items():
      self._board.add_scalar(f"{prefix}/{name}", value, step)
    for name, png in images.items():
      with Image.open(io.BytesIO(png.read_bytes())) as image:
        self._board.add_image(f"{prefix}/{name}", np.asarray(image.convert("RGB")), step,
                              dataformats="HWC")
    self._board.flush()

  def flush(self) -> None:
    """Makes the TensorBoard events so far durable (a bucket gets them only at a flush)."""
    if self._board is not None:
      self._board.flush()

  def close(self) -> None:
    if self._board is not None:
      self._board.close()


def _clock(seconds: float) -> str:
  seconds = int(round(seconds))
  return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Progress:
  """Step/total, rates and ETA, the way big_vision's `chrono` keeps them: time spent in
  evaluations and checkpoint saves (`paused`) stays out of the rates, and the ETA's rate starts
  after the first measurement, whose interval holds the compilation."""

  def __init__(self, total_steps: int, start_step: int, images_per_step: int):
    self.total = total_steps
    self.images_per_step = images_per_step
    self._start = self._last = time.perf_counter()
    self._last_step = start_step
    self._paused = self._paused_total = 0.0
    self._train_time = 0.0
    self._eta_origin: tuple[int, float] | None = None  # (step, training seconds) when rates start

  @contextlib.contextmanager
  def paused(self) -> Iterator[None]:
    start = time.perf_counter()
    try:
      yield
    finally:
      self._paused += time.perf_counter() - start

  def measure(self, step: int) -> dict[str, float]:
    """Rates since the last call (call after a sync with the device, e.g. fetching metrics):
    steps_per_s, images_per_s, images_seen, elapsed_s, device_hours."""
    now = time.perf_counter()
    interval = max(now - self._last - self._paused, 1e-9)
    self._train_time += interval
    self._paused_total += self._paused
    steps = step - self._last_step
    self._last, self._last_step, self._paused = now, step, 0.0
    if self._eta_origin is None:
      self._eta_origin = (step, self._train_time)
    return {"steps_per_s": steps / interval,
            "images_per_s": steps * self.images_per_step / interval,
            "images_seen": step * self.images_per_step, "elapsed_s": now - self._start,
            "device_hours": jax.device_count() * (now - self._start) / 3600}

  def eta_s(self, step: int) -> float | None:
    """Seconds of training left at the mean rate since the first measurement; None before the
    second one."""
    origin_step, origin_time = self._eta_origin or (step, 0.0)
    if step <= origin_step:
      return None
    rate = (step - origin_step) / max(self._train_time - origin_time, 1e-9)
    return (self.total - step) / rate

  def line(self, step: int, record: dict[str, float]) -> str:
    """The progress line, e.g. "step 120/2016 (6.0%) | loss 0.1234 ... | 3.2 steps/s, 141
    images/s | 0:00:37 (paused 0:00:05), ETA 0:09:51"."""
    shown = ("loss", "learning_rate", "grad_norm")
    values = " ".join(f"{k} {record[k]:.4g}" for k in shown if k in record)
    eta = self.eta_s(step)
    return (f"step {step}/{self.total} ({100 * step / self.total:.1f}%) | {values} | "
            f"{record['steps_per_s']:.3g} steps/s, {record['images_per_s']:.4g} images/s | "
            f"{_clock(record['elapsed_s'])} (paused {_clock(self._paused_total)}), ETA "
            + ("-" if eta is None else _clock(eta)))


def device_memory() -> dict[str, float]:
  """Bytes in use and the peak on this process's first device, where the backend reports them
  (GPU, TPU; not the CPU)."""
  stats = jax.local_devices()[0].memory_stats() or {}
  names = {"bytes_in_use": "device_memory_bytes", "peak_bytes_in_use": "device_memory_peak_bytes"}
  return {ours: float(stats[theirs]) for theirs, ours in names.items() if theirs in stats}


def parse_steps(spec: str) -> tuple[int, int] | None:
  """`train.profile_steps` -> (first, last) step of the trace; None for "" (no trace).

  Accepts "12", "10-12" or "10,11,12" (consecutive steps: one trace).
  """
  if not spec:
    return None
  error = ValueError(f"config.train.profile_steps: expected STEP, FIRST-LAST or consecutive "
                     f"steps as A,B,C, got {spec!r}")
  try:
    if "-" in spec:
      first, last = (int(part) for part in spec.split("-"))
      steps = list(range(first, last + 1))
    else:
      steps = [int(part) for part in spec.split(",")]
  except ValueError:
    raise error from None
  if not steps or steps[0] < 1 or steps != list(range(steps[0], steps[0] + len(steps))):
    raise error
  return steps[0], steps[-1]


class Profiler:
  """A `jax.profiler` trace of the steps `train.profile_steps` names, from process 0, into
  WORKDIR/tensorboard. jaxlib's own GCS client cannot be pointed elsewhere (an emulator), so a
  bucket workdir gets the trace written locally and uploaded."""

  def __init__(self, spec: str, workdir: str | os.PathLike):
    window = parse_steps(spec)  # on every process, so that a bad value fails everywhere
    self.window = window if jax.process_index() == 0 else None
    self.target = storage.path(workdir) / TENSORBOARD_DIR
    self._tracing: str | None = None

  def before(self, step: int) -> None:
    """Call before the update that produces step `step + 1`."""
    if self.window and self._tracing is None and self.window[0] <= step + 1 <= self.window[1]:
      remote = storage.is_remote(self.target)
      self._tracing = tempfile.mkdtemp(prefix="promptiqa_profile_") if remote else os.fspath(
          self.target)
      jax.profiler.start_trace(self._tracing)

  def after(self, step: int, outputs: Any) -> None:
    """Call after the update that produced step `step`, with its outputs (waited for)."""
    if self._tracing is not None and step >= self.window[1]:
      jax.block_until_ready(outputs)
      self.stop()

  def stop(self) -> None:
    if self._tracing is None:
      return
    jax.profiler.stop_trace()
    if storage.is_remote(self.target):
      storage.upload_tree(self._tracing, self.target)
      shutil.rmtree(self._tracing, ignore_errors=True)
    print(f"profile of steps {self.window[0]}-{self.window[1]} written to {self.target}",
          flush=True)
    self._tracing = None
    self.window = None
