"""Pin each GPU rank to the CPUs nearest its GPU (its NUMA node), as the probe recorded them.

A rank whose data-loading and host-to-device copies run on the far socket pays the inter-socket link
on every batch. The CPUs come from NVML's `nvmlDeviceGetCpuAffinity` or `nvidia-smi topo -m`'s
"CPU Affinity" column, else from the GPU's NUMA node in sysfs; they are intersected with the CPUs
this process may use (a container's or scheduler's cpuset always wins), and never leave it empty.
"""

from __future__ import annotations

import os
from pathlib import Path

from yolo_ddp.topology.model import GpuInfo, NodeTopology
from yolo_ddp.topology.smi import parse_cpu_list

SYSFS_NODE = Path("/sys/devices/system/node")


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
