"""Cost of each DALI CPU operator our graph uses, one at a time after a CPU decode (why DALI CPU loses).

    python bench/dali_cpu_ops.py --data .cache/yolo_ddp/synthetic/bench-256-640/data.yaml --threads 2

Prints img/s per pipeline and the per-image milliseconds the operator adds over decode alone.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "1")

from nvidia.dali import Pipeline, fn, types  # noqa: E402

from yolo_ddp.data.dataset import build_index  # noqa: E402
from yolo_ddp.data.spec import load_data_spec  # noqa: E402

OPS = {
    "decode only": lambda x: x,
    "resize 640->640 linear": lambda x: fn.resize(x, size=[640, 640], antialias=False),
    "resize 640->512 linear": lambda x: fn.resize(x, size=[512, 512], antialias=False),
    "resize 640->640 nearest": lambda x: fn.resize(x, size=[640, 640], interp_type=types.INTERP_NN),
    "slice with grey pad": lambda x: fn.slice(x, start=[-10, -10], shape=[640, 640], axes=[0, 1],
                                              out_of_bounds_policy="pad", fill_values=114),
    "flip": lambda x: fn.flip(x, horizontal=1),
    "hsv": lambda x: fn.hsv(x, hue=3.0, saturation=1.2, value=0.9),
    "color_twist": lambda x: fn.color_twist(x, hue=3.0, saturation=1.2, brightness=0.9),
    "transpose HWC->CHW": lambda x: fn.transpose(x, perm=[2, 0, 1]),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="a data.yaml (bench/data_throughput.py makes one)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--batches", type=int, default=20)
    args = ap.parse_args()
    spec = load_data_spec(Path(args.data))
    files = build_index(spec.train, spec.nc, Path(".cache/yolo_ddp/index"), "train").im_files
    base = None
    print(f"{'pipeline':<28} {'img/s':>8} {'ms/img added':>13}   ({args.threads} threads, batch {args.batch})")
    for name, op in OPS.items():
        pipe = Pipeline(batch_size=args.batch, num_threads=args.threads, device_id=None, prefetch_queue_depth=2)
        with pipe:
            encoded, _ = fn.readers.file(files=files)
            pipe.set_outputs(op(fn.decoders.image(encoded, device="cpu", output_type=types.RGB)))
        pipe.build()
        for _ in range(3):
            pipe.run()
        t0 = time.perf_counter()
        for _ in range(args.batches):
            pipe.run()
        rate = args.batch * args.batches / (time.perf_counter() - t0)
        base = base or rate
        added = (1 / rate - 1 / base) * 1000 * args.threads  # thread-milliseconds per image
        print(f"{name:<28} {rate:>8.1f} {added:>13.2f}")


if __name__ == "__main__":
    main()
