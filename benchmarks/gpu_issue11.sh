#!/usr/bin/env bash
# Issue 11's GPU rows in one prepared device call (a lent GPU session has 15 minutes in all).
#
#   bash benchmarks/gpu_issue11.sh            # on the GPU machine; logs to $OUT (default gpu-out)
#   DEVICE=cpu QUICK=--quick bash benchmarks/gpu_issue11.sh   # dry run of the script on a CPU
#
# In order, each under its own time limit so one slow part cannot eat the others:
#   1. tests/test_cuda.py (numbers on CUDA; the batched rebuild never synchronises the host)
#   2. dctps bench step: ResNet18 step, dense vs DCTpS auto vs DCTpS batched, with operator counts
#   3. benchmarks/step_cudagraph.py: eager vs CUDA graph, dense / auto / dense-mode / batched
#   4. benchmarks/train_throughput.py: images/s of real training epochs (batched DCTpS on CUDA)
#   5. dctps bench conv, linear, memory: the per-layer tables of RESULTS.md
#   6. step_cudagraph.py --compile: dense vs DCTpS under torch.compile (last: compiling takes minutes)
set -u
OUT=${OUT:-gpu-out}
DEVICE=${DEVICE:-cuda}
QUICK=${QUICK:-}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
start=$(date +%s)
stamp() { echo "[$(( $(date +%s) - start )) s] $*"; }
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1
$PY -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU')" | tee "$OUT/env.txt"

stamp "test_cuda"
timeout 120 $PY -m pytest -q -p no:cacheprovider tests/test_cuda.py > "$OUT/test_cuda.log" 2>&1
stamp "test_cuda exit $?"; tail -1 "$OUT/test_cuda.log"

stamp "bench step"
timeout 150 $PY -m dctps.cli bench step --device "$DEVICE" $QUICK > "$OUT/bench_step.log" 2>&1
stamp "bench step exit $?"; cat "$OUT/bench_step.log"

stamp "step_cudagraph"
if [ -n "$QUICK" ]; then GRAPH_ARGS="--batch 32 --reps 2 --steps 2"; else GRAPH_ARGS="--batch 128 --reps 5 --steps 20"; fi
timeout 150 $PY benchmarks/step_cudagraph.py $GRAPH_ARGS > "$OUT/step_cudagraph.log" 2>&1
stamp "step_cudagraph exit $?"; cat "$OUT/step_cudagraph.log"

stamp "train_throughput"
if [ -n "$QUICK" ]; then TP_ARGS="--lenet-images 512 --resnet-images 128 --repeats 1"; else TP_ARGS="--lenet-images 20000 --resnet-images 12800 --repeats 2"; fi
timeout 200 $PY benchmarks/train_throughput.py --device "$DEVICE" $TP_ARGS > "$OUT/train_throughput.log" 2>&1
stamp "train_throughput exit $?"; cat "$OUT/train_throughput.log"

for b in conv linear memory; do
  stamp "bench $b"
  timeout 120 $PY -m dctps.cli bench "$b" --device "$DEVICE" $QUICK > "$OUT/bench_$b.log" 2>&1
  stamp "bench $b exit $?"; tail -4 "$OUT/bench_$b.log"
done
stamp "step_cudagraph --compile"
if [ -n "$QUICK" ]; then COMPILE_ARGS="--model lenet5 --batch 8 --reps 2 --steps 2"; else COMPILE_ARGS="--batch 128 --reps 5 --steps 20"; fi
timeout 240 $PY benchmarks/step_cudagraph.py $COMPILE_ARGS --compile > "$OUT/step_compile.log" 2>&1
stamp "step_cudagraph --compile exit $?"; cat "$OUT/step_compile.log"
stamp "done"
