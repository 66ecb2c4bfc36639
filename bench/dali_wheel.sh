#!/usr/bin/env bash
# DALI on a lent GPU machine, whose image lacks it: DALI and its CUDA 12 codec wheels (~520 MB) are far
# over the device tool's 64 MiB carry limit per call, so they travel as 60 MiB parts over back-to-back
# calls to the same warm machine (it is given back after 30 s idle) and are joined there.
#   here:            bash bench/dali_wheel.sh split        -> .dali_parts/parts.sha256, part_00 ... part_NN
#   there, part 00:  run(carry=[".dali_parts/parts.sha256", ".dali_parts/part_00"], command="bash bench/dali_wheel.sh stash")
#   there, 01..NN:   run(carry=[".dali_parts/part_NN"], command="bash bench/dali_wheel.sh stash")
#   there, last:     bash bench/dali_wheel.sh install && bash bench/gpu_session.sh data
set -euo pipefail
# nvidia-dali-cuda130 (the device image's torch is a CUDA 13 build, as the pinned one) and what it needs that the
# image lacks (versions as `make install` resolves them: pip install --dry-run --report).
WHEELS="nvidia-dali-cuda130==2.4.0 nvidia-nvimgcodec-cu13==0.9.0.20 nvidia-nvjpeg==13.3.2.43
  nvidia-nvjpeg2k-cu13==0.11.0.51 nvidia-nvtiff-cu13==0.8.0.82 nvidia-libnvcomp-cu13==5.3.0.16 astunparse==1.6.3
  gast==0.7.0 libcst==1.9.0 makefun==1.16.0 optree==0.20.0 nvtx==0.2.17"
case "${1:-}" in
  split)
    rm -rf .dali_parts && mkdir -p .dali_parts/wheels
    # shellcheck disable=SC2086
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
      -d .dali_parts/wheels $WHEELS
    (cd .dali_parts && tar -cf - wheels | split -b 60M -d - part_ && rm -r wheels && sha256sum part_* > parts.sha256 && ls -l) ;;
  stash)
    mkdir -p /tmp/dali_parts && cp .dali_parts/* /tmp/dali_parts/ && ls -l /tmp/dali_parts ;;
  install)
    cd /tmp/dali_parts && sha256sum -c parts.sha256 && cat part_* | tar -xf -
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site wheels/*.whl
    PYTHONPATH=/tmp/site python3 -c "import nvidia.dali as d; print('dali', d.__version__)" ;;
  *) sed -n 2,9p "$0"; exit 2 ;;
esac
