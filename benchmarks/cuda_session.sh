#!/usr/bin/env bash
# The CUDA checks and timings issue 19 asks for (README, "GPU recipes"), in one command on a machine
# with one CUDA GPU and otclust's dependencies installed (no download; Fashion-MNIST's idx files
# in FASHION_DIR, else .fmnist in the repository, else /usr/share/datasets/fashion-mnist):
#
#     bash benchmarks/cuda_session.sh OUT_DIR
#
# Parts, run in the order PARTS lists them (default: all, in the order below); each runs under its
# own time limit so that one slow part cannot starve the rest:
#   profile   where a training step's time goes on the GPU (benchmarks/train_step.py on
#             Fashion-MNIST: CLOT with its recipe's settings in float16 autocast and float32,
#             SwAV in autocast): ms/step, the CPU time each phase takes to issue its work,
#             operators per step and by phase;
#   fmnist0   the Fashion-MNIST recipe (configs/clot-fashion-mnist.yaml, 70,000 images) with
#             mixed precision, seed 0: wall time from start to every image predicted, ACC/NMI/ARI;
#   levers    what makes that step faster on the GPU (benchmarks/step_levers.py --device cuda:
#             float32, float16 autocast, + channels-last, + torch.compile, 4x the batch, Sinkhorn
#             tested every 8 iterations; then, when fmnist0 ran in the same call, its trained
#             network's step with Sinkhorn tested every iteration and every 8);
#   readout   where the read-out's time goes on that machine (benchmarks/readout_speed.py on
#             70,000 x 256 synthetic features on the GPU, at the default threads and at 4): on the
#             first GPU machine (16 cores) the digits read-out took 3-6x longer than on 2 cores;
#   peer      side by side with lightly (benchmarks/peer_lightly.py --device cuda --amp, its
#             DataLoader with 8 workers): step and epoch images/s, time to a k-means ACC of 0.70.
#             lightly is not on the GPU machine: make its wheels here first (pure Python, after
#             `make bench-peer`): echo /.whl/ >> .git/info/exclude; .venv-bench/bin/pip wheel
#             --no-deps -w .whl lightly==1.6.0 hydra-core==1.3.8 omegaconf==2.3.1
#             antlr4-python3-runtime==4.9.3; then name .whl in the device call's carry;
#   tests     the tests that need CUDA: the Sinkhorn labels on the GPU (tests/ot/test_large.py)
#             and the GPU recipes for two steps (tests/test_gpu_recipes.py, OTCLUST_TEST_DEVICE);
#   smoke     every trained method for 30 steps on digits, read-out and predictions included (the
#             CUDA code path of each, not a score), side by side at 2 CPU threads each;
#   digits    the digits recipe, seeds 0-2, mixed precision against float32;
#   sinkhorn  SeLa's chunked Sinkhorn labelling at ImageNet size (1,280,000 x 3,000);
#   fmnist12  the Fashion-MNIST recipe, seeds 1 and 2, in whatever time is left.
# All parts take longer than one device call (10 minutes): split them over two calls issued back
# to back, e.g. PARTS="profile fmnist0 levers" then PARTS="readout peer tests smoke", the second
# while the machine is still warm. TOTAL_SECONDS (default 540) bounds each call: a part gets
# its own limit or what is left, whichever is less. DEVICE (default cuda) lets the script itself be
# tried on a machine without a GPU (DEVICE=cpu PARTS=smoke). OUT_DIR receives the CSV files and
# the smoke runs' logs; the run folders go to WORK (default: a temporary folder).
set -u
OUT=${1:?usage: bash benchmarks/cuda_session.sh OUT_DIR}
PY=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}
PARTS=${PARTS:-profile fmnist0 levers readout peer tests smoke digits sinkhorn fmnist12}
WORK=${WORK:-$(mktemp -d)}
mkdir -p "$OUT" "$WORK"
OUT=$(cd "$OUT" && pwd)
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
# The GPU machine has no Debian data sets: copy the idx files into .fmnist (ignored through
# .git/info/exclude) and name it in the device call's carry; it is used when it is there.
if [[ -z "${FASHION_DIR:-}" && -d .fmnist ]]; then FASHION_DIR=$PWD/.fmnist; fi
FASHION=fashion-mnist:${FASHION_DIR:-/usr/share/datasets/fashion-mnist}
TOTAL=${TOTAL_SECONDS:-540}

section() { echo; echo "## $* ($(date -u +%H:%M:%S), ${SECONDS}s in)"; }
# limit N: N seconds, or what is left of TOTAL less a margin, whichever is less (at least 1).
limit() { local left=$((TOTAL - SECONDS - 10)); ((left < $1)) && echo $((left > 1 ? left : 1)) || echo "$1"; }

part_profile() {
    section "profile: a training step on $DEVICE, Fashion-MNIST, batch 256"
    # CLOT with the Fashion-MNIST recipe's settings (configs/clot-fashion-mnist.yaml), SwAV with its defaults.
    local recipe="--param sinkhorn_eps=0.2 --param n_heads=5 --param cluster_weight=0.3 --param neighbors=10"
    timeout $(limit 60) $PY benchmarks/train_step.py --data "$FASHION" --methods clot $recipe --steps 20 --device "$DEVICE" --amp 2>&1 | grep -v USDT
    timeout $(limit 60) $PY benchmarks/train_step.py --data "$FASHION" --methods clot $recipe --steps 20 --device "$DEVICE" 2>&1 | grep -v USDT
    timeout $(limit 60) $PY benchmarks/train_step.py --data "$FASHION" --methods swav --steps 20 --device "$DEVICE" --amp 2>&1 | grep -v USDT
}

