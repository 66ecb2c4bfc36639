#!/usr/bin/env bash
# Every GPU check in ONE command that ends within 8 minutes on one GPU (H200, 16 cores), start to end:
#   bash bench/gpu_session.sh              all stages below, in order, then a summary table
#   bash bench/gpu_session.sh amp memory   only the named stages (same order, same table)
#   doctor      python -m launcher.doctor: driver, torch CUDA, DALI build, NCCL, NVML, GPUs and links
#   nccl        a 1-rank torchrun NCCL group (device-bound) and one all-reduce (bench/nccl_check.py)
#   amp         one short training run each in bf16 and fp16 AMP through torchrun (NCCL, GradScaler for fp16)
#   memory      memory planner estimate vs torch.cuda.max_memory_allocated (bench/memory_vs_peak.py)
#   throughput  our trainer vs Ultralytics img/s, yolov8n at 640, batch 64, bf16, torch DataLoader backend
#   dali        DALI `mixed` decode parity tests + DALI's GPU memory vs the plan's budget; skipped (with a line)
#               where DALI does not import
# Each stage runs under its own `timeout`, capped by what is left of the 8-minute deadline (a stage that
# would start with under 20 s left is skipped). Logs, CSVs and summary.txt go to $OUT (bench/out here).
# The device image lacks the project's pure-Python dependencies: `bash bench/gpu_session.sh wheels` (here, with
# PyPI) puts them in .whl, which the device call carries (carry: [".whl"]); they are installed first there.
# CPU_SMOKE=1 runs every stage tiny on the CPU (gloo, no AMP), to prove the script's plumbing without a GPU.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench/out}; mkdir -p "$OUT"
export YOLO_OFFLINE=1 WANDB_SILENT=true WANDB_MODE=disabled PYTHONUNBUFFERED=1 YOLO_DDP_OUTPUTS=/tmp/yd_out
PY=${PYTHON:-python3}
SMOKE=${CPU_SMOKE:-0}
BUDGET_S=${BUDGET_S:-470}  # 8 minutes less the wheel install and the summary
START=$(date +%s)
ALL=(doctor nccl amp memory throughput dali)

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
INNER=${1:-}  # __amp / __dali: a stage's steps, run by this script itself under the stage's timeout
if [ "${INNER:0:2}" != __ ]; then
  for s in "$@"; do
    [[ " ${ALL[*]} " == *" $s "* ]] || { sed -n 2,16p "$0"; echo "unknown stage: $s"; exit 2; }
  done
fi
STAGES=("${ALL[@]}")
[ $# -gt 0 ] && STAGES=("$@")

if [ "${INNER:0:2}" != __ ] && [ -d .whl ] && ls .whl/* >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/* \
    2>&1 | tail -3
fi
[ -d /tmp/site ] && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}  # the carried wheels, staged DALI
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}  # bench scripts import this checkout's yolo_ddp

if [ "$SMOKE" = 1 ]; then
  DEV=cpu; IMGSZ=64; NTRAIN=16; BATCH=4; MODELS=yolov8n.yaml; AMPS="off"; WORKERS=0
else
  DEV=0; IMGSZ=640; NTRAIN=1024; BATCH=64; MODELS=yolov8n.yaml,yolov8s.yaml; AMPS="off,bf16,fp16"; WORKERS=12
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

run_amp() {  # one short run per precision through torchrun (NCCL on a GPU, gloo on CPU)
  local small="data.synthetic.n_train=$((NTRAIN / 4)) data.synthetic.n_val=32 data.synthetic.image_size=$IMGSZ"
  small="$small data.imgsz=$IMGSZ train.batch=$((BATCH / 2)) train.epochs=1 data.workers=$WORKERS logger=csv"
  small="$small data.backend=torch data.cache_dir=/tmp/yd_cache"
  local amps="bf16 fp16"; [ "$SMOKE" = 1 ] && amps="off"
  for amp in $amps; do
    echo "--- amp=$amp"
    # shellcheck disable=SC2086
    "$PY" -m torch.distributed.run --standalone --nproc_per_node=1 -m launcher +experiment=pcb_defects \
      train=default $small train.amp=$amp 2>&1 | grep -E "amp|plan|img/s|mAP|error|Error|Traceback" | tail -12
    [ "${PIPESTATUS[0]}" -eq 0 ] || return 1
  done
  echo "amp: $amps steps trained"
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
    throughput) PICK="ultralytics per round" stage throughput 170 "$PY" bench/train_throughput.py --device "$DEV" --model yolov8n.yaml \
      --imgsz "$IMGSZ" --batch "$BATCH" --epochs 3 --amp "$([ "$SMOKE" = 1 ] && echo off || echo bf16)" \
      --workers "$WORKERS" --n-train "$NTRAIN" --pairs 1 --backend torch ;;
    dali) stage dali 90 bash "$0" __dali ;;
  esac
done
cp bench/out/train_throughput.csv "$OUT/" 2>/dev/null
echo
echo "=== summary ($(($(date +%s) - START)) s; logs in $OUT)"
printf '%-11s %-9s %5s  %s\n' stage status s "last line"
cat "$SUMMARY"
! grep -qE "^\S+\s+(fail|timeout)" "$SUMMARY"
