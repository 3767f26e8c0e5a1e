"""The multi-process start the programs (train, evaluate) share: their flags and
`jax.distributed.initialize`.

Importing this module defines no flags: a program calls `define_flags()` (and adopts them as its
own with `flags.adopt_module_key_flags`, so that --help lists them).
"""
from __future__ import annotations

import os

import jax
from absl import flags, logging

MODES = ("auto", "on", "off")


def define_flags() -> None:
  """Defines --coordinator_address, --num_processes, --process_id and --distributed."""
  flags.DEFINE_string("coordinator_address", None,
                      "host:port of process 0, for multi-process runs without a cluster manager "
                      "(TPU pods and SLURM need none)")
  flags.DEFINE_integer("num_processes", None, "processes in the job")
  flags.DEFINE_integer("process_id", None, "this process's index")
  flags.DEFINE_enum(
      "distributed", "auto", list(MODES),
      "whether to call jax.distributed.initialize(): 'on' always, JAX finding the job itself (TPU "
      "pod slices through the VM metadata, SLURM, Open MPI); 'auto' with --coordinator_address, "
      "inside a SLURM step of several tasks or a GKE TPU job; 'off' never")


def _launched_as_a_job() -> bool:
  """Whether the environment shows a job of several processes that JAX can join by itself."""
  # A TPU VM shows nothing in its environment (JAX asks the metadata server), hence 'on' for pods.
  # SLURM_JOB_ID alone is no sign of several processes: it is also set in an sbatch script's body.
  return (int(os.environ.get("SLURM_STEP_NUM_TASKS", "1")) > 1
          or "TPU_WORKER_HOSTNAMES" in os.environ or "MEGASCALE_COORDINATOR_ADDRESS" in os.environ)


def initialize(mode: str = "auto", coordinator_address: str | None = None,
               num_processes: int | None = None, process_id: int | None = None) -> None:
  """jax.distributed for multi-process runs: an explicit coordinator, or the job JAX detects.

  `mode` is --distributed's value (see `define_flags`). Logs the devices and this process's place.
  """
  if mode not in MODES:
    raise ValueError(f"distributed mode must be one of {MODES}, got {mode!r}")
  if mode != "off" and coordinator_address:
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes, process_id=process_id)
  elif mode == "on" or (mode == "auto" and _launched_as_a_job()):
    jax.distributed.initialize()
  logging.warning("devices: %s; process %d of %d", jax.devices(), jax.process_index(),
                  jax.process_count())


def initialize_from_flags() -> None:
  """`initialize` with the values of the flags `define_flags` defined."""
  values = flags.FLAGS
  initialize(values.distributed, values.coordinator_address, values.num_processes,
             values.process_id)
