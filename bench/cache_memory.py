"""Host memory of `data.cache=ram`: one copy per node, against Ultralytics' `cache=ram` copy per process.

Runs one real job, `python -m launcher` with --nproc ranks x --workers DataLoader workers each and
`data.cache=ram`, on a synthetic set of --image-size px JPEGs trained at --imgsz, and samples every process of
the job twice a second from /proc/<pid>/smaps:
- store: the size of the node's store files on tmpfs (train and val splits): what the node holds;
- PSS: the proportional set size of the store's mappings summed over the job's processes (each shared page
  counted once across its mappers), at its largest;
- mappers: how many processes mapped the store, and the largest RSS of the mapping in one process.
Then, in one process on the same train split at the same imgsz, Ultralytics' own `cache=ram` (its
YOLODataset filling `ims` at construction, one tensor its forked workers share): the growth of that process's
unique memory (USS). Ultralytics runs
DDP only on CUDA, where every rank builds that copy (ultralytics#22307), so its node total is that times ranks.

    python bench/cache_memory.py --nproc 2 --workers 2 --n-images 256 --imgsz 640 --image-size 1280
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from datetime import date
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
MIB = 1 << 20

ULTRALYTICS_SNIPPET = r"""
import json, sys
import psutil
from ultralytics.cfg import get_cfg
from ultralytics.data.build import build_yolo_dataset
from ultralytics.data.utils import check_det_dataset

data_yaml, imgsz, batch = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
data = check_det_dataset(data_yaml)
cfg = get_cfg(overrides={"imgsz": imgsz, "batch": batch, "cache": "ram", "workers": 0})
me = psutil.Process()
before = me.memory_full_info().uss
dataset = build_yolo_dataset(cfg, data["train"], batch, data, mode="train")
after = me.memory_full_info().uss
ims = dataset.ims  # 8.4: one uint8 tensor (`_ImageCache`) its fork workers share; each rank builds its own
print(json.dumps({"uss_growth": after - before, "ims_bytes": int(ims.offsets[-1]), "n": len(ims.shapes)}))
"""


def store_mappings(pid: int, prefix: str) -> tuple[int, int]:
    """(PSS, RSS) in bytes of the mappings of files under `prefix` in process `pid`."""
    pss = rss = 0
    inside = False
    try:
        with open(f"/proc/{pid}/smaps") as f:
            for line in f:
                head = line.split()
                if not head[0].endswith(":"):  # a mapping's header line: address perms offset dev inode [path]
                    inside = len(head) >= 6 and head[5].startswith(prefix)
                elif inside and head[0] == "Pss:":
                    pss += int(head[1]) * 1024
                elif inside and head[0] == "Rss:":
                    rss += int(head[1]) * 1024
    except (OSError, IndexError):
        pass
    return pss, rss


class Sampler(threading.Thread):
    """The job's store mappings, sampled until stopped: the largest PSS sum and who mapped it."""

    def __init__(self, root: psutil.Process, prefix: str) -> None:
        super().__init__(daemon=True)
        self.root, self.prefix, self.stop = root, prefix, threading.Event()
        self.max_pss = self.max_rss_one = 0
        self.mappers: set[int] = set()
        self.processes: set[int] = set()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                procs = [self.root, *self.root.children(recursive=True)]
            except psutil.Error:
                break
            total = 0
            for p in procs:
                self.processes.add(p.pid)
                pss, rss = store_mappings(p.pid, self.prefix)
                total += pss
                if rss:
                    self.mappers.add(p.pid)
                    self.max_rss_one = max(self.max_rss_one, rss)
            self.max_pss = max(self.max_pss, total)
            time.sleep(0.5)


def store_bytes(shm: Path, split: str) -> int:
    return sum(f.stat().st_size for f in shm.rglob(f"{split}-*/pixels.u8"))


