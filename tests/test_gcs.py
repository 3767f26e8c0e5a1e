"""Training where pod users keep everything: a bucket (gs://), here a GCS emulator.

The module fixture starts `gcp-storage-emulator` on a free local port with a bucket and stops it
after; the GCS clients reach it through their emulator settings: STORAGE_EMULATOR_HOST (gcsfs under
etils.epath, google-cloud-storage under tensorboardX), TENSORSTORE_GCS_HTTP_URL (tensorstore under
orbax) and GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false (spares gcsfs a gRPC bucket-type probe the
emulator cannot answer, 60 s per call). The emulator runs through tests/gcs_emulator.py, which adds
the download response header tensorstore needs and the emulator omits. jaxlib's profiler has its
own GCS client that cannot be pointed at an emulator; traces are written locally and uploaded.
Nothing outside the machine is reached.

One story, in order: `prepare` builds the tiny synthetic_iqa (tests/smoke_config.py) into
gs://bucket/tfds; a run in this process (local workdir, the data mirrored from the bucket, an
evaluation at its last step) is the reference, and its TensorBoard events are read back with
TensorBoard's own reader; `python -m promptiqa_jax.train --workdir gs://bucket/run` (profiling
steps 2-3) is killed with SIGKILL after its first checkpoint, left with a later checkpoint
half-written, restarted, and must end bitwise equal to the reference; the evaluation and
`promptiqa-jax score --checkpoint gs://bucket/run` read the model from the bucket. Evaluations run
the per-dataset evaluator alone (the controls would only add time).
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import image_files
import smoke_config
from processes import finish, free_port, start
from promptiqa_jax import storage

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUCKET = "bucket"
DATA_DIR = f"gs://{BUCKET}/tfds"
RUN = f"gs://{BUCKET}/run"
STEPS = 8
CHECKPOINT_EVERY = 3
TIMEOUT_S = 300


@pytest.fixture(scope="module")
def emulator(tmp_path_factory) -> dict[str, str]:
  """A GCS emulator with an empty bucket, this process pointed at it; yields the environment of
  the subprocesses (one CPU device each, a shared compilation cache folder)."""
  gcsfs = sys.modules.get("gcsfs")
  if gcsfs is not None and gcsfs.GCSFileSystem is not gcsfs.core.GCSFileSystem:
    pytest.fail("gcsfs was imported before GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false was set; "
                "every call would wait 60 s on the emulator")
  port = free_port()
  log = tmp_path_factory.mktemp("emulator") / "emulator.log"
  with open(log, "w") as out:
    server = subprocess.Popen([sys.executable, os.path.join(REPO, "tests", "gcs_emulator.py"),
                               "start", f"--port={port}", f"--default-bucket={BUCKET}",
                               "--in-memory"], stdout=out, stderr=subprocess.STDOUT)
  settings = {"STORAGE_EMULATOR_HOST": f"http://127.0.0.1:{port}",
              "TENSORSTORE_GCS_HTTP_URL": f"http://127.0.0.1:{port}",
              "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false"}
  try:
    deadline = time.monotonic() + 60
    while "All services started" not in log.read_text():
      if server.poll() is not None or time.monotonic() > deadline:
        pytest.fail(f"the emulator did not start:\n{log.read_text()}")
      time.sleep(0.1)
    with pytest.MonkeyPatch.context() as patch:
      for key, value in settings.items():
        patch.setenv(key, value)
      env = dict(os.environ, JAX_PLATFORMS="cpu")
      env.pop("XLA_FLAGS", None)
      yield env
  finally:
    server.terminate()
    server.wait(timeout=30)


def bucket_fs():
  """gcsfs with its listings cache emptied: the subprocesses write behind this process's back."""
  import fsspec

  fs = fsspec.filesystem("gs")
  fs.invalidate_cache()
  return fs


@pytest.fixture(scope="module")
def bucket_data(emulator, tmp_path_factory) -> dict:
  """The tiny synthetic_iqa prepared into gs://bucket/tfds; the staging folder and prepare's
  output."""
  from promptiqa_jax.data import catalog

  staging = tmp_path_factory.mktemp("staging")
  output = io.StringIO()
  with contextlib.redirect_stdout(output):
    builder = catalog.prepare("synthetic_iqa", DATA_DIR, None, cache_dir=str(staging),
                              **smoke_config.BUILD)
  return {"staging": str(staging), "builder": builder, "output": output.getvalue()}


