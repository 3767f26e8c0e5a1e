"""The programs as users run them: `python -m promptiqa_jax.train` (and `.evaluate`) and launch/'s
launchers.

The runs train `configs/synthetic.py:smoke` on a tiny synthetic_iqa build (tests/smoke_config.py)
for STEPS steps. One uninterrupted single-process run is the reference for: two processes through
launch/local.sh (the same global batch: the losses must agree to float32 rounding), a run killed
with SIGKILL and restarted, a run stopped with SIGTERM and restarted (both must end bitwise equal
to the reference, with one metrics record per step), and the evaluation program in two processes
(the reference's own final evaluation). Two processes of which one gets SIGTERM must stop after
the same step with a complete checkpoint. The subprocesses share a persistent compilation cache, so
only the first run of each device layout pays for compiling.

The shell logic of the launchers is tested with stand-ins for python, gcloud and srun.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from processes import finish, free_port, start

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 8
CHECKPOINT_EVERY = 3  # checkpoints at 3, 6 and (the end) 8: a kill after 3 lands mid-run
TIMEOUT_S = 600


@pytest.fixture(scope="module")
def run_env(tmp_path_factory) -> dict[str, str]:
  """Environment of the training subprocesses: one CPU device each, a shared compilation cache."""
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             JAX_COMPILATION_CACHE_DIR=str(tmp_path_factory.mktemp("jax_cache")),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
  env.pop("XLA_FLAGS", None)
  return env


def train_args(data_dir: str, workdir: str, final_eval: bool = False,
               steps: int = STEPS) -> list[str]:
  return [f"--config=tests/smoke_config.py:{data_dir}", f"--workdir={workdir}",
          f"--config.train.num_steps={steps}",
          f"--config.train.checkpoint_every={CHECKPOINT_EVERY}",
          "--config.train.keep_checkpoints=10", f"--config.train.final_eval={final_eval}"]


def train_command(data_dir: str, workdir: str, final_eval: bool = False) -> list[str]:
  return [sys.executable, "-m", "promptiqa_jax.train", *train_args(data_dir, workdir, final_eval)]


def metrics(workdir: str) -> list[dict]:
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def checkpoint_steps(workdir: str) -> list[int]:
  """Finished checkpoints (orbax writes into a temporary name and renames when complete)."""
  folder = os.path.join(workdir, "checkpoints")
  names = os.listdir(folder) if os.path.isdir(folder) else []
  return sorted(int(n) for n in names if n.isdigit())


def final_variables(workdir: str) -> dict[str, np.ndarray]:
  """The exported model's variables, flattened to {path: array}."""
  import jax

  from promptiqa_jax.checkpoint import load_model

  variables, _ = load_model(os.path.join(workdir, "model"))
  return {jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_leaves_with_path(variables)}


def wait_for(condition, process: subprocess.Popen, what: str) -> None:
  deadline = time.monotonic() + TIMEOUT_S
  while not condition():
    if process.poll() is not None:
      pytest.fail(f"the run ended (status {process.returncode}) before {what}")
    if time.monotonic() > deadline:
      process.kill()
      pytest.fail(f"timed out waiting for {what}")
    time.sleep(0.02)


@pytest.fixture(scope="module")
def reference(smoke_data_dir, run_env, tmp_path_factory) -> str:
  """The workdir of an uninterrupted single-process run, evaluated at the end."""
  workdir = str(tmp_path_factory.mktemp("runs") / "reference")
  log = workdir + ".log"
  finish(start(train_command(smoke_data_dir, workdir, final_eval=True), run_env, log), log)
  return workdir


@pytest.mark.slow
def test_smoke_run_outputs(reference):
  """End to end through the command line: metrics of every step, checkpoints, the exported model."""
  records = metrics(reference)
  assert [r["step"] for r in records] == list(range(1, STEPS + 1))
  for record in records:
    assert np.isfinite(record["loss"]) and 0 < record["loss"] < 1
    assert record["learning_rate"] == pytest.approx(1e-3)
    assert record["grad_norm"] > 0 and record["images_per_s"] > 0
  assert checkpoint_steps(reference) == [3, 6, 8]
  with open(os.path.join(reference, "config.json")) as f:
    assert json.load(f)["train"]["num_steps"] == STEPS
  variables = final_variables(reference)
  assert all(np.all(np.isfinite(v)) for v in variables.values())
  # The final evaluation: every requirement of the build's test split, the table printed.
  with open(os.path.join(reference, "eval", "final.json")) as f:
    result = json.load(f)
  assert result["step"] == STEPS and result["split"] == "test"
  assert "summary" in result
  with open(reference + ".log") as f:
    assert "psnr" in f.read()