def run_job(a: argparse.Namespace, data_yaml: Path, shm: Path, out: Path) -> tuple[Sampler, dict[str, int], float]:
    env = {**os.environ, "YOLO_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": "", "YOLO_DDP_OUTPUTS": str(out),
           "YOLO_DDP_SHM_DIR": str(shm)}
    cmd = [sys.executable, "-m", "launcher", "+experiment=pcb_defects", f"data.path={data_yaml}", "train=cpu_quick",
           "train.epochs=1", f"data.imgsz={a.imgsz}", f"train.batch={a.batch}", f"data.workers={a.workers}",
           f"launcher.nproc_per_node={a.nproc}", "data.cache=ram", "logger=csv", f"data.cache_dir={a.cache}"]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    sampler = Sampler(psutil.Process(proc.pid), str(shm))
    sampler.start()
    log, _ = proc.communicate()
    sampler.stop.set()
    sampler.join()
    if proc.returncode:
        sys.exit(f"the job failed (rc {proc.returncode}):\n{log[-3000:]}")
    return sampler, {split: store_bytes(shm, split) for split in ("train", "val")}, time.perf_counter() - t0


def ultralytics_copy(a: argparse.Namespace, data_yaml: Path) -> dict:
    env = {**os.environ, "YOLO_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", ULTRALYTICS_SNIPPET, str(data_yaml), str(a.imgsz), str(a.batch)],
                         cwd=REPO, env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nproc", type=int, default=2, help="ranks of our job")
    ap.add_argument("--workers", type=int, default=2, help="DataLoader workers per rank")
    ap.add_argument("--n-images", type=int, default=256)
    ap.add_argument("--imgsz", type=int, default=640)
    ap.add_argument("--image-size", type=int, default=1280, help="side of the synthetic source JPEGs")
    ap.add_argument("--batch", type=int, default=8, help="global batch")
    ap.add_argument("--cache", default=".cache/yolo_ddp")
    ap.add_argument("--out", default="bench/out/cache_memory.csv")
    a = ap.parse_args()
    sys.path.insert(0, str(REPO))
    from yolo_ddp.data.synthetic import materialize

    data_yaml = materialize(Path(a.cache) / "synthetic" / f"bench-{a.n_images}-{a.image_size}", a.n_images, 16,
                            a.image_size)
    shm = Path(tempfile.mkdtemp(prefix="yolo_ddp_bench_", dir="/dev/shm"))
    runs = Path(tempfile.mkdtemp(prefix="cache_memory_"))
    try:
        sampler, held, wall = run_job(a, data_yaml, shm, runs)
    finally:
        shutil.rmtree(shm, ignore_errors=True)
        shutil.rmtree(runs, ignore_errors=True)
    theirs = ultralytics_copy(a, data_yaml)
    machine = f"{platform.node()} {os.cpu_count()} cores, {psutil.virtual_memory().total / (1 << 30):.0f} GiB"
    rows = [
        {"what": f"yolo-ddp data.cache=ram, {a.nproc} ranks x {a.workers} workers: train store on tmpfs",
         "mib": held["train"] / MIB},
        {"what": "  val store on tmpfs", "mib": held["val"] / MIB},
        {"what": f"  PSS of both stores' mappings, summed over the job's {len(sampler.processes)} processes",
         "mib": sampler.max_pss / MIB},
        {"what": f"  processes mapping it: {len(sampler.mappers)}; largest RSS of the mapping in one",
         "mib": sampler.max_rss_one / MIB},
        {"what": f"Ultralytics cache=ram, 1 process: USS growth ({theirs['n']} train images)",
         "mib": theirs["uss_growth"] / MIB},
        {"what": "  its image cache tensor", "mib": theirs["ims_bytes"] / MIB},
        {"what": f"Ultralytics DDP, {a.nproc} ranks (one copy each)", "mib": a.nproc * theirs["uss_growth"] / MIB},
        {"what": "Ultralytics DDP, 8 ranks (one copy each)", "mib": 8 * theirs["uss_growth"] / MIB},
    ]
    print(f"\n{date.today()}  {machine}  {a.n_images} train + 16 val images, {a.image_size}px JPEG -> imgsz "
          f"{a.imgsz}; our job ran {wall:.0f} s")
    print(f"{'':<92} {'MiB':>9}")
    for r in rows:
        print(f"{r['what']:<92} {r['mib']:>9.1f}")
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["date", "machine", "n_images", "image_size", "imgsz", "nproc", "workers",
                                          "what", "mib"])
        w.writeheader()
        for r in rows:
            w.writerow({"date": date.today(), "machine": machine, "n_images": a.n_images, "image_size": a.image_size,
                        "imgsz": a.imgsz, "nproc": a.nproc, "workers": a.workers, **r})
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
