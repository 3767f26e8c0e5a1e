#!/usr/bin/env bash
# The training program on every worker of a Cloud TPU pod slice, one process per TPU VM.
#
#   TPU_NAME=my-v4-32 ZONE=us-central2-b launch/tpu_pod.sh --config configs/paper.py \
#       --workdir gs://my-bucket/runs/paper --config.data.data_dir=gs://my-bucket/tfds \
#       --config.init.pretrained_vit=gs://my-bucket/ViT-B_8_augreg.npz \
#       --config.train.compilation_cache_dir=gs://my-bucket/jax_cache
#
# Each worker needs this repository at $REPO_DIR (default: ~/promptiqa_jax) with the package and
# its [train] extra installed (gcsfs reaches gs:// with the TPU VM's service account). The workdir,
# the data_dir and the weights are gs:// paths every worker reads (or paths on a shared filesystem,
# NFS, the same on every worker): every process writes its part of each checkpoint into the
# workdir, and mirrors the datasets it reads to its local disk (config.data.local_cache_dir;
# build them into the bucket with `promptiqa-jax prepare NAME --data-dir gs://...`). TensorBoard
# reads gs://my-bucket/runs/paper/tensorboard. --distributed=on makes each process call
# jax.distributed.initialize(), which finds the others through the TPU VM metadata.
# config.data.groups_per_batch is global (a multiple of the chips).
# Optional: PROJECT (gcloud project), REPO_DIR, PYTHON (default python3 on the workers).
# A preempted or stopped worker gets SIGTERM, and every worker then saves one checkpoint after the
# same step and exits; the same command resumes. Stopping this script does not stop the workers;
# run `pkill -TERM -f promptiqa_jax.train` through the same ssh for that.
set -euo pipefail

: "${TPU_NAME:?set TPU_NAME to the name of the pod slice}"
: "${ZONE:?set ZONE to the zone of the pod slice}"
repo_dir=${REPO_DIR:-"~/promptiqa_jax"}
remote="cd $repo_dir && ${PYTHON:-python3} -m promptiqa_jax.train --distributed=on"
remote+=" $(printf '%q ' "$@")"

gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" ${PROJECT:+--project="$PROJECT"} \
  --worker=all --command="$remote"