@pytest.mark.slow
def test_two_processes_match_one(reference, smoke_data_dir, run_env, tmp_path):
  """launch/local.sh 2: each process feeds half of every global batch; same losses as 1 process."""
  workdir = str(tmp_path / "two")
  log = workdir + ".log"
  finish(start([os.path.join(REPO, "launch", "local.sh"), "2",
                *train_args(smoke_data_dir, workdir)], run_env, log), log)
  with open(log) as f:
    assert "process 1 of 2" in f.read()
  one, two = metrics(reference), metrics(workdir)
  assert [r["step"] for r in two] == [r["step"] for r in one]
  losses_one = np.array([r["loss"] for r in one])
  losses_two = np.array([r["loss"] for r in two])
  # The first loss differs only by the order of the cross-device sums; later ones also carry the
  # few parameters whose first Adam step a rounding-level gradient difference decides.
  assert abs(losses_two[0] - losses_one[0]) <= 1e-6 * losses_one[0]
  np.testing.assert_allclose(losses_two, losses_one, rtol=1e-4)
  ref, got = final_variables(reference), final_variables(workdir)
  diffs = np.concatenate([np.abs(got[k] - ref[k]).ravel() for k in ref])
  print(f"1 vs 2 processes: loss diffs {np.abs(losses_two - losses_one).tolist()}; parameters: "
        f"max diff {diffs.max():.3g}, {np.mean(diffs > 1e-6):.2%} differ by over 1e-6")


@pytest.mark.slow
def test_sigkill_then_resume_is_bitwise_identical(reference, smoke_data_dir, run_env, tmp_path):
  workdir = str(tmp_path / "killed")
  args = train_command(smoke_data_dir, workdir)
  process = start(args, run_env, workdir + ".log")
  wait_for(lambda: checkpoint_steps(workdir), process, "the first checkpoint")
  process.send_signal(signal.SIGKILL)
  assert process.wait(timeout=TIMEOUT_S) == -signal.SIGKILL
  killed_at = checkpoint_steps(workdir)
  assert killed_at[-1] < STEPS and not os.path.exists(os.path.join(workdir, "model"))

  log = workdir + ".resumed.log"
  finish(start(args, run_env, log), log)
  with open(log) as f:
    assert f"resumed from step {killed_at[-1]}" in f.read()
  # Steps from the checkpoint on were trained again; the file keeps the resumed run's records.
  records = metrics(workdir)
  assert [r["step"] for r in records] == list(range(1, STEPS + 1))
  # The same batches in the same order: every loss equal to the uninterrupted run's, bitwise.
  assert [r["loss"] for r in records] == [r["loss"] for r in metrics(reference)]
  assert checkpoint_steps(workdir)[-1] == STEPS
  ref, got = final_variables(reference), final_variables(workdir)
  assert ref.keys() == got.keys()
  for key in ref:
    np.testing.assert_array_equal(got[key], ref[key], err_msg=key)


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_to_resume_from(reference, smoke_data_dir, run_env, tmp_path):
  workdir = str(tmp_path / "terminated")
  args = train_command(smoke_data_dir, workdir)
  process = start(args, run_env, workdir + ".log")
  # The first record means the loop runs, so the SIGTERM handler is in place.
  wait_for(lambda: os.path.exists(os.path.join(workdir, "metrics.jsonl")), process,
           "the first step")
  process.send_signal(signal.SIGTERM)
  assert process.wait(timeout=TIMEOUT_S) == 0
  stopped_at = metrics(workdir)[-1]["step"]
  assert stopped_at < STEPS, "the run ended before SIGTERM reached it"
  # The step it stopped after is saved, complete: the restart restores it and ends where the
  # uninterrupted run ends.
  assert checkpoint_steps(workdir)[-1] == stopped_at
  log = workdir + ".resumed.log"
  finish(start(args, run_env, log), log)
  with open(log) as f:
    assert f"resumed from step {stopped_at}" in f.read()
  assert [r["loss"] for r in metrics(workdir)] == [r["loss"] for r in metrics(reference)]
  ref, got = final_variables(reference), final_variables(workdir)
  for key in ref:
    np.testing.assert_array_equal(got[key], ref[key], err_msg=key)


