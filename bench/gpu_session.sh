#!/usr/bin/env bash
# The GPU checks, in stages that each fit one 10-minute device call (logs and CSVs go to $OUT there,
# bench/out here). With DALI staged by bench/dali_wheel.sh, a session runs them in this order:
#   bash bench/gpu_session.sh data      DALI tests (mixed decode parity) + loader throughput, 16 workers vs DALI mixed
#   bash bench/gpu_session.sh train-n   yolov8n@640 b64 bf16 vs Ultralytics, A B A B; our DALI (auto) and torch backends
#   bash bench/gpu_session.sh train-s   yolov8s, the same
#   bash bench/gpu_session.sh levers    yolov8n: speed switches off / defaults / torch.compile, against one Ultralytics run
#   bash bench/gpu_session.sh smoke     NCCL init + bf16/fp16 smoke runs through torchrun
#   bash bench/gpu_session.sh memory    memory planner estimate vs torch.cuda.max_memory_allocated
set -uo pipefail
OUT=${OUT:-bench/out}; mkdir -p "$OUT"
export YOLO_OFFLINE=1 PYTHONUNBUFFERED=1 YOLO_DDP_OUTPUTS=/tmp/yd_out
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
fi
[ -d /tmp/site ] && export PYTHONPATH=/tmp/site  # the project's wheels and DALI (bench/dali_wheel.sh install)
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'nccl', torch.cuda.nccl.version(), 'bf16', torch.cuda.is_bf16_supported())"
  python3 -c "import nvidia.dali as d; print('dali', d.__version__)" 2>&1 | tail -1; } | tee "$OUT/env.txt"

throughput() {  # model pairs name variants...
  local model=$1 pairs=$2 name=$3; shift 3
  python3 bench/train_throughput.py --device 0 --model "$model" --imgsz 640 --batch 64 --epochs 4 --amp bf16 \
    --workers 16 --n-train 2048 --pairs "$pairs" "$@" 2>&1 | tail -14 | tee -a "$OUT/throughput.txt"
  cp bench/out/train_throughput.csv "$OUT/throughput_$name.csv"
}

case "${1:-}" in
  data)
    python3 -m pytest -q tests/test_dali.py 2>&1 | tail -3 | tee -a "$OUT/dali.txt"
    python3 bench/data_throughput.py --imgsz 640 --batch 64 --workers 16 --batches 60 --n-images 2048 2>&1 \
      | tail -18 | tee -a "$OUT/dali.txt"
    cp bench/out/data_throughput.csv "$OUT/" ;;
  train-n) throughput yolov8n.yaml 2 yolov8n --variant auto= --variant torch=data.backend=torch ;;
  train-s) throughput yolov8s.yaml 2 yolov8s --variant auto= ;;
  levers)
    throughput yolov8n.yaml 1 levers \
      --variant off="train.channels_last=false train.fused_optimizer=false train.cudnn_benchmark=false" \
      --variant defaults= --variant compile=train.compile=true ;;
  smoke)
    SMALL="data.synthetic.n_train=256 data.synthetic.n_val=64 data.synthetic.image_size=640 data.imgsz=640 train.batch=32 train.epochs=2 data.workers=8 data.cache_dir=/tmp/yd_cache"
    for amp in bf16 fp16; do
      echo "=== torchrun NCCL smoke, amp=$amp" | tee -a "$OUT/smoke.txt"
      python3 -m torch.distributed.run --nproc_per_node=1 -m launcher +experiment=pcb_defects train=default $SMALL \
        train.amp=$amp 2>&1 | grep -vE "^\s*$" | tail -25 | tee -a "$OUT/smoke.txt"
    done ;;
  memory)
    python3 bench/memory_vs_peak.py --models yolov8n.yaml,yolov8s.yaml,yolov8m.yaml --imgsz 640 --batches 8,16,32 \
      --amps off,bf16,fp16 2>&1 | tail -30 | tee -a "$OUT/memory.txt" ;;
  *) sed -n 2,10p "$0"; exit 2 ;;
esac