def test_prepare_uploads_a_whole_build(bucket_data, tmp_path):
  from promptiqa_jax.data import catalog, sources

  local_build = os.fspath(bucket_data["builder"].data_dir)
  relative = os.path.relpath(local_build, storage.local_twin(DATA_DIR, bucket_data["staging"]))
  remote_build = f"{DATA_DIR}/{relative}"
  assert f"uploaded {len(os.listdir(local_build))} files to {remote_build}" in bucket_data["output"]
  listed = {os.path.basename(path): info["size"]
            for path, info in bucket_fs().find(remote_build, detail=True).items()}
  assert sources.INFO_FILE in listed and any(".array_record-" in n for n in listed)
  assert listed == {n: os.path.getsize(os.path.join(local_build, n))
                    for n in os.listdir(local_build)}
  row = next(r for r in catalog.list_datasets(DATA_DIR) if r["name"] == "synthetic_iqa")
  assert row["prepared_configs"] == [relative.split("/")[1]]
  # Prepared already: built locally again is a no-op, and nothing is uploaded.
  output = io.StringIO()
  with contextlib.redirect_stdout(output):
    catalog.prepare("synthetic_iqa", DATA_DIR, None, cache_dir=bucket_data["staging"],
                    **smoke_config.BUILD)
  assert "uploaded 0 files" in output.getvalue()
  # A host without the staging folder mirrors the build, file for file.
  mirror = storage.mirror_tree(remote_build, tmp_path, last=(sources.INFO_FILE,))
  assert {n: os.path.getsize(os.path.join(mirror, n)) for n in os.listdir(mirror)} == listed


def test_the_marker_file_is_copied_last(tmp_path, monkeypatch):
  """A reader checks for dataset_info.json: it must never land before the records it describes."""
  source = tmp_path / "build"
  (source / "sub").mkdir(parents=True)
  for name in ("dataset_info.json", "a.array_record-00000-of-00001", "z.json", "sub/x"):
    (source / name).write_text(name)
  copied = []
  original = storage._copy_file
  monkeypatch.setattr(storage, "_copy_file",
                      lambda s, t: copied.append(s.name) or original(s, t))
  assert storage.upload_tree(source, tmp_path / "target", last=("dataset_info.json",)) == 4
  assert copied[-1] == "dataset_info.json" and sorted(copied) == sorted(
      ["dataset_info.json", "a.array_record-00000-of-00001", "z.json", "x"])
  # Files of another size are copied again; the rest are left alone.
  (source / "z.json").write_text("a longer text")
  copied.clear()
  assert storage.upload_tree(source, tmp_path / "target", last=("dataset_info.json",)) == 1
  assert copied == ["z.json"] and (tmp_path / "target" / "z.json").read_text() == "a longer text"


@pytest.fixture(scope="module")
def reference(bucket_data, tmp_path_factory) -> dict:
  """An uninterrupted run in this process: local workdir, data from the bucket, evaluated at its
  last step. Returns its workdir and what it printed."""
  from promptiqa_jax import trainer

  workdir = tmp_path_factory.mktemp("reference")
  config = smoke_config.get_config(DATA_DIR)
  config.train.update(num_steps=STEPS, checkpoint_every=CHECKPOINT_EVERY, keep_checkpoints=10,
                      final_eval=False, eval_every=STEPS)
  config.data.local_cache_dir = str(tmp_path_factory.mktemp("reference_cache"))
  config.eval.evaluators = "per_dataset"
  output = io.StringIO()
  with contextlib.redirect_stdout(output):
    trainer.train_and_evaluate(config, str(workdir / "run"))
  return {"workdir": str(workdir / "run"), "output": output.getvalue(), "config": config}


def event_tags(logdir: str) -> tuple[dict, object]:
  """TensorBoard's own reader over `logdir`: (its tag lists, the accumulator)."""
  from tensorboard.backend.event_processing import event_accumulator

  accumulator = event_accumulator.EventAccumulator(
      logdir, size_guidance={event_accumulator.SCALARS: 0, event_accumulator.IMAGES: 0})
  accumulator.Reload()
  return accumulator.Tags(), accumulator


def metrics(workdir: str) -> list[dict]:
  text = storage.path(workdir).joinpath("metrics.jsonl").read_text()
  return [json.loads(line) for line in text.splitlines()]


