"""Programs started by the tests in processes of their own: a free port, a start with a log file,
and a wait that fails with the end of that log."""
from __future__ import annotations

import os
import socket
import subprocess

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def start(args: list[str], env: dict[str, str], log: str) -> subprocess.Popen:
  """`args` run from the repository root, stdout and stderr into the file `log`."""
  with open(log, "w") as out:
    return subprocess.Popen(args, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)


def finish(process: subprocess.Popen, log: str, timeout_s: float = 600) -> None:
  """Waits for `process`; fails with the end of its log unless it exited with 0."""
  status = process.wait(timeout=timeout_s)
  if status != 0:
    with open(log) as f:
      pytest.fail(f"{process.args[:4]} exited with {status}:\n{f.read()[-4000:]}")
