#!/usr/bin/env bash
# The one device check (an H100/H200, under 8 minutes): install the project, run the GPU tests and the
# kernel tests on CUDA, then benchmarks/speed.py; every log and result lands under $OUT (8 files at most).
#
#   OUT=/some/dir bash benchmarks/gpu_check.sh        # from the repository root
#
# Results to commit afterwards: $OUT/speed/cuda.{json,md} -> benchmarks/results/speed/ (and a line in
# benchmarks/results/README.md); $OUT/gpu_tests.log -> benchmarks/gpu_logs/gpu_tests_<gpu>.log. Only with
# that log committed and passing may `--backend auto` take Triton on CUDA (set AUTO_TRITON_ON_CUDA in
# ticketsearch/sparse/layers.py; tests/test_triton_backend.py checks the two agree), and only then may the
# README call the CUDA tests measured. With MNIST under build/data (carried), it also times the open_lth-sized
# experiment (`find --method imp`, 2 epochs) on the GPU (with --graph, then eager steps) and on the CPU
# (appended to speed.log). It also times a 4096x4096 fp16 Linear with a 2:4 weight, dense vs
# torch.sparse.to_sparse_semi_structured (the path load_ticket takes on CUDA): $OUT/export_patterns/cuda.
# {json,md} -> benchmarks/results/export_patterns/ (its log is appended to speed.log; the install log goes
# into env.txt: 8 files at most come back).
set -u
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
PY=${PY:-python3}
T0=$(date +%s)
stage() { echo "== $1 ($(( $(date +%s) - T0 )) s)"; }

stage env
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  $PY -c "import sys, torch, triton; print('python', sys.version.split()[0], 'torch', torch.__version__, 'triton', triton.__version__, 'cuda', torch.cuda.is_available())"
} 2>&1 | tee "$OUT/env.txt"

# no network on the device machine: install without dependencies (the image holds torch, numpy,
# scikit-learn, safetensors, tqdm, pytest); if that fails, `python -m` from the repo root still imports it
stage install
$PY -m pip install -q --no-deps --no-build-isolation -e . >>"$OUT/env.txt" 2>&1 \
  || echo "install failed (its output is above): running from the source tree" | tee -a "$OUT/env.txt"

# the gpu-marked tests (CUDA vs CPU, Triton kernels in fp32 and bf16, auto backend, population, the
# CUDA-graph step against the eager step: test_graphs.py)
stage "gpu tests"
timeout 200 $PY -m pytest -q -p no:cacheprovider -m gpu tests/gpu 2>&1 | tee "$OUT/gpu_tests.log"

# the oracle tests of every kernel, which run on CUDA where it is present (no C++ build: that is CPU-only)
stage "kernel tests on cuda"
TICKETSEARCH_NO_EXT=1 timeout 110 $PY -m pytest -q -p no:cacheprovider -x \
  tests/test_triton.py tests/test_triton_supermask.py tests/test_triton_backend.py tests/test_kernels.py \
  tests/test_population.py 2>&1 | tee "$OUT/kernel_tests.log"

# issue 12's benchmark: four models, every path, K = 128 population, ratios from one run
stage "speed benchmark"
timeout 200 $PY -m benchmarks.speed --device cuda --rounds 3 --repeats 20 --results-dir "$OUT" 2>&1 \
  | tee "$OUT/speed.log"

# issue 22: a 2:4 fp16 Linear on the sparse tensor cores vs dense, batch 64 and 1024
stage "2:4 semi-structured vs dense"
timeout 60 $PY -m benchmarks.export_patterns --device cuda --rounds 5 --results-dir "$OUT" 2>&1 \
  | tee -a "$OUT/speed.log"

if [ -d build/data/mnist ]; then
  stage "open_lth-sized find (cuda, cpu)"
  for run in cuda cuda_nograph cpu; do
    rm -rf "/tmp/olt_$run"
    extra=""; [ "$run" = cuda ] && extra="--graph"
    /usr/bin/time -f "%e s wall ($run)" timeout 60 $PY -m ticketsearch find --method imp --dataset mnist \
      --data-root build/data --rounds 1 --budget 2ep --batch-size 128 --optimizer sgd --lr 0.1 --val-size 0 \
      --eval-every 1ep --scope global --output-rate 0 --no-progress --root "/tmp/olt_$run" \
      --device "${run%_nograph}" $extra
    $PY -c "import glob, json, sys
for p in sorted(glob.glob(sys.argv[1] + '/**/result.json', recursive=True)):
    r = json.load(open(p)); print(p.split('/')[-2], 'graph', r.get('graph'), r.get('eager_reason'), 'test_acc', r.get('test_acc'))" "/tmp/olt_$run"
  done 2>&1 | tee -a "$OUT/speed.log"
fi
stage done
