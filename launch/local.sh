#!/usr/bin/env bash
# N training processes on this machine, joined by jax.distributed (collectives over gloo on CPU).
#
#   launch/local.sh N --config configs/synthetic.py:smoke --workdir /tmp/smoke [--config.x=y ...]
#
# Every process runs `python -m promptiqa_jax.train` with the same arguments plus its place in the
# job; process 0 listens on a free local port (or $PORT). Each process sees every local device, so
# on a CPU-only machine N processes give a mesh of N devices. If one process fails the others are
# stopped (they would wait for it in the next collective), and the script exits with its status.
# SIGTERM and SIGINT reach every process as SIGTERM: each saves a checkpoint and exits.
set -euo pipefail  # needs bash >= 5.1 (wait -n -p)

if [[ $# -lt 1 || ! "$1" =~ ^[1-9][0-9]*$ ]]; then
  echo "usage: $0 NUM_PROCESSES --config CONFIG --workdir DIR [overrides...]" >&2
  exit 2
fi
num_processes=$1
shift
python=${PYTHON:-python}
free_port='import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
port=${PORT:-$("$python" -c "$free_port")}

pids=()
forward() { ((${#pids[@]})) && kill -s "$1" "${pids[@]}" 2>/dev/null || true; }
# Background processes of a script ignore SIGINT, so Ctrl-C becomes the SIGTERM they act on.
trap 'forward TERM' TERM INT
for ((i = 0; i < num_processes; i++)); do
  "$python" -m promptiqa_jax.train "$@" --coordinator_address="127.0.0.1:$port" \
    --num_processes="$num_processes" --process_id="$i" &
  pids+=($!)
done

remaining=$num_processes
while ((remaining > 0)); do
  finished=""
  status=0
  wait -n -p finished || status=$?
  if [[ -z "${finished:-}" ]]; then
    continue  # `wait` was interrupted by a forwarded signal; no process has ended yet
  fi
  if ((status != 0)); then
    echo "$0: training process (pid $finished) exited with status $status; stopping the others" >&2
    forward KILL
    wait || true
    exit "$status"
  fi
  remaining=$((remaining - 1))
done