part_levers() {
    section "levers: the recipe's CLOT step on $DEVICE, Fashion-MNIST"
    timeout $(limit 150) $PY benchmarks/step_levers.py --data "$FASHION" --method clot --param sinkhorn_eps=0.2 --param n_heads=5 \
        --param cluster_weight=0.3 --param neighbors=10 --device "$DEVICE" --steps 10 --rounds 4 2>&1 | grep -v USDT | tail -10
    # Late in training (the network fmnist0 trained, when it ran in this call): Sinkhorn's longest
    # solves, its stopping rule tested every iteration and every 8 (sinkhorn_check_every).
    local run
    run=$(ls -d "$WORK"/fmnist0/*-seed0 2>/dev/null | head -1)
    if [ -n "$run" ]; then
        for every in 1 8; do
            timeout $(limit 60) $PY benchmarks/train_step.py --data "$FASHION" --methods clot --param sinkhorn_eps=0.2 --param n_heads=5 \
                --param cluster_weight=0.3 --param neighbors=10 --param sinkhorn_check_every=$every --weights "$run" --steps 20 \
                --device "$DEVICE" --amp 2>&1 | grep -E "^\| clot|^- clot" | sed "s/^/check_every $every: /"
        done
    fi
}

part_readout() {
    section "read-out parts, 70,000 x 256 features on $DEVICE"
    timeout $(limit 150) $PY benchmarks/readout_speed.py --samples 70000 --dim 256 --device "$DEVICE" 2>&1 | tail -9
    timeout $(limit 150) $PY benchmarks/readout_speed.py --samples 70000 --dim 256 --device "$DEVICE" --threads 4 2>&1 | tail -9
}

part_peer() {
    section "side by side with lightly (SimCLR), $DEVICE, autocast"
    local site=$WORK/peer-site
    if ls .whl/*.whl >/dev/null 2>&1; then
        $PY -m pip install -q --no-index --no-deps --no-compile --target "$site" .whl/*.whl || return
    fi
    PYTHONPATH="$site:$PYTHONPATH" timeout $(limit 240) $PY benchmarks/peer_lightly.py --data "${PEER_DATA:-$FASHION}" --device "$DEVICE" --amp \
        --workers 8 --threads 8 --target 0.70 --max-minutes 1.5 2>&1 | grep -v "^# .*epoch" | tail -16
}

part_fmnist0() {
    section "Fashion-MNIST recipe on $DEVICE (amp), seed 0"
    timeout $(limit 420) $PY benchmarks/time_to_accuracy.py --config configs/clot-fashion-mnist.yaml --data "$FASHION" --seeds 0 --target 0.75 \
        --variant "$DEVICE amp: device=$DEVICE" --csv "$OUT/fmnist.csv" --out "$WORK/fmnist0"
    echo "rc=$?"
}

part_tests() {
    section "tests that need CUDA"
    OTCLUST_TEST_DEVICE=$DEVICE timeout $(limit 120) $PY -m pytest -q -p no:cacheprovider tests/ot/test_large.py tests/test_gpu_recipes.py -k "cuda or two_steps" 2>&1 | tail -15
}

part_smoke() {
    section "smoke: every method, 30 steps on digits, $DEVICE"
    # Every trained method the registry knows (k-means on pixels has no network to put on the GPU).
    local methods method
    methods=$($PY -c "from otclust.methods import available_methods; print(' '.join(m for m in available_methods() if m != 'kmeans'))")
    for method in $methods; do
        OMP_NUM_THREADS=2 timeout $(limit 150) $PY -m otclust fit --method "$method" --data digits --clusters 10 --steps 30 --seed 0 \
            --eval-every 1000 --device "$DEVICE" --out "$WORK/smoke/$method" --no-progress >"$OUT/smoke-$method.log" 2>&1 &
    done
    wait
    for method in $methods; do
        echo "$method: $(($(grep -c . "$WORK/smoke/$method/assignments.csv" 2>/dev/null || echo 1) - 1)) images assigned," \
            "$(grep -h '^device:' "$WORK/smoke/$method/config.yaml" 2>/dev/null); $(tail -1 "$OUT/smoke-$method.log")"
    done
}

part_digits() {
    section "digits recipe on $DEVICE, seeds 0-2"
    timeout $(limit 300) $PY benchmarks/time_to_accuracy.py --config configs/clot-digits.yaml --seeds 0,1,2 --target 0.97 \
        --variant "$DEVICE amp: device=$DEVICE" --variant "$DEVICE float32: device=$DEVICE amp=false" --csv "$OUT/digits.csv"
    echo "rc=$?"
}

part_sinkhorn() {
    section "chunked Sinkhorn labels, 1,280,000 x 3,000, $DEVICE"
    timeout $(limit 120) $PY benchmarks/sinkhorn_large.py --devices "$DEVICE" --sizes 1280000x3000 --threads 8 2>&1 | tail -6
}

part_fmnist12() {
    section "Fashion-MNIST recipe on $DEVICE (amp), seeds 1-2"
    timeout $(limit 3600) $PY benchmarks/time_to_accuracy.py --config configs/clot-fashion-mnist.yaml --data "$FASHION" --seeds 1,2 --target 0.75 \
        --variant "$DEVICE amp: device=$DEVICE" --csv "$OUT/fmnist.csv"
    echo "rc=$?"
}

section "machine"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
$PY -c "import torch, os; print('torch', torch.__version__, 'CUDA', torch.version.cuda, torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU', os.cpu_count(), 'CPUs')"
for part in $PARTS; do
    if declare -F "part_$part" >/dev/null; then
        "part_$part"
    else
        echo "unknown part '$part' (parts: profile fmnist0 levers readout peer tests smoke digits sinkhorn fmnist12)"
    fi
done
section "done"
