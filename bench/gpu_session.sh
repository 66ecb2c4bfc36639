#!/usr/bin/env bash
# Every GPU check in ONE command that ends within 8 minutes on one GPU (H200, 16 cores), start to end:
#   bash bench/gpu_session.sh              all stages below, in order, then a summary table
#   bash bench/gpu_session.sh amp memory   only the named stages (same order, same table)
#   doctor      python -m launcher.doctor: driver, torch CUDA, DALI build, NCCL, NVML, GPUs and links
#   nccl        a 1-rank torchrun NCCL group (device-bound) and one all-reduce (bench/nccl_check.py)
#   amp         one short training run each in bf16 and fp16 AMP through torchrun (NCCL, GradScaler for fp16)
#   memory      memory planner estimate vs torch.cuda.max_memory_allocated (bench/memory_vs_peak.py)
#   throughput  our trainer vs Ultralytics img/s, yolov8n at 640, batch 64, bf16, torch DataLoader backend; ours
#               with and without data.cache=ram (the node-shared image store: the loader without decodes)
#   syncbn      BN across ranks: tests/test_sync_bn.py (ours == torch's SyncBatchNorm on the GPU, outputs and
#               gradients) and bench/sync_bn.py (step time of per-rank BN, ours, torch's; 8 images per rank at
#               640, 2 ranks on the one GPU over gloo): the numbers behind train.sync_bn_below (docs/scaling.md)
#   dali        DALI `mixed` decode parity tests + DALI's GPU memory vs the plan's budget; skipped (with a line)
#               where DALI does not import
# Each stage runs under its own `timeout`, capped by what is left of the 8-minute deadline (a stage that
# would start with under 20 s left is skipped). Logs, CSVs and summary.txt go to $OUT (bench/out here).
# The device image lacks the project's pure-Python dependencies: `bash bench/gpu_session.sh wheels` (here, with
# PyPI) puts them in .whl, which the device call carries (carry: [".whl"]); they are installed first there
# (pip --target $SITE, default /tmp/site). The exact device call is in bench/RESULTS.md ("image smoke").
# CPU_SMOKE=1 runs every stage tiny on the CPU (gloo, no AMP; amp with 2 ranks, so DDP wraps the model), to prove
# the script's plumbing without a GPU.
# `bash bench/gpu_session.sh image-smoke [STAGES]` (here, not on the device) runs the CPU_SMOKE stages in a venv
# of the device image's packages only: torch 2.11, torchvision 0.26, numpy, OpenCV, ... and no hydra, optuna,
# polars or DALI (built once, from PyPI, in $IMAGE_VENV, default /tmp/yolo-ddp-image-venv), with the .whl wheels
# installed as the device installs them. It fails where the device would, here.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench/out}; mkdir -p "$OUT"
export YOLO_OFFLINE=1 WANDB_SILENT=true WANDB_MODE=disabled PYTHONUNBUFFERED=1 YOLO_DDP_OUTPUTS=/tmp/yd_out
PY=${PYTHON:-python3}
SITE=${SITE:-/tmp/site}  # where the carried wheels are installed
SMOKE=${CPU_SMOKE:-0}
BUDGET_S=${BUDGET_S:-470}  # 8 minutes less the wheel install and the summary
START=$(date +%s)
ALL=(doctor nccl amp memory throughput syncbn dali)

if [ "${1:-}" = wheels ]; then  # here, not on the device: the project's deps the device image lacks
  rm -rf .whl && mkdir -p .whl
  exclude="$(git rev-parse --git-common-dir)/info/exclude"  # .whl must travel untracked, never be committed
  grep -qx "/.whl/" "$exclude" 2>/dev/null || echo "/.whl/" >> "$exclude"
  # pip wheel, not download: antlr4-python3-runtime 4.9.3 is an sdist only, and the device has no index to build it.
  "$PY" -m pip wheel -q --no-deps -w .whl ultralytics==8.4.190 ultralytics-thop==2.2.3 \
    ultralytics-platform==0.1.99 hydra-core==1.3.8 omegaconf==2.3.0 antlr4-python3-runtime==4.9.3 submitit==1.5.4 \
    hydra-submitit-launcher==1.2.0 && du -sh .whl && ls .whl
  exit $?