@pytest.mark.slow
def test_sigterm_to_one_of_two_processes_stops_both_at_one_step(smoke_data_dir, run_env,
                                                                 tmp_path):
  """SIGTERM to process 1 alone: JAX's preemption sync manager (no collective per step) stops both
  processes after the same step, each saving its part of one complete checkpoint there; a restart
  through launch/local.sh resumes from it. More steps than the other runs: the notice takes about
  a second to go round."""
  steps = 40
  workdir = str(tmp_path / "two_terminated")
  port = free_port()
  logs = [str(tmp_path / f"process_{i}.log") for i in range(2)]
  processes = [start([sys.executable, "-m", "promptiqa_jax.train",
                      *train_args(smoke_data_dir, workdir, steps=steps),
                      f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
                      f"--process_id={i}"], run_env, log) for i, log in enumerate(logs)]
  try:
    wait_for(lambda: os.path.exists(os.path.join(workdir, "metrics.jsonl")), processes[1],
             "the first step")
    processes[1].send_signal(signal.SIGTERM)
    for process, log in zip(processes, logs):
      finish(process, log)
  finally:
    for process in processes:
      if process.poll() is None:
        process.kill()
  saved = []
  for log in logs:
    with open(log) as f:
      saved += [int(n) for n in re.findall(r"saved step (\d+) after SIGTERM", f.read())]
  assert len(saved) == 2 and saved[0] == saved[1] < steps, saved
  stopped_at = saved[0]
  assert checkpoint_steps(workdir)[-1] == stopped_at
  assert metrics(workdir)[-1]["step"] == stopped_at
  log = str(tmp_path / "resumed.log")
  finish(start([os.path.join(REPO, "launch", "local.sh"), "2",
                *train_args(smoke_data_dir, workdir, steps=steps)], run_env, log), log)
  with open(log) as f:
    assert f.read().count(f"resumed from step {stopped_at}") == 2
  assert [r["step"] for r in metrics(workdir)] == list(range(1, steps + 1))


def flat_json(tree, path: str = "") -> dict:
  """A JSON tree as {path: leaf}."""
  if isinstance(tree, (dict, list)):
    items = tree.items() if isinstance(tree, dict) else enumerate(tree)
    return {k: v for key, sub in items for k, v in flat_json(sub, f"{path}/{key}").items()}
  return {path: tree}


@pytest.mark.slow
def test_evaluation_program_in_two_processes(reference, smoke_data_dir, run_env, tmp_path):
  """`python -m promptiqa_jax.evaluate` as two processes joined as training's are, each
  featurising half of every split: the result is the reference run's own final evaluation of its
  final model (eval/final_model.json)."""
  port = free_port()
  logs = [str(tmp_path / f"process_{i}.log") for i in range(2)]
  processes = [start([sys.executable, "-m", "promptiqa_jax.evaluate",
                      f"--config=tests/smoke_config.py:{smoke_data_dir}", f"--workdir={tmp_path}",
                      f"--checkpoint={os.path.join(reference, 'model')}", "--split=test",
                      f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
                      f"--process_id={i}"], run_env, log) for i, log in enumerate(logs)]
  try:
    for process, log in zip(processes, logs):
      finish(process, log)
  finally:
    for process in processes:  # the other waits for a failed one forever
      if process.poll() is None:
        process.kill()
  with open(logs[1]) as f:
    assert "process 1 of 2" in f.read()
  with open(os.path.join(reference, "eval", "final_model.json")) as f:
    final = json.load(f)
  with open(tmp_path / "eval" / "evaluate.json") as f:
    evaluated = json.load(f)
  assert final.pop("step") == STEPS and evaluated.pop("step") is None
  final, evaluated = flat_json(final), flat_json(evaluated)
  assert evaluated.keys() == final.keys()
  numbers = [k for k, v in final.items() if isinstance(v, float)]
  assert numbers and {k: v for k, v in evaluated.items() if k not in numbers} == {
      k: v for k, v in final.items() if k not in numbers}
  # Each image's features do not depend on the batch it was computed in, up to float rounding.
  assert [evaluated[k] for k in numbers] == pytest.approx([final[k] for k in numbers], rel=1e-6,
                                                          abs=1e-9)


# The launchers' shell logic, with stand-ins for the programs they start.


def stand_in(folder, name: str, body: str) -> str:
  """An executable `name` in `folder` running the bash `body`; a python stand-in runs `-c` code
  (local.sh finds a free port that way) with the real interpreter."""
  path = os.path.join(folder, name)
  with open(path, "w") as f:
    f.write("#!/usr/bin/env bash\n")
    if name == "python":
      f.write(f'if [[ "$1" == -c ]]; then exec {sys.executable} "$@"; fi\n')
    f.write(body)
  os.chmod(path, 0o755)
  return path


