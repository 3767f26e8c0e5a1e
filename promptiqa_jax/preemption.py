"""When a preempted run stops: after a step every process completes, so that each saves its part
of one complete checkpoint.

Multi-process runs use JAX's preemption sync manager, which `jax.distributed.initialize` starts (the
one orbax's `reached_preemption` asks): it catches SIGTERM in every process, passes a notice from
any process to all through the coordination service, and agrees in the background on a step (the
furthest any process has reached, plus one). Each step asks it locally: no collective per step. A
single process catches SIGTERM itself.
"""
from __future__ import annotations

import signal

import jax
from absl import logging
from jax.experimental import multihost_utils


class StopSignal:
  """`reached(step)`: True at the step where every process stops for a SIGTERM (on any of them).

  Create it before the first step of the loop, with the step the state holds.
  """

  def __init__(self, start_step: int):
    self.requested = False
    self._previous = None
    self._synced = jax.process_count() > 1
    if self._synced:
      try:
        # Tells the sync manager where this process's count starts, so that a notice before the
        # first step agrees on the step after `start_step`, not on one the run left behind.
        multihost_utils.reached_preemption_sync_point(start_step)
      except RuntimeError as err:  # jax_enable_preemption_service is off
        logging.warning("%s: SIGTERM will end the processes without a checkpoint", err)
    else:
      self._previous = signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame):
    del signum, frame
    logging.warning("SIGTERM received: saving a checkpoint and exiting")
    self.requested = True

  def reached(self, step: int) -> bool:
    """Whether to save and stop after `step`; the same answer on every process."""
    if not self._synced:
      return self.requested
    try:
      return multihost_utils.reached_preemption_sync_point(step)
    except RuntimeError:
      return False

  def close(self) -> None:
    """Gives SIGTERM back to the handler it had (train_and_evaluate may run in a notebook)."""
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
      self._previous = None
