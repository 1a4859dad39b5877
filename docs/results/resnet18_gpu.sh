#!/usr/bin/env bash
# Issue 7 on a lent GPU machine: ResNet18 / CIFAR-10 at 1%, 0.1%, 0.01% (dense, DCTpS, SynFlow,
# random) from docs/results/resnet18_cifar10_gpu.yaml, and issue 10's ResNet18 offsets grid
# (docs/results/offsets-resnet18-gpu.yaml), inside one device call.
#
#   bash docs/results/resnet18_gpu.sh [PACK] [LIMIT_S] [WORKERS]
#
# PACK (default .devdata/cifar10_24k.npz) comes from scripts/cifar_webp.py. Runs share the GPU
# (WORKERS at a time); after LIMIT_S seconds the sweep is stopped so that whatever finished is
# still exported. Writes to $OUT (default ./gpu-out): sweep.log, results CSV, a one-file copy of
# the results database, test_cuda.log and nvidia-smi.txt.
set -u
PACK=${1:-.devdata/cifar10_24k.npz}
LIMIT=${2:-420}
WORKERS=${3:-5}
. docs/results/gpu_common.sh
gpu_setup "$PACK" || exit 1
# The CUDA tests run beside the sweep (they check numbers, not speed).
$PY -m pytest -q -p no:cacheprovider tests/test_cuda.py > "$OUT/test_cuda.log" 2>&1 &
start=$(date +%s)
# Both grids share one store; the offsets grid gets fewer workers so the main grid goes first.
timeout "$LIMIT" $PY -m dctps.cli sweep docs/results/resnet18_cifar10_gpu.yaml \
  --data-root "$DATA" --out "$RES" --workers "$WORKERS" --device "$DEVICE" -q $EXTRA \
  > "$OUT/sweep.log" 2>&1 &
sleep 20  # let the main grid claim its runs first
timeout "$LIMIT" $PY -m dctps.cli sweep docs/results/offsets-resnet18-gpu.yaml \
  --data-root "$DATA" --out "$RES" --workers 3 --device "$DEVICE" -q $EXTRA \
  > "$OUT/sweep-offsets.log" 2>&1
echo "offsets sweep exit $? after $(( $(date +%s) - start )) s"
wait
echo "all sweeps ended after $(( $(date +%s) - start )) s"
gpu_export resnet18_cifar10_gpu
tail -3 "$OUT/test_cuda.log"
