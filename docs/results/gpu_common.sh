# Sourced by the docs/results/*_gpu.sh scripts that train on a lent GPU machine:
#   gpu_setup PACK   the environment, nvidia-smi.txt, torch's line, the pack unpacked to $DATA
#   gpu_export NAME  the store at $RES to $OUT/NAME.csv and a one-file copy $OUT/NAME.db
# Both read OUT, RES, DATA and PYTHON from the environment (defaults below).
OUT=${OUT:-gpu-out}
RES=${RES:-/tmp/dctps-res}      # the sweeps' --out (results.db, runs/)
DATA=${DATA:-/tmp/dctps-data}   # where the pack is unpacked
PY=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}          # DEVICE=cpu EXTRA="--epochs 1" for a dry run without a GPU
EXTRA=${EXTRA:-}
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1

gpu_setup() {
  mkdir -p "$OUT"
  nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1
  $PY -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU')"
  $PY scripts/cifar_webp.py unpack "$1" "$DATA"
}

gpu_export() {
  $PY -m dctps.cli results --db "$RES" --csv "$OUT/$1.csv"
  $PY - "$RES/results.db" "$OUT/$1.db" <<'PYEOF'
import sqlite3, sys
src = sqlite3.connect(sys.argv[1])
dst = sqlite3.connect(sys.argv[2])
src.backup(dst)
dst.close()
PYEOF
}
