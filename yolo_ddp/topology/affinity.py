"""Pin each GPU rank to the CPUs nearest its GPU (its NUMA node), as the probe recorded them.

A rank whose data-loading and host-to-device copies run on the far socket pays the inter-socket link
on every batch. The CPUs come from NVML's `nvmlDeviceGetCpuAffinity` or `nvidia-smi topo -m`'s
"CPU Affinity" column, else from the GPU's NUMA node in sysfs; they are intersected with the CPUs
this process may use (a container's or scheduler's cpuset always wins), and never leave it empty.

`cpus_per_rank` is the CPU budget per-rank pools are sized from (DALI's source workers and threads): the CPUs
this process may run on (after pinning) and the cgroup's CPU quota, whichever is smaller, over the node's
ranks; `os.cpu_count()` sees neither.
"""

from __future__ import annotations

import math
import os
from pathlib import Path, PurePosixPath

from yolo_ddp.topology.model import GpuInfo, NodeTopology
from yolo_ddp.topology.smi import parse_cpu_list

SYSFS_NODE = Path("/sys/devices/system/node")
CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_CGROUP = Path("/proc/self/cgroup")


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _ancestors(path: str) -> list[str]:
    p = PurePosixPath("/" + path.strip("/"))
    return [str(p), *(str(a) for a in p.parents)]


def cgroup_cpu_quota(root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_CGROUP) -> float | None:
    """CPUs the cgroup quota grants this process (a container's `--cpus`, a Kubernetes CPU limit): the smallest
    `quota / period` along its cgroup path, v2 (`cpu.max`) or v1 (`cpu.cfs_quota_us`); None: no quota."""
    limits = []
    for line in (_read(proc_cgroup) or "").splitlines():
        _, controllers, path = (line.split(":", 2) + ["", ""])[:3]
        for rel in _ancestors(path):
            here = root / rel.lstrip("/")
            if controllers == "":  # v2: "max 100000" or "200000 100000"
                quota, _, period = (_read(here / "cpu.max") or "max").partition(" ")
            elif "cpu" in controllers.split(","):  # v1
                here = root / "cpu" / rel.lstrip("/")
                quota, period = _read(here / "cpu.cfs_quota_us") or "-1", _read(here / "cpu.cfs_period_us") or ""
            else:
                break
            if quota not in ("max", "-1") and period.isdigit() and quota.isdigit() and int(period):
                limits.append(int(quota) / int(period))
    return min(limits) if limits else None


def cpus_per_rank(local_world: int) -> int:
    """CPUs one of `local_world` ranks on this node may keep busy, at least 1. Ranks pinned to a NUMA node share
    its CPUs with fewer ranks than `local_world`: the figure is then a lower bound, the safe side of it."""
    allowed = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    quota = cgroup_cpu_quota()
    usable = min(allowed, quota if quota is not None else math.inf)
    return max(1, int(usable // max(1, local_world)))


def nearest_cpus(gpu: GpuInfo) -> set[int]:
    if gpu.cpu_affinity:
        return set(gpu.cpu_affinity)
    if gpu.numa_node is None:
        return set()
    try:
        return set(parse_cpu_list((SYSFS_NODE / f"node{gpu.numa_node}" / "cpulist").read_text().strip()))
    except OSError:
        return set()


def pin_to_gpu_cpus(node: NodeTopology, local_rank: int) -> str | None:
    """Pin this process (the calling thread and every thread it starts later: call it before the process group
    and the data loaders exist) to the CPUs nearest `node`'s GPU of `local_rank`; `node` is the job's view.
    Returns the line to log, None where there is nothing to do (no GPU, nothing known, already there)."""
    if local_rank >= node.n_gpus:
        return None  # a CPU job, or no GPU for this rank (the device check refuses that later)
    gpu = node.gpus[local_rank]
    near = nearest_cpus(gpu)
    if not near:
        return None
    allowed = os.sched_getaffinity(0)
    target = near & allowed
    where = f"GPU{gpu.index}" + ("" if gpu.numa_node is None else f" (NUMA node {gpu.numa_node})")
    if not target:
        return (f"CPU affinity: local rank {local_rank} left on its {len(allowed)} allowed CPUs: none of them is "
                f"near {where}")
    if target == allowed:
        return None
    os.sched_setaffinity(0, target)
    return f"CPU affinity: local rank {local_rank} pinned to {len(target)} of {len(allowed)} CPUs, nearest {where}"