def test_local_launcher_stops_everything_when_one_process_fails(tmp_path):
  # Process 1 fails once process 0 runs; process 0 would wait for it forever (as in a collective).
  python = stand_in(tmp_path, "python", f"""
case "$*" in *--process_id=1*) until [[ -e {tmp_path}/args0 ]]; do sleep 0.05; done; exit 3 ;; esac
echo "$*" > {tmp_path}/args && mv {tmp_path}/args {tmp_path}/args0
exec sleep 60
""")
  started = time.monotonic()
  result = subprocess.run([os.path.join(REPO, "launch", "local.sh"), "2", "--config=c.py",
                           "--workdir=w"], env=dict(os.environ, PYTHON=python),
                          capture_output=True, text=True, timeout=60)
  assert result.returncode == 3
  assert "exited with status 3" in result.stderr
  assert time.monotonic() - started < 30
  args = (tmp_path / "args0").read_text().split()
  assert args[:4] == ["-m", "promptiqa_jax.train", "--config=c.py", "--workdir=w"]
  assert args[4].startswith("--coordinator_address=127.0.0.1:")
  assert args[5:] == ["--num_processes=2", "--process_id=0"]


def test_local_launcher_passes_sigterm_on(tmp_path):
  # Each stand-in saves (writes a file) and exits 0 on SIGTERM, as the training program does.
  python = stand_in(tmp_path, "python", f"""
id=${{@: -1}}
trap 'touch {tmp_path}/saved_${{id#--process_id=}}; kill $!; exit 0' TERM
sleep 60 &
touch {tmp_path}/started_${{id#--process_id=}}
wait
""")
  process = subprocess.Popen([os.path.join(REPO, "launch", "local.sh"), "3", "--workdir=w"],
                             env=dict(os.environ, PYTHON=python))
  deadline = time.monotonic() + 30
  while len(list(tmp_path.glob("started_*"))) < 3 and time.monotonic() < deadline:
    time.sleep(0.05)
  process.send_signal(signal.SIGTERM)
  assert process.wait(timeout=30) == 0
  assert sorted(p.name for p in tmp_path.glob("saved_*")) == ["saved_0", "saved_1", "saved_2"]


def test_tpu_pod_launcher_runs_the_program_on_every_worker(tmp_path):
  stand_in(tmp_path, "gcloud", f'printf "%s\\n" "$@" > {tmp_path}/gcloud_args\n')
  env = dict(os.environ, PATH=f"{tmp_path}:{os.environ['PATH']}", TPU_NAME="pod", ZONE="z1",
             PROJECT="proj")
  subprocess.run([os.path.join(REPO, "launch", "tpu_pod.sh"), "--config", "configs/paper.py",
                  "--workdir", "/mnt/run dir", "--config.data.data_dir=gs://my-bucket/tfds",
                  "--config.data.groups_per_batch=32"],
                 env=env, check=True, timeout=30)
  args = (tmp_path / "gcloud_args").read_text().splitlines()
  assert args[:5] == ["compute", "tpus", "tpu-vm", "ssh", "pod"]
  assert {"--zone=z1", "--project=proj", "--worker=all"} <= set(args)
  command = next(a for a in args if a.startswith("--command=")).removeprefix("--command=")
  assert command.startswith(
      "cd ~/promptiqa_jax && python3 -m promptiqa_jax.train --distributed=on ")
  # The remote shell must see the arguments as given, the space in the workdir included.
  echoed = subprocess.run(["bash", "-c", "printf '%s\\n' " + command.split("--distributed=on ")[1]],
                          capture_output=True, text=True, check=True).stdout.splitlines()
  assert echoed == ["--config", "configs/paper.py", "--workdir", "/mnt/run dir",
                    "--config.data.data_dir=gs://my-bucket/tfds",
                    "--config.data.groups_per_batch=32"]


def test_slurm_script_starts_one_task_per_gpu(tmp_path):
  stand_in(tmp_path, "srun", f'printf "%s\\n" "$@" > {tmp_path}/srun_args\n')
  script = os.path.join(REPO, "launch", "slurm.sbatch")
  subprocess.run(["bash", script, "--config", "configs/paper.py", "--workdir", "/shared/run"],
                 env=dict(os.environ, PATH=f"{tmp_path}:{os.environ['PATH']}"), check=True,
                 timeout=30)
  assert (tmp_path / "srun_args").read_text().splitlines() == [
      "--kill-on-bad-exit=1", "python", "-m", "promptiqa_jax.train", "--distributed=on",
      "--config", "configs/paper.py", "--workdir", "/shared/run"]
  with open(script) as f:
    directives = dict((line.split()[1].removeprefix("--") + "=").split("=")[:2]
                      for line in f if line.startswith("#SBATCH"))
  # One task per GPU, and every task sees its node's GPUs (JAX picks one by SLURM_LOCALID).
  assert directives["ntasks-per-node"] == directives["gpus-per-node"]
  assert "gpus-per-task" not in directives
  assert directives["signal"].startswith("TERM@") and "requeue" in directives
