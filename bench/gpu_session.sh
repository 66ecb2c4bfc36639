#!/usr/bin/env bash
# One lent-GPU session: environment, NCCL init + bf16/fp16 training smoke runs, throughput vs
# Ultralytics. Logs go to $OUT (device tool) or bench/out. Usage: bash bench/gpu_session.sh [quick]
set -uo pipefail
OUT=${OUT:-bench/out}; mkdir -p "$OUT"
export YOLO_OFFLINE=1 PYTHONUNBUFFERED=1 YOLO_DDP_OUTPUTS=/tmp/yd_out
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site
fi
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'nccl', torch.cuda.nccl.version(), 'bf16', torch.cuda.is_bf16_supported())"; } 2>&1 | tee "$OUT/env.txt"
SMALL="data.synthetic.n_train=256 data.synthetic.n_val=64 data.synthetic.image_size=640 data.imgsz=640 train.batch=32 train.epochs=2 data.workers=8 data.cache_dir=/tmp/yd_cache"
for amp in bf16 fp16; do
  echo "=== torchrun NCCL smoke, amp=$amp" | tee -a "$OUT/smoke.txt"
  python3 -m torch.distributed.run --nproc_per_node=1 -m launcher +experiment=pcb_defects train=default $SMALL train.amp=$amp 2>&1 | grep -vE "^\s*$" | tail -25 | tee -a "$OUT/smoke.txt"
done
[ "${1:-}" = quick ] && exit 0
# The self-spawning launcher (python -m launcher, nproc auto = 1 GPU) runs our side of each pair.
for spec in yolov8n.yaml:2 yolov8s.yaml:1; do
  model=${spec%:*}
  python3 bench/train_throughput.py --device 0 --model $model --imgsz 640 --batch 64 --epochs 4 --amp bf16 \
    --workers 8 --n-train 2048 --pairs ${spec#*:} 2>&1 | tail -8 | tee -a "$OUT/throughput.txt"
  cp bench/out/train_throughput.csv "$OUT/throughput_${model%.yaml}.csv"
done
# DALI: mixed decode beside torch (CUDA 13 build) in one process, then loader throughput at 640 with mosaic.
python3 -m pytest -q tests/test_dali.py 2>&1 | tail -3 | tee -a "$OUT/dali.txt"
python3 bench/data_throughput.py --imgsz 640 --batch 64 --workers 16 --batches 60 --n-images 2048 2>&1 \
  | tail -16 | tee -a "$OUT/dali.txt"
cp bench/out/data_throughput.csv "$OUT/" 2>/dev/null || true
# Memory planner: estimate vs torch.cuda.max_memory_allocated, fp32 vs bf16 vs fp16.
python3 bench/memory_vs_peak.py --models yolov8n.yaml,yolov8s.yaml,yolov8m.yaml --imgsz 640 --batches 8,16,32 \
  --amps off,bf16,fp16 2>&1 | tail -30 | tee -a "$OUT/memory.txt"
