#!/usr/bin/env bash
# The CUDA checks and timings issue 19 asks for (README, "GPU recipes"), in one command on a machine
# with one CUDA GPU and otclust's dependencies installed (no download; Fashion-MNIST's idx files
# in /usr/share/datasets/fashion-mnist or FASHION_DIR):
#
#     bash benchmarks/cuda_session.sh OUT_DIR
#
# In order of what matters most, each part under its own time limit so that one slow part cannot
# starve the rest:
#   1. the Fashion-MNIST recipe (configs/clot-fashion-mnist.yaml, 70,000 images) on CUDA with mixed
#      precision, seed 0: wall time from start to every image predicted, ACC/NMI/ARI;
#   2. the digits recipe on CUDA, seeds 0-2, mixed precision against float32;
#   3. every method for 30 steps on digits on CUDA (the CUDA code path of each, not a score);
#   4. the tests that need CUDA: the Sinkhorn labels on the GPU (tests/ot/test_large.py) and the
#      GPU recipes for two steps (tests/test_gpu_recipes.py with OTCLUST_TEST_DEVICE=cuda);
#   5. SeLa's chunked Sinkhorn labelling at ImageNet size (1,280,000 x 3,000) on the GPU;
#   6. the Fashion-MNIST recipe, seeds 1 and 2, in whatever time is left.
# Timed parts run alone on the GPU; the smoke runs of part 3 run side by side. TOTAL_SECONDS
# (default 3600) bounds the whole: a part gets its own limit or what is left, whichever is less.
set -u
OUT=${1:?usage: bash benchmarks/cuda_session.sh OUT_DIR}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
FASHION=${FASHION_DIR:-/usr/share/datasets/fashion-mnist}

TOTAL=${TOTAL_SECONDS:-3600}

section() { echo; echo "## $* ($(date -u +%H:%M:%S), ${SECONDS}s in)"; }
# limit N: N seconds, or what is left of TOTAL less a margin, whichever is less (at least 1).
limit() { local left=$((TOTAL - SECONDS - 10)); ((left < $1)) && echo $((left > 1 ? left : 1)) || echo "$1"; }

section "machine"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
$PY -c "import torch, os; print('torch', torch.__version__, 'CUDA', torch.version.cuda, torch.cuda.get_device_name(), os.cpu_count(), 'CPUs')"

section "1. Fashion-MNIST recipe on CUDA (amp), seed 0"
timeout $(limit 240) $PY benchmarks/time_to_accuracy.py --config configs/clot-fashion-mnist.yaml --seeds 0 --target 0.75 \
    --variant "cuda amp: device=cuda data=fashion-mnist:$FASHION" --csv "$OUT/fmnist.csv"
echo "rc=$?"

section "2. digits recipe on CUDA, seeds 0-2"
timeout $(limit 150) $PY benchmarks/time_to_accuracy.py --config configs/clot-digits.yaml --seeds 0,1,2 --target 0.97 \
    --variant "cuda amp: device=cuda" --variant "cuda float32: device=cuda amp=false" --csv "$OUT/digits.csv"
echo "rc=$?"

section "3. every method, 30 steps on digits, CUDA"
# Every trained method the registry knows (k-means on pixels has no network to put on the GPU).
METHODS=$($PY -c "from otclust.methods import available_methods; print(' '.join(m for m in available_methods() if m != 'kmeans'))")
for method in $METHODS; do
    timeout $(limit 90) $PY -m otclust fit --method "$method" --data digits --clusters 10 --steps 30 --seed 0 \
        --device cuda --out "$OUT/smoke/$method" --no-progress >"$OUT/smoke-$method.log" 2>&1 &
done
wait
for method in $METHODS; do
    device=$(grep -h '^device:' "$OUT/smoke/$method/config.yaml" 2>/dev/null)
    echo "$method: $(grep -c . "$OUT/smoke/$method/assignments.csv" 2>/dev/null) lines of assignments, $device;" \
        "$(tail -1 "$OUT/smoke-$method.log")"
done

section "4. tests that need CUDA"
OTCLUST_TEST_DEVICE=cuda timeout $(limit 120) $PY -m pytest -q -p no:cacheprovider tests/ot/test_large.py tests/test_gpu_recipes.py -k "cuda or two_steps" 2>&1 | tail -15

section "5. chunked Sinkhorn labels, 1,280,000 x 3,000, CUDA"
timeout $(limit 90) $PY benchmarks/sinkhorn_large.py --devices cuda --sizes 1280000x3000 --threads 8 2>&1 | tail -6

section "6. Fashion-MNIST recipe on CUDA (amp), seeds 1-2"
timeout $(limit 3600) $PY benchmarks/time_to_accuracy.py --config configs/clot-fashion-mnist.yaml --seeds 1,2 --target 0.75 \
    --variant "cuda amp: device=cuda data=fashion-mnist:$FASHION" --csv "$OUT/fmnist.csv"
echo "rc=$?"
section "done"
