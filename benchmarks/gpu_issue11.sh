#!/usr/bin/env bash
# Issue 11's GPU rows in one prepared device call (a lent GPU session has 15 minutes in all).
#
#   bash benchmarks/gpu_issue11.sh            # on the GPU machine; logs to $OUT (default gpu-out)
#   DEVICE=cpu QUICK=--quick bash benchmarks/gpu_issue11.sh   # dry run of the script on a CPU
#   PARTS="step graph" bash benchmarks/gpu_issue11.sh          # only some parts
#   PARTS="tests kernels layer conv" bash benchmarks/gpu_issue11.sh    # (b)'s rows: the kernels' tests,
#                                 the kernels alone, a lone conv per rebuild, the per-layer table
#
# Parts, most important first, each under its own time limit so one slow part cannot eat the
# others (about 7 minutes in all on an H100):
#   tests    tests/test_cuda.py and tests/test_triton_rebuild.py (numbers on CUDA; the kernels; the batched rebuild never synchronises the host;
#            a CUDA-graph replay equals eager) and the pruning collapse check on the model's device
#   kernels  benchmarks/rebuild_kernels.py: the Triton rebuild alone against a copy of the weight's
#            bytes, as the library chooses and with D always computed / always read, whole rows or split
#   step     dctps bench step: ResNet18 step, dense vs DCTpS auto vs DCTpS batched, operator counts
#   graph    benchmarks/step_cudagraph.py: eager vs CUDA graph, dense / auto / dense-mode / batched,
#            also in channels_last (cuDNN's layout conversions took 12% of an H100 step)
#   profile  benchmarks/profile_step.py: wall vs GPU kernel time per step, the costliest kernels
#   layer    benchmarks/profile_layer.py: a lone conv's latency, loop time and kernels, per rebuild
#            (kernel: D computed on long rows; kernel-read: D read)
#   conv     dctps bench conv: the per-layer table of RESULTS.md (b), eager and as CUDA graphs
#   compile  step_cudagraph.py --compile: dense vs DCTpS under torch.compile (compiling takes minutes)
#   train    benchmarks/train_throughput.py: images/s of real training epochs
#   breakdown benchmarks/step_breakdown.py: a training step's time and kernels, phase by phase
#   linear, memory: dctps bench linear / memory
set -u
cd "$(dirname "$0")/.."  # the scripts' paths are the repository's: run from anywhere
OUT=${OUT:-gpu-out}
DEVICE=${DEVICE:-cuda}
QUICK=${QUICK:-}
PY=${PYTHON:-python3}
PARTS=${PARTS:-tests kernels step graph profile layer conv compile train breakdown linear memory}
mkdir -p "$OUT"
failed=""
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
start=$(date +%s)
stamp() { echo "[$(( $(date +%s) - start )) s] $*"; }
want() { [[ " $PARTS " == *" $1 "* ]]; }
part() {  # part NAME TIMEOUT CMD...: run CMD, log to $OUT/NAME.log, print the log
  local name=$1 limit=$2; shift 2
  want "$name" || return 0
  stamp "$name"
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  stamp "$name exit $rc"
  [ "$rc" -eq 0 ] || failed="$failed $name"
  grep -v "^USDT\|^STAGE:" "$OUT/$name.log" | tail -60
}
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1
$PY -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU')" | tee "$OUT/env.txt"
$PY -c "import triton; print('triton', triton.__version__)" 2>&1 | tail -1 | tee -a "$OUT/env.txt"

if [ -n "$QUICK" ]; then
  GRAPH_ARGS="--batch 32 --reps 2 --steps 2 --channels-last"; PROF_ARGS="--batch 8 --steps 2 --model lenet5"
  COMPILE_ARGS="--model lenet5 --batch 8 --reps 2 --steps 2"
  TP_ARGS="--lenet-images 512 --resnet-images 128 --repeats 1"
else
  GRAPH_ARGS="--batch 128 --reps 5 --steps 20 --channels-last"; PROF_ARGS="--batch 128 --steps 10"
  COMPILE_ARGS="--batch 128 --reps 5 --steps 20"
  TP_ARGS="--lenet-images 20000 --resnet-images 12800 --repeats 2"
fi
part tests 150 $PY -m pytest -q -p no:cacheprovider tests/test_cuda.py tests/test_triton_rebuild.py \
  tests/test_pruning_collapse.py::test_check_runs_on_the_models_device
part kernels 150 $PY benchmarks/rebuild_kernels.py --dct auto c r --programs 1 512 --reps 100
part step 150 $PY -m dctps.cli bench step --device "$DEVICE" $QUICK
part graph 150 $PY benchmarks/step_cudagraph.py $GRAPH_ARGS
part profile 90 $PY benchmarks/profile_step.py $PROF_ARGS
if [ -n "$QUICK" ]; then LAYER_ARGS="--batch 8 --reps 2 --calls 2"; else LAYER_ARGS=""; fi
part layer 150 $PY benchmarks/profile_layer.py $LAYER_ARGS
part conv 180 $PY -m dctps.cli bench conv --device "$DEVICE" $QUICK
# torch 2.11's static CUDA launcher failed on an H100 ("CUDA driver error: invalid argument")
TORCHINDUCTOR_USE_STATIC_CUDA_LAUNCHER=0 part compile 240 $PY benchmarks/step_cudagraph.py $COMPILE_ARGS --compile
part train 200 $PY benchmarks/train_throughput.py --device "$DEVICE" $TP_ARGS
if [ -n "$QUICK" ]; then BD_ARGS="--batch 8 --images 64"; else BD_ARGS=""; fi
part breakdown 90 $PY benchmarks/step_breakdown.py $BD_ARGS
part linear 120 $PY -m dctps.cli bench linear --device "$DEVICE" $QUICK
part memory 120 $PY -m dctps.cli bench memory --device "$DEVICE" $QUICK
stamp "done"
if [ -n "$failed" ]; then echo "failed parts:$failed"; exit 1; fi
