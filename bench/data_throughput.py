"""Data-loading throughput: torch DataLoader vs DALI (CPU, and `mixed` on a GPU) at equal augmentation.

Each row streams training batches (letterbox to imgsz, HSV, horizontal flip; `+mosaic` adds the 4-image
mosaic) and reports images/s after a warm-up, plus the ratio to the torch DataLoader row of the same
augmentation. `ultralytics` rows use Ultralytics' own dataset and InfiniteDataLoader (its mosaic + random
perspective), the loader `yolo train` runs; our torch rows use the same Ultralytics transforms over the
node-shared index. `auto` rows build what `data.backend=auto` picks on this machine through the
trainer's own `build_train_stream`. `stage:` rows split the DALI CPU cost (decode only, decode +
resize) against OpenCV to show where time goes. `+cache=` rows read the node-shared image store
(`data.cache`, built once before they run: the `cache build` row) instead of decoding; `ultralytics
cache=ram` is its own per-process RAM cache.

    python bench/data_throughput.py --imgsz 640 --batch 32 --workers 2 --batches 30
    python bench/data_throughput.py --imgsz 640 --image-size 1280 --batch 16 --workers 2 --batches 20 \
        --skip stage:cv2.imread,stage:cv2.imread+resize   # 1280-px sources: the cache rows' case
    python bench/data_throughput.py --imgsz 640 --batch 64 --workers 16 --batches 100   # on a GPU box
"""

from __future__ import annotations

import argparse
import csv
import itertools
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable
from datetime import date
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "1")

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import psutil  # noqa: E402
import torch  # noqa: E402

from yolo_ddp.config import DataConfig  # noqa: E402
from yolo_ddp.data import image_cache  # noqa: E402
from yolo_ddp.data.dali import DaliSettings, DaliTrainStream  # noqa: E402
from yolo_ddp.data.dali_source import Augment  # noqa: E402
from yolo_ddp.data.dataset import build_index  # noqa: E402
from yolo_ddp.data.loaders import build_train_stream, resolve_backend  # noqa: E402
from yolo_ddp.data.spec import load_data_spec  # noqa: E402
from yolo_ddp.data.synthetic import materialize  # noqa: E402
from yolo_ddp.data.torch_loader import build_loader  # noqa: E402
from yolo_ddp.plan import loader_batches_per_epoch  # noqa: E402


def rate(batches: Iterable, n_batches: int, warmup: int, sync: bool) -> float:
    it = iter(batches)
    for _ in range(warmup):
        next(it)
    t0, images = time.perf_counter(), 0
    for batch in itertools.islice(it, n_batches):
        img = batch["img"] if isinstance(batch, dict) else batch
        images += len(img)
    if sync:
        torch.cuda.synchronize()
    return images / (time.perf_counter() - t0)


def per_image(fn: Callable[[str], object], files: list[str], n: int) -> float:
    t0 = time.perf_counter()
    for f in itertools.islice(itertools.cycle(files), n):
        fn(f)
    return n / (time.perf_counter() - t0)


def dali_stage_pipe(files: list[str], batch: int, imgsz: int, threads: int, resize: bool, antialias: bool):
    from nvidia.dali import Pipeline, fn, types

    pipe = Pipeline(batch_size=batch, num_threads=threads, device_id=None, prefetch_queue_depth=2)
    with pipe:
        enc, _ = fn.readers.file(files=files, random_shuffle=False)
        img = fn.decoders.image(enc, device="cpu", output_type=types.RGB)
        if resize:
            img = fn.resize(img, resize_longer=imgsz, antialias=antialias)
        pipe.set_outputs(img)
    pipe.build()
    while True:
        (out,) = pipe.run()
        yield [None] * len(out)


