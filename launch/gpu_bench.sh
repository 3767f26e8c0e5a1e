#!/usr/bin/env bash
# The whole GPU measurement of the paper model, JAX beside PyTorch, in one short call (~5 min on
# one H100, at most ~10; the compiles are most of it). From the repository root:
#
#   launch/gpu_bench.sh [OUT_DIR]        # default: $OUT, else ./gpu_bench
#
# Needs jax with CUDA, flax, optax, orbax-checkpoint, torch and ml_collections; wheels found in
# .whl/ (e.g. `pip download --no-deps ml_collections==1.1.0 -d .whl`) are installed first, for
# machines without a package index. Writes one JSON report and one log per run into OUT_DIR and
# prints every run's tables last. The input stream is host work and is measured on CPUs (`--what
# input`), not here. Each run has its own time limit, so one that fails or hangs (say the cuDNN
# attention on an unsupported cuDNN) costs only itself.
#
#   f32        JAX (TF32 matmuls, its default) vs PyTorch eager (set to TF32 likewise): scoring
#              with a cached prompt at batch 1 and 32, prompt encoding, a training step of 1 group
#              of 11 images, and the per-component profile
#   bf16       JAX bfloat16 vs PyTorch autocast(bfloat16): scoring at 32, training step 1 x 11
#   cudnn      as bf16, JAX only, with cuDNN's fused attention in the ViT and the fusion block
#   b44        JAX bfloat16 training step at the reference's per-step batch (4 groups of 11), and
#   b44_remat  the same with rematerialisation: memory against time
#   compile    PyTorch torch.compile (float32 and autocast) scoring at 32
set -uo pipefail

out=${1:-${OUT:-gpu_bench}}
mkdir -p "$out"
python=${PYTHON:-python3}
if compgen -G ".whl/*.whl" >/dev/null; then
  "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/gpu_bench_site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/gpu_bench_site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-} PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm \
  --format=csv | tee "$out/nvidia_smi.csv"

# JAX and PyTorch share the GPU in one process: JAX reserves a part up front, PyTorch allocates
# from the rest. Runs without PyTorch give JAX most of the memory.
run() {  # NAME LIMIT_S MEM_FRACTION BENCH_ARGS...
  local name=$1 limit=$2 fraction=$3
  shift 3
  echo "=== $name: $*"
  XLA_PYTHON_CLIENT_MEM_FRACTION=$fraction timeout --signal=TERM --kill-after=10 "$limit" \
    "$python" -m promptiqa_jax.cli bench --config configs/paper.py --json "$out/$name.json" "$@" \
    >"$out/$name.log" 2>&1
  echo "=== $name: exit $?"
  grep -E "^jax/|^torch/" "$out/$name.log" || tail -5 "$out/$name.log"
}

common=(--warmup 3 --repeats 10 --groups 1 --group-size 11)
run f32 170 0.45 "${common[@]}" --what infer,prompt,train,profile --batch-sizes 1,32 \
  --compare torch --torch-variants eager
run bf16 100 0.45 "${common[@]}" --dtype bfloat16 --what infer,train --batch-sizes 32 \
  --compare torch --torch-variants autocast
run cudnn 70 0.9 "${common[@]}" --dtype bfloat16 --attention cudnn --what infer,train \
  --batch-sizes 32
run b44 70 0.9 --warmup 2 --repeats 5 --dtype bfloat16 --what train --groups 4 --group-size 11
run b44_remat 70 0.9 --warmup 2 --repeats 5 --dtype bfloat16 --remat --what train --groups 4 \
  --group-size 11
run compile 110 0.45 --warmup 3 --repeats 10 --what infer --batch-sizes 32 --compare torch \
  --torch-variants compile,compile_autocast

for name in f32 bf16 cudnn b44 b44_remat compile; do
  echo
  echo "## $name"
  sed -n '/^device: /,$p' "$out/$name.log"
done
