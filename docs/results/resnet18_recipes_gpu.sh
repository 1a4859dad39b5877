#!/usr/bin/env bash
# ResNet18 / CIFAR-10 on a lent GPU: the paper's Adam recipe for dense, DCTpS and SynFlow at 1%,
# 0.1%, 0.01% (docs/results/resnet18_cifar10_gpu_adam.yaml), and DCTpS at 0.1% with SGD at lr 0.1
# (docs/results/resnet18_cifar10_gpu_sgd01.yaml): 8 runs sharing one GPU, inside one device call.
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
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}        # DEVICE=cpu EXTRA="--epochs 1" for a dry run without a GPU
EXTRA=${EXTRA:-}
RES=${RES:-/tmp/dctps-res}
DATA=${DATA:-/tmp/dctps-data}
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1
$PY -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU')"
$PY scripts/cifar_webp.py unpack "$PACK" "$DATA" || exit 1
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
$PY -m dctps.cli results --db "$RES" --csv "$OUT/resnet18_cifar10_gpu_recipes.csv"
$PY - "$OUT" "$RES" <<'PYEOF'
import sqlite3, sys
src = sqlite3.connect(f"{sys.argv[2]}/results.db")
dst = sqlite3.connect(f"{sys.argv[1]}/resnet18_cifar10_gpu_recipes.db")
src.backup(dst)
dst.close()
PYEOF
tail -n 3 "$OUT"/sweep-*.log