def ultralytics_loader(data_yaml: Path, imgsz: int, batch: int, workers: int, mosaic: float, cache: bool = False):
    from ultralytics.cfg import get_cfg
    from ultralytics.data.build import build_dataloader, build_yolo_dataset
    from ultralytics.data.utils import check_det_dataset

    data = check_det_dataset(str(data_yaml))
    cfg = get_cfg(overrides={"imgsz": imgsz, "mosaic": mosaic, "batch": batch, "workers": workers,
                             "cache": "ram" if cache else False})
    dataset = build_yolo_dataset(cfg, data["train"], batch, data, mode="train")
    return build_dataloader(dataset, batch, workers, shuffle=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--imgsz", type=int, default=640)
    ap.add_argument("--image-size", type=int, default=640, help="side of the synthetic source JPEGs")
    ap.add_argument("--n-images", type=int, default=512)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--workers", type=int, default=max(1, os.cpu_count() or 1), help="DataLoader workers")
    ap.add_argument("--dali-threads", type=int, default=0, help="0: DaliSettings' default per device")
    ap.add_argument("--batches", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--cache", default=".cache/yolo_ddp")
    ap.add_argument("--out", default="bench/out/data_throughput.csv")
    ap.add_argument("--skip", default="", help="comma-separated row names to skip")
    args = ap.parse_args()

    data_yaml = materialize(Path(args.cache) / "synthetic" / f"bench-{args.n_images}-{args.image_size}",
                            args.n_images, 16, args.image_size)
    spec = load_data_spec(data_yaml)
    index = build_index(spec.train, spec.nc, Path(args.cache) / "index", "train")
    s, b, nb = args.imgsz, args.batch, args.batches
    per_epoch = loader_batches_per_epoch(len(index), 1, b)  # every image every epoch, the last batch partial
    plain, mosaic = Augment(mosaic=0.0), Augment(mosaic=1.0)
    gpu = torch.cuda.is_available()
    skip = set(filter(None, args.skip.split(",")))

    stores: dict[str, image_cache.ImageStore] = {}

    def store(mode: str) -> image_cache.ImageStore:
        if mode not in stores:
            stores[mode] = image_cache.open_store(index.im_files, index.shapes, s, mode, Path(args.cache), "bench")
        return stores[mode]

    def build_rate() -> float:
        shutil.rmtree(image_cache.store_root("ram", Path(args.cache)), ignore_errors=True)
        t0 = time.perf_counter()
        store("ram")
        return len(index) / (time.perf_counter() - t0)

    def torch_rows(aug: Augment, cache: str = "") -> Iterable[dict]:
        hyp = {k: getattr(aug, k) for k in ("hsv_h", "hsv_s", "hsv_v", "fliplr", "mosaic", "scale")}
        return build_loader(index, s, b, args.workers, train=True, augment=hyp, pin_memory=gpu,
                            batches_per_epoch=per_epoch, mosaic_until=10**9, store=store(cache) if cache else None)

    def dali(aug: Augment, device_id: int | None, cache: str = "") -> Iterable[dict]:
        settings = DaliSettings(device_id, threads=args.dali_threads)
        return DaliTrainStream(index, s, b, per_epoch, 0, 1, 0, aug, settings, mosaic_until=10**9,
                               store=store(cache) if cache else None)

    def auto(aug: Augment) -> Iterable[dict]:
        """What the trainer builds for `data.backend=auto` on this machine, through its own code path."""
        data = DataConfig(imgsz=s, workers=args.workers, mosaic=aug.mosaic, close_mosaic=0)
        device = torch.device("cuda", 0) if gpu else torch.device("cpu")
        return build_train_stream(data, resolve_backend(data, device), index, b, per_epoch, 10**9, 0, device, 0, 1)

    chosen = resolve_backend(DataConfig(), torch.device("cuda" if gpu else "cpu"))
    rows: list[tuple[str, str, Callable[[], float]]] = [
        ("torch", "plain", lambda: rate(torch_rows(plain), nb, args.warmup, False)),
        ("torch", "mosaic", lambda: rate(torch_rows(mosaic), nb, args.warmup, False)),
        ("dali-cpu", "plain", lambda: rate(dali(plain, None), nb, args.warmup, False)),
        ("dali-cpu", "mosaic", lambda: rate(dali(mosaic, None), nb, args.warmup, False)),
        ("ultralytics", "mosaic", lambda: rate(ultralytics_loader(data_yaml, s, b, args.workers, 1.0),
                                               nb, args.warmup, False)),
        (f"auto ({chosen})", "plain", lambda: rate(auto(plain), nb, args.warmup, gpu)),
        (f"auto ({chosen})", "mosaic", lambda: rate(auto(mosaic), nb, args.warmup, gpu)),
        ("cache build", f"{min(16, os.cpu_count() or 1)} threads", build_rate),
        ("torch+cache=ram", "plain", lambda: rate(torch_rows(plain, "ram"), nb, args.warmup, False)),
        ("torch+cache=ram", "mosaic", lambda: rate(torch_rows(mosaic, "ram"), nb, args.warmup, False)),
        ("torch+cache=disk", "mosaic", lambda: rate(torch_rows(mosaic, "disk"), nb, args.warmup, False)),
        ("dali-cpu+cache=ram", "mosaic", lambda: rate(dali(mosaic, None, "ram"), nb, args.warmup, False)),
        ("ultralytics cache=ram", "mosaic", lambda: rate(ultralytics_loader(data_yaml, s, b, args.workers, 1.0,
                                                                            cache=True), nb, args.warmup, False)),
    ]
    if gpu:
        rows += [("dali-mixed", "plain", lambda: rate(dali(plain, 0), nb, args.warmup, True)),
                 ("dali-mixed", "mosaic", lambda: rate(dali(mosaic, 0), nb, args.warmup, True))]
    files = index.im_files
    threads = args.dali_threads or DaliSettings(None).num_threads()
    n_stage = nb * b
    rows += [
        ("stage:cv2.imread", "1 thread", lambda: per_image(cv2.imread, files, n_stage)),
        ("stage:cv2.imread+resize", "1 thread", lambda: per_image(
            lambda f: cv2.resize(im := cv2.imread(f), (s, round(im.shape[0] * s / im.shape[1]))), files, n_stage)),
        ("stage:dali-cpu decode", f"{threads} threads", lambda: rate(
            dali_stage_pipe(files, b, s, threads, False, False), nb, args.warmup, False)),
        ("stage:dali-cpu decode+resize", f"{threads} threads", lambda: rate(
            dali_stage_pipe(files, b, s, threads, True, False), nb, args.warmup, False)),
        ("stage:dali-cpu decode+resize antialias", f"{threads} threads", lambda: rate(
            dali_stage_pipe(files, b, s, threads, True, True), nb, args.warmup, False)),
    ]

    results: list[dict] = []
    # The bench's ram store goes to a tmpfs dir of its own, removed at the end (a job's store stays for reuse).
    os.environ[image_cache.SHM_ENV] = tempfile.mkdtemp(prefix="yolo_ddp_bench_", dir=image_cache.shm_dir())
    for name, aug, run in rows:
        if name in skip:
            continue
        psutil.cpu_percent()  # starts the interval: the machine's CPU use while this row runs
        img_per_s = run()
        cpu = psutil.cpu_percent()  # all cores, whoever uses them (loader workers, DALI threads)
        results.append({"loader": name, "augment": aug, "img_per_s": img_per_s, "cpu_percent": cpu})
        print(f"  measured {name} ({aug}): {img_per_s:.1f} img/s at {cpu:.0f}% CPU", flush=True)
    shutil.rmtree(os.environ[image_cache.SHM_ENV], ignore_errors=True)
    for d in image_cache.store_root("disk", Path(args.cache)).glob(f"bench-{s}-*"):
        shutil.rmtree(d, ignore_errors=True)
    ref = {r["augment"]: r["img_per_s"] for r in results if r["loader"] == "torch"}
    machine = f"{platform.node()} {os.cpu_count()} cores" + (f", {torch.cuda.get_device_name(0)}" if gpu else "")
    print(f"\n{date.today()}  {machine}  imgsz={s} batch={b} workers={args.workers} source {args.image_size}px JPEG")
    print(f"{'loader':<40} {'augment':<10} {'img/s':>9} {'CPU %':>6} {'vs torch DataLoader':>22}")
    for r in results:
        base = ref.get(r["augment"]) if not r["loader"].startswith("stage") else None
        r["ratio"] = r["img_per_s"] / base if base else ""
        ratio = f"{r['ratio']:.2f}x" if base else ""
        print(f"{r['loader']:<40} {r['augment']:<10} {r['img_per_s']:>9.1f} {r['cpu_percent']:>6.0f} {ratio:>22}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["date", "machine", "imgsz", "batch", "workers", "loader", "augment", "cpu_percent",
                                          "img_per_s", "ratio"])
        w.writeheader()
        for r in results:
            w.writerow({"date": date.today(), "machine": machine, "imgsz": s, "batch": b, "workers": args.workers,
                        **r})
    print(f"wrote {out}")


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