fi
if [ "${1:-}" = image-smoke ]; then  # here, not on the device: the device's package set, then CPU_SMOKE in it
  shift
  VENV=${IMAGE_VENV:-/tmp/yolo-ddp-image-venv}
  if [ ! -f "$VENV/.built" ]; then  # the image's Python (3.12) and the image's packages our code and Ultralytics use
    base=""
    for c in python3.12 /root/.pyenv/versions/3.12*/bin/python3.12; do "$c" -c "" 2>/dev/null && { base=$c; break; }; done
    rm -rf "$VENV" && "${base:-python3}" -m venv "$VENV" || exit 1
    "$VENV/bin/python" -m pip install -q torch==2.11.0 torchvision==0.26.0 numpy opencv-python-headless pillow \
      matplotlib pandas scipy pyyaml psutil requests tqdm nvidia-ml-py pytest httpx packaging cloudpickle \
      typing-extensions || exit 1
    touch "$VENV/.built"
  fi
  ls .whl/*.whl >/dev/null 2>&1 || bash "$0" wheels || exit 1
  "$VENV/bin/python" -c "import sys, torch; print('image-smoke: Python', sys.version.split()[0], 'torch', torch.__version__)"
  rm -rf /tmp/image-smoke-site  # a new device has no installed wheels
  [ "$OUT" = bench/out ] && OUT=bench/out/image-smoke
  env -u PYTHONPATH PYTHON="$VENV/bin/python" SITE=/tmp/image-smoke-site CPU_SMOKE=1 OUT="$OUT" bash "$0" "$@"
  exit $?
fi
INNER=${1:-}  # __amp / __syncbn / __dali: a stage's steps, run by this script itself under the stage's timeout
if [ "${INNER:0:2}" != __ ]; then
  for s in "$@"; do
    [[ " ${ALL[*]} " == *" $s "* ]] || { sed -n '2,/^set /{/^#/p}' "$0"; echo "unknown stage: $s"; exit 2; }
  done
fi
STAGES=("${ALL[@]}")
[ $# -gt 0 ] && STAGES=("$@")

if [ "${INNER:0:2}" != __ ] && [ -d .whl ] && ls .whl/* >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/* \
    2>&1 | tail -3
fi
[ -d "$SITE" ] && export PYTHONPATH=$SITE${PYTHONPATH:+:$PYTHONPATH}  # the carried wheels, staged DALI
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}  # bench scripts import this checkout's yolo_ddp

if [ "$SMOKE" = 1 ]; then
  DEV=cpu; IMGSZ=64; NTRAIN=16; BATCH=4; MODELS=yolov8n.yaml; AMPS="off"; WORKERS=0; RANKS=2
else
  DEV=0; IMGSZ=640; NTRAIN=1024; BATCH=64; MODELS=yolov8n.yaml,yolov8s.yaml; AMPS="off,bf16,fp16"; WORKERS=12; RANKS=1
fi
SUMMARY="$OUT/summary.txt"

# stage NAME CAP_S COMMAND...: runs COMMAND under timeout min(CAP_S, time left), logs to $OUT/NAME.log, and
# records status, seconds and the log's last line matching $PICK (default: the last line it printed).
stage() {
  local name=$1 cap=$2; shift 2
  local left=$((BUDGET_S - ($(date +%s) - START)))
  if [ "$left" -lt 20 ]; then
    printf '%-11s %-9s %5s  %s\n' "$name" skipped - "no time left in the 8-minute budget" >> "$SUMMARY"; return
  fi
  local limit=$((cap < left - 5 ? cap : left - 5)) t0 rc
  echo "=== $name (timeout ${limit}s)" > "$OUT/$name.log"
  t0=$(date +%s)
  timeout --kill-after=10 "$limit" "$@" >> "$OUT/$name.log" 2>&1; rc=$?
  local status=ok; [ $rc -ne 0 ] && status="fail($rc)"; [ $rc -eq 124 ] || [ $rc -eq 137 ] && status=timeout
  tail -n 40 "$OUT/$name.log"
  printf '%-11s %-9s %5s  %s\n' "$name" "$status" "$(($(date +%s) - t0))" \
    "$(grep -vE '^\s*$|^===' "$OUT/$name.log" | grep -E "${PICK:-.}" | tail -n 1 | cut -c1-150)" >> "$SUMMARY"
}

run_amp() {  # one short run per precision through torchrun (NCCL on the one GPU, 2 gloo ranks on CPU)
  local small="data.synthetic.n_train=$((NTRAIN / 4)) data.synthetic.n_val=32 data.synthetic.image_size=$IMGSZ"
  small="$small data.imgsz=$IMGSZ train.batch=$((BATCH / 2)) train.epochs=1 data.workers=$WORKERS logger=csv"
  small="$small data.backend=torch data.cache_dir=/tmp/yd_cache"
  local amps="bf16 fp16"; [ "$SMOKE" = 1 ] && amps="off"
  for amp in $amps; do
    echo "--- amp=$amp"
    # shellcheck disable=SC2086
    "$PY" -m torch.distributed.run --standalone --nproc_per_node=$RANKS -m launcher +experiment=pcb_defects \
      train=default $small train.amp=$amp 2>&1 | grep -E "amp|plan|img/s|mAP|error|Error|Traceback" | tail -12
    [ "${PIPESTATUS[0]}" -eq 0 ] || return 1
  done
  echo "amp: $amps steps trained"
}

run_syncbn() {  # ours vs torch's SyncBatchNorm: same numbers (GPU test), then what each costs per step
  "$PY" -m pytest -q -p no:cacheprovider tests/test_sync_bn.py 2>&1 | tail -3
  [ "${PIPESTATUS[0]}" -eq 0 ] || return 1
  "$PY" bench/sync_bn.py --device "$([ "$SMOKE" = 1 ] && echo cpu || echo cuda)" --imgsz "$IMGSZ" \
    --batch "$((BATCH / 8 > 1 ? BATCH / 8 : 2))" --amp "$([ "$SMOKE" = 1 ] && echo off || echo bf16)" && cp bench/out/sync_bn.csv "$OUT/"
}

run_dali() {
  if ! "$PY" -c "import nvidia.dali" 2>/dev/null; then
    echo "DALI does not import here: skipped (stage it with bench/dali_wheel.sh)"; return 0
  fi
  "$PY" -m pytest -q -p no:cacheprovider tests/test_dali.py 2>&1 | tail -3
  "$PY" bench/dali_memory.py --imgsz "$IMGSZ" --image-size "$IMGSZ" --batch "$BATCH" --n-images "$((NTRAIN / 4))" \
    --cache /tmp/yd_cache
}

case $INNER in
  __amp) run_amp; exit $? ;;
  __syncbn) run_syncbn; exit $? ;;
  __dali) run_dali; exit $? ;;
esac
: > "$SUMMARY"

for s in "${STAGES[@]}"; do
  case $s in
    doctor) stage doctor 30 "$PY" -m launcher.doctor ;;
    nccl) stage nccl 60 "$PY" -m torch.distributed.run --standalone --nproc_per_node=1 bench/nccl_check.py ;;
    amp) stage amp 150 bash "$0" __amp ;;
    memory) stage memory 90 "$PY" bench/memory_vs_peak.py --models "$MODELS" --imgsz "$IMGSZ" \
      --batches "$((BATCH / 4)),$((BATCH / 2))" --amps "$AMPS" --out "$OUT/memory_vs_peak.csv" ;;
    throughput) PICK="ultralytics per round" stage throughput 220 "$PY" bench/train_throughput.py --device "$DEV" --model yolov8n.yaml \
      --imgsz "$IMGSZ" --batch "$BATCH" --epochs 3 --amp "$([ "$SMOKE" = 1 ] && echo off || echo bf16)" \
      --workers "$WORKERS" --n-train "$NTRAIN" --pairs 1 --backend torch --variant default= \
      --variant cache=data.cache=ram ;;
    syncbn) PICK="^(collective|torch) " stage syncbn 60 bash "$0" __syncbn ;;
    dali) stage dali 90 bash "$0" __dali ;;
  esac
done
cp bench/out/train_throughput.csv "$OUT/" 2>/dev/null
echo
echo "=== summary ($(($(date +%s) - START)) s; logs in $OUT)"
printf '%-11s %-9s %5s  %s\n' stage status s "last line"
cat "$SUMMARY"
! grep -qE "^\S+\s+(fail|timeout)" "$SUMMARY"
