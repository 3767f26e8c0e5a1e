"""What a run shows (promptiqa_jax.observe): the metrics file and TensorBoard events across a
restart, the progress line's rates and ETA, the profile window, and the evaluation's numbers as
TensorBoard scalars. A whole training run's events, progress line and trace are read back in
test_gcs.py (on a bucket and on local disk).
"""
from __future__ import annotations

import json
import re
import time

import pytest

from promptiqa_jax import observe
from promptiqa_jax.evaluators import report


def read_events(logdir) -> dict[str, list[tuple[int, float]]]:
  """Every scalar series of `logdir`, as TensorBoard's own reader gives it."""
  from tensorboard.backend.event_processing import event_accumulator

  accumulator = event_accumulator.EventAccumulator(str(logdir), size_guidance={
      event_accumulator.SCALARS: 0})
  accumulator.Reload()
  return {tag: [(e.step, e.value) for e in accumulator.Scalars(tag)]
          for tag in accumulator.Tags()["scalars"]}


def test_a_restart_keeps_one_record_per_step(tmp_path):
  """A run stopped after step 5 whose last checkpoint is step 3: the restart trains 4 and 5 again,
  and both the metrics file and TensorBoard keep the new records of those steps only."""
  first = observe.MetricsWriter(tmp_path)
  for step in range(1, 6):
    first.write(step, {"loss": 1.0 / step})
  first.close()
  resumed = observe.MetricsWriter(tmp_path, start_step=3)
  resumed.write(4, {"loss": 0.5})
  resumed.close()
  lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
  assert [(r["step"], r["loss"]) for r in map(json.loads, lines)] == [
      (1, 1.0), (2, 0.5), (3, pytest.approx(1 / 3)), (4, 0.5)]
  assert read_events(tmp_path / "tensorboard")["train/loss"] == [
      (1, 1.0), (2, 0.5), (3, pytest.approx(1 / 3)), (4, 0.5)]


@pytest.mark.parametrize("spec, window", [
    ("", None), ("12", (12, 12)), ("10-12", (10, 12)), ("10,11,12", (10, 12))])
def test_profile_steps(spec, window):
  assert observe.parse_steps(spec) == window


@pytest.mark.parametrize("spec", ["0", "12-10", "10,12", "a-b", "1-2-3", "-3"])
def test_profile_steps_refused(spec):
  with pytest.raises(ValueError, match="config.train.profile_steps"):
    observe.parse_steps(spec)


def test_progress_rates_leave_out_pauses_and_the_first_interval():
  progress = observe.Progress(total_steps=10, start_step=0, images_per_step=4)
  time.sleep(0.3)  # the first interval: compilation, kept out of the ETA
  first = progress.measure(1)
  assert first["images_seen"] == 4 and progress.eta_s(1) is None
  assert progress.line(1, {"loss": 0.5, **first}).endswith("ETA -")
  time.sleep(0.1)
  with progress.paused():  # an evaluation: kept out of the rates
    time.sleep(0.5)
  record = progress.measure(5)
  # 4 steps in ~0.1 s of training: ~40 steps/s; counting the pause would give under 7.
  assert 15 < record["steps_per_s"] < 41 and record["images_per_s"] == pytest.approx(
      4 * record["steps_per_s"])
  assert 0.9 < record["elapsed_s"] < 3
  # 5 steps left at the rate since step 1: ~0.13 s.
  assert 0.05 < progress.eta_s(5) < 0.4
  line = progress.line(5, {"loss": 0.25, "learning_rate": 1e-3, **record})
  assert re.fullmatch(r"step 5/10 \(50\.0%\) \| loss 0\.25 learning_rate 0\.001 \| [0-9.]+ "
                      r"steps/s, [0-9.]+ images/s \| 0:00:0[0-3] \(paused 0:00:0[01]\), "
                      r"ETA 0:00:00", line), line


def test_device_memory_reports_only_what_the_backend_has():
  import jax

  stats = jax.local_devices()[0].memory_stats()
  assert observe.device_memory() == ({} if stats is None else {
      "device_memory_bytes": stats["bytes_in_use"],
      "device_memory_peak_bytes": stats["peak_bytes_in_use"]})


def test_evaluation_scalars():
  result = {"step": 4, "split": "validation", "prompt": {"size": 10},
            "datasets": {"a/b:c": {"srcc": 0.5, "plcc": float("nan"), "n": 7, "note": "x"}},
            "supervised_ceiling": {"a/b:c": {"srcc": 0.9, "penalty": 1e-3}},
            "summary": {"all_datasets_own_srcc": 0.5, "heldout_own_srcc": None}}
  assert report.scalars(result) == {
      ("datasets", "a/b:c", "srcc"): 0.5, ("datasets", "a/b:c", "n"): 7.0,
      ("supervised_ceiling", "a/b:c", "srcc"): 0.9,
      ("supervised_ceiling", "a/b:c", "penalty"): 1e-3,
      ("summary", "all_datasets_own_srcc"): 0.5}
  assert observe.tag_safe("synthetic_iqa/size16:psnr") == "synthetic_iqa_size16_psnr"