def test_tensorboard_events_and_progress(reference):
  from promptiqa_jax.observe import tag_safe

  workdir, config = reference["workdir"], reference["config"]
  tags, events = event_tags(os.path.join(workdir, "tensorboard"))
  train = {"loss", "learning_rate", "grad_norm", "param_norm", "steps_per_s", "images_per_s",
           "images_seen", "elapsed_s", "device_hours", "epoch"}
  assert {f"train/{name}" for name in train} <= set(tags["scalars"])
  # Every evaluation metric, and a scatter plot per dataset.
  datasets = [tag_safe(name) for name in config.data.eval]
  assert {f"eval/validation/datasets/{d}/{m}" for d in datasets
          for m in ("srcc", "plcc", "krcc", "rmse", "n")} <= set(tags["scalars"])
  assert "eval/validation/summary/all_datasets_own_srcc" in tags["scalars"]
  assert sorted(tags["images"]) == sorted(f"eval/validation/plots/{d}" for d in datasets)
  image = events.Images(f"eval/validation/plots/{datasets[0]}")[0]
  assert image.step == STEPS and image.encoded_image_string[:4] == b"\x89PNG"
  records = metrics(workdir)
  losses = events.Scalars("train/loss")
  assert [e.step for e in losses] == [r["step"] for r in records] == list(range(1, STEPS + 1))
  assert [e.value for e in losses] == [np.float32(r["loss"]) for r in records]
  kinds = {tag for tag in tags["scalars"] + tags["images"]}
  for dataset in datasets:
    kinds = {tag.replace(f"/{dataset}", "/<dataset>") for tag in kinds}
  print(f"TensorBoard: {len(tags['scalars'])} scalar and {len(tags['images'])} image tags:",
        ", ".join(sorted(kinds)))

  lines = [line for line in reference["output"].splitlines() if line.startswith("step ")]
  assert lines[0].startswith(f"step 1/{STEPS} (12.5%) | loss ") and lines[0].endswith("ETA -")
  assert lines[-1].startswith(f"step {STEPS}/{STEPS} (100.0%)") and "ETA 0:00:00" in lines[-1]
  assert "steps/s" in lines[-1] and "images/s" in lines[-1]
  assert f"evaluating validation: {len(datasets)}/{len(datasets)} " in reference["output"]


def finalized_steps(fs) -> list[int]:
  """Checkpoint steps on the bucket that orbax finished (on GCS its marker is
  commit_success.txt; a step folder without it is one a crash left)."""
  folder = f"{BUCKET}/run/checkpoints"
  if not fs.exists(folder):
    return []
  names = [p.rsplit("/", 1)[-1] for p in fs.ls(folder)]
  return sorted(int(n) for n in names if n.isdigit()
                and fs.exists(f"{folder}/{n}/commit_success.txt"))


@pytest.fixture(scope="module")
def bucket_run(emulator, bucket_data, tmp_path_factory) -> dict:
  """`python -m promptiqa_jax.train --workdir gs://bucket/run`, killed with SIGKILL once its first
  checkpoint is finished, then restarted to the end."""
  folder = tmp_path_factory.mktemp("bucket_run")
  args = [sys.executable, "-m", "promptiqa_jax.train",
          f"--config=tests/smoke_config.py:{DATA_DIR}", f"--workdir={RUN}",
          f"--config.train.num_steps={STEPS}",
          f"--config.train.checkpoint_every={CHECKPOINT_EVERY}",
          "--config.train.keep_checkpoints=10", "--config.train.final_eval=False",
          "--config.train.async_checkpointing=True", "--config.train.profile_steps=2-3",
          f"--config.data.local_cache_dir={folder / 'cache'}",
          f"--config.train.compilation_cache_dir={folder / 'jax_cache'}"]
  killed_log = str(folder / "killed.log")
  process = start(args, emulator, killed_log)
  deadline = time.monotonic() + TIMEOUT_S
  while not finalized_steps(bucket_fs()):
    if process.poll() is not None or time.monotonic() > deadline:
      process.kill()
      pytest.fail(f"no checkpoint before the run ended (status {process.returncode}):\n"
                  + open(killed_log).read()[-4000:])
    time.sleep(0.05)
  process.send_signal(signal.SIGKILL)
  assert process.wait(timeout=60) == -signal.SIGKILL
  fs = bucket_fs()
  killed_at = finalized_steps(fs)[-1]
  # What a kill during a save leaves: the next step's folder with every file but the marker.
  partial = killed_at + CHECKPOINT_EVERY
  checkpoints = f"{RUN}/checkpoints"
  if partial < STEPS and not fs.exists(f"{BUCKET}/run/checkpoints/{partial}"):
    storage.upload_tree(f"{checkpoints}/{killed_at}", f"{checkpoints}/{partial}")
    fs.rm(f"{BUCKET}/run/checkpoints/{partial}/commit_success.txt")
  killed_metrics = metrics(RUN)
  resumed_log = str(folder / "resumed.log")
  finish(start(args, emulator, resumed_log), resumed_log, TIMEOUT_S)
  logs = {name: open(str(folder / f"{name}.log")).read() for name in ("killed", "resumed")}
  return {"killed_at": killed_at, "partial": partial, "logs": logs,
          "killed_metrics": killed_metrics}


