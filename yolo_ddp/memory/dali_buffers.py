"""DALI's GPU memory, which torch's allocator never sees: budgeted in the memory plan, and its exhaustion named.

Budget, not measurement: the plan is made before any pipeline exists, and the micro-batch it chooses is what
the pipelines would be built with, so measuring a built pipeline would need the answer first. The buffers are
plain uint8 HWC images (3 bytes per pixel), per sample of a pipeline batch:

    decoded  = tiles x S x 3                    the `mixed` decoder's full-resolution output
    resized  = tiles x ((1 + scale) x imgsz)^2 x 3    each tile resized, its long side up to (1 + scale) x imgsz
    canvas   = CANVAS_COPIES x imgsz^2 x 3      slice/mosaic concat, flip, HSV, the layout output

with tiles = 4 for a mosaic sample (1 without), S the source images' pixels (their 99th percentile: a batch
of dozens of images is near their mean, a rare panorama does not shrink every batch). DALI keeps up to
`prefetch` batches in flight plus the one the iterator hands out, so per image of the per-rank micro-batch:

    per_image = (prefetch + 1) x (train_sample + VAL_PER_TRAIN x val_sample)

(the validation pipeline, built at start and alive all run, has twice the batch and one unscaled tile), plus
DECODER_STATE per pipeline (nvJPEG/nvImageCodec state, DALI's pool granularity; assumed, not measured:
`bench/dali_memory.py` in `bench/gpu_session.sh` compares this budget with what DALI takes on a GPU).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

MiB = 2**20
CANVAS_COPIES = 4
VAL_PER_TRAIN = 2  # the validation batch is twice the training micro-batch (yolo_ddp/engine/train.py)
PIPELINES = 2  # training and validation, both alive during training
DECODER_STATE = 256 * MiB
CHANNELS = 3
# What DALI's allocators say when the device is full (dali/core/cuda_error.h CUDABadAlloc, the CUDA runtime's
# cudaErrorMemoryAllocation text, DALI's pool and decoder messages); the iterator re-raises them as RuntimeError.
OOM_MARKERS = ("cuda allocation failed", "can't allocate", "cudaerrormemoryallocation", "out of memory",
               "failed to allocate")


@dataclass(frozen=True)
class DaliBuffers:
    source_pixels: int  # S: pixels of a typical (99th percentile) source image
    imgsz: int
    prefetch: int
    mosaic: bool
    scale: float

    def sample_bytes(self, tiles: int, scale: float) -> int:
        decoded = tiles * self.source_pixels
        resized = tiles * int(((1 + scale) * self.imgsz) ** 2)
        canvas = CANVAS_COPIES * self.imgsz**2
        return CHANNELS * (decoded + resized + canvas)

    @property
    def per_image(self) -> int:
        train = self.sample_bytes(4 if self.mosaic else 1, self.scale)
        val = self.sample_bytes(1, 0.0)
        return (self.prefetch + 1) * (train + VAL_PER_TRAIN * val)

    @property
    def fixed(self) -> int:
        return PIPELINES * DECODER_STATE

    def scaled(self, factor: float) -> DaliBuffers:
        """At another image size (the ladder's imgsz rung); the sources stay as they are."""
        return replace(self, imgsz=max(32, round(self.imgsz * factor)))


def typical_source_pixels(shapes: np.ndarray) -> int:
    """99th percentile of h x w over an index's (N, 2) original shapes."""
    area = np.asarray(shapes, np.int64).reshape(-1, 2).prod(1)
    return int(np.percentile(area, 99)) if len(area) else 0


def is_dali_out_of_memory(err: BaseException) -> bool:
    """A DALI allocation failure, as its iterator raises it (RuntimeError; MemoryError from a std::bad_alloc)."""
    return isinstance(err, (RuntimeError, MemoryError)) and any(m in str(err).lower() for m in OOM_MARKERS)
