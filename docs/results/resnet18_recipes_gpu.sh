#!/usr/bin/env bash
# ResNet18 / CIFAR-10 on a lent GPU: the paper's Adam recipe for dense, DCTpS and SynFlow at 1%,
# 0.1%, 0.01% (docs/results/resnet18_cifar10_gpu_adam.yaml), and DCTpS at 0.1% with SGD at lr 0.1
# (docs/results/resnet18_cifar10_gpu_sgd01.yaml): 15 runs sharing one GPU (session 17 ran them in
# two device calls: the second resumed the store the first left on the machine).
#
#   bash docs/results/resnet18_recipes_gpu.sh [PACK] [LIMIT_S]
#
# PACK (default .devdata/cifar10_24k.npz) comes from scripts/cifar_webp.py, as for
# docs/results/resnet18_gpu.sh. After LIMIT_S seconds the sweeps are stopped (a run stopped so
# records where it stopped, and the same command resumes it), and whatever finished is exported
# to $OUT (default ./gpu-out): the sweeps' logs, the results CSV, a one-file copy of the database.
set -u
PACK=${1:-.devdata/cifar10_24k.npz}
LIMIT=${2:-420}
. docs/results/gpu_common.sh
gpu_setup "$PACK" || exit 1
start=$(date +%s)
timeout "$LIMIT" $PY -m dctps.cli sweep docs/results/resnet18_cifar10_gpu_adam.yaml \
  --data-root "$DATA" --out "$RES" --workers 7 --device "$DEVICE" -q $EXTRA \
  > "$OUT/sweep-adam.log" 2>&1 &
timeout "$LIMIT" $PY -m dctps.cli sweep docs/results/resnet18_cifar10_gpu_sgd01.yaml \
  --data-root "$DATA" --out "$RES" --workers 1 --device "$DEVICE" -q $EXTRA \
  > "$OUT/sweep-sgd01.log" 2>&1
echo "sgd01 sweep exit $? after $(( $(date +%s) - start )) s"
wait
echo "all sweeps ended after $(( $(date +%s) - start )) s"
gpu_export resnet18_cifar10_gpu_recipes
tail -n 3 "$OUT"/sweep-*.log
