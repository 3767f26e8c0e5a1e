#!/usr/bin/env bash
# The training program on every worker of a Cloud TPU pod slice, one process per TPU VM.
#
#   TPU_NAME=my-v4-32 ZONE=us-central2-b launch/tpu_pod.sh --config configs/paper.py \
#       --workdir /mnt/shared/promptiqa --config.data.data_dir=/mnt/shared/tensorflow_datasets \
#       --config.init.pretrained_vit=/mnt/shared/ViT-B_8_augreg.npz
#
# Each worker needs this repository at $REPO_DIR (default: ~/promptiqa_jax) with the package
# installed, and the data, the pretrained weights and the workdir at the same paths on a shared
# filesystem (NFS, a gcsfuse mount): every process writes its part of each checkpoint there.
# --distributed=on makes each process call jax.distributed.initialize(), which finds the others
# through the TPU VM metadata. config.data.groups_per_batch is global (a multiple of the chips).
# Optional: PROJECT (gcloud project), REPO_DIR, PYTHON (default python3 on the workers).
# Stopping this script does not stop the workers; run `pkill -TERM -f promptiqa_jax.train` through
# the same ssh to have them save a checkpoint and exit.
set -euo pipefail

: "${TPU_NAME:?set TPU_NAME to the name of the pod slice}"
: "${ZONE:?set ZONE to the zone of the pod slice}"
repo_dir=${REPO_DIR:-"~/promptiqa_jax"}
remote="cd $repo_dir && ${PYTHON:-python3} -m promptiqa_jax.train --distributed=on"
remote+=" $(printf '%q ' "$@")"

gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" ${PROJECT:+--project="$PROJECT"} \
  --worker=all --command="$remote"