def test_killed_run_on_a_bucket_resumes_bitwise(reference, bucket_run):
  import jax

  from promptiqa_jax.checkpoint import load_model

  killed_at = bucket_run["killed_at"]
  assert killed_at < STEPS
  assert f"resumed from step {killed_at}" in bucket_run["logs"]["resumed"]
  assert f"step 1/{STEPS} (12.5%)" in bucket_run["logs"]["killed"]
  # The records of steps the killed run took past its checkpoint were trained again.
  assert [r["step"] for r in bucket_run["killed_metrics"]][:killed_at] == list(
      range(1, killed_at + 1))
  records, expected = metrics(RUN), metrics(reference["workdir"])
  assert [r["step"] for r in records] == list(range(1, STEPS + 1))
  assert [r["loss"] for r in records] == [r["loss"] for r in expected]
  assert finalized_steps(bucket_fs()) == [3, 6, 8]
  ours, _ = load_model(f"{RUN}/model")
  theirs, _ = load_model(os.path.join(reference["workdir"], "model"))
  flat_ours = dict(jax.tree_util.tree_leaves_with_path(ours))
  flat_theirs = dict(jax.tree_util.tree_leaves_with_path(theirs))
  assert flat_ours.keys() == flat_theirs.keys()
  for key, value in flat_theirs.items():
    np.testing.assert_array_equal(flat_ours[key], value, err_msg=jax.tree_util.keystr(key))
  # TensorBoard on the bucket: the resumed run's purge_step dropped the killed run's later steps.
  bucket_fs()
  _, events = event_tags(f"{RUN}/tensorboard")
  assert [(e.step, e.value) for e in events.Scalars("train/loss")] == [
      (r["step"], np.float32(r["loss"])) for r in records]
  # The killed run traced steps 2-3 before its first checkpoint (where xprof finds a trace: the
  # events' folder, plugins/profile/<session>/<host>.xplane.pb), uploaded from a local folder.
  fs = bucket_fs()
  (trace,) = fs.glob(f"{BUCKET}/run/tensorboard/plugins/profile/*/*.xplane.pb")
  assert fs.size(trace) > 0


def test_evaluate_and_score_from_the_bucket(reference, bucket_run, tmp_path, capsys):
  from promptiqa_jax import cli, evaluators

  result = evaluators.evaluate_checkpoint(reference["config"], RUN, split="test", name="final")
  written = json.loads(storage.path(RUN).joinpath("eval", "final.json").read_text())
  assert written["split"] == "test" and written["datasets"].keys() == result["datasets"].keys()
  plots = bucket_fs().glob(f"{BUCKET}/run/eval/plots/*_final.png")
  assert len(plots) == len(result["datasets"])

  paths = image_files.random_pngs(tmp_path, 4, (40, 40, 3), prefix="image")
  prompt = image_files.pair_prompt(tmp_path / "prompt.json", paths[:2], [0.2, 0.8])
  code = cli.main(["score", "--checkpoint", RUN, "--prompt", prompt, *paths[2:],
                   "--output", str(tmp_path / "scores.json"), "--quiet"])
  assert code == 0, capsys.readouterr().err
  rows = json.loads((tmp_path / "scores.json").read_text())
  assert [row["path"] for row in rows] == paths[2:]
  assert all(0 <= row["score"] <= 1 for row in rows)
