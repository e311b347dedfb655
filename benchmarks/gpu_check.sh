#!/usr/bin/env bash
# One short device session: CUDA tests against the CPU reference, then timings on the GPU.
# Run from the repo root with MNIST under build/data (carried): see README, "Benchmarks".
set -u
export PYTHONUNBUFFERED=1  # python3 -m (pytest, ticketsearch) run from the repo root import it from there
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, sys; print('torch', torch.__version__, 'python', sys.version.split()[0])"
python3 -m pytest tests/gpu -q -p no:cacheprovider 2>&1 | tee "$OUT/gpu_tests.log"
for dev in cuda cpu; do
  rm -rf /tmp/olt_$dev
  /usr/bin/time -f "%e s wall ($dev)" python3 -m ticketsearch find --method imp --dataset mnist --data-root build/data \
    --rounds 1 --budget 2ep --batch-size 128 --optimizer sgd --lr 0.1 --val-size 0 --eval-every 1ep \
    --scope global --output-rate 0 --no-progress --root /tmp/olt_$dev --device $dev 2>&1 | tee "$OUT/olt_$dev.log"
done
