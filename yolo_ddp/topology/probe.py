"""Probe this node once and share the result with every rank.

Sources in order: NVML, then `nvidia-smi topo -m` (+ `topo -p2p r`), then torch's
`can_device_access_peer` (only where CUDA may be initialised: never in the launcher's parent process,
whose children could not use CUDA after a fork), else a "cpu" topology. Probing never raises.

Sharing: local rank 0 probes with NVML / nvidia-smi only (no CUDA yet) and writes a node-local file
(atomically, named by the elastic run id, restart count and host) that the other local ranks read.
This happens before the process group exists, because NCCL reads its environment when it starts.
After init, `gather_job_topology` collects one topology per node into the job's view and removes
the file.
"""

from __future__ import annotations

import logging
import os
import socket
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from yolo_ddp import dist
from yolo_ddp.topology.model import (
    GpuInfo,
    JobTopology,
    Link,
    NodeTopology,
    cpu_node,
    node_from_json,
    node_to_json,
)
from yolo_ddp.topology.nvml import NvmlUnavailable, probe_nvml
from yolo_ddp.topology.smi import TopoParseError, parse_topo_matrix, run_nvidia_smi, with_gpu_query
from yolo_ddp.topology.visible import cuda_device_ids, job_view

log = logging.getLogger("yolo_ddp.topology")
SHARE_WAIT_S = 120.0


def probe_node(allow_cuda_init: bool = False) -> NodeTopology:
    """This node's topology from the best source that answers; a "cpu" topology when none does."""
    host = socket.gethostname()
    notes = []
    try:
        return probe_nvml()
    except NvmlUnavailable as e:
        notes.append(f"nvml: {e}")
    smi = run_nvidia_smi()
    if smi is not None:
        try:
            node = parse_topo_matrix(smi[0], smi[1])
            node = with_gpu_query(node, smi[2]) if smi[2] else node
            return replace(node, hostname=host, notes=tuple(notes))
        except TopoParseError as e:
            notes.append(f"nvidia-smi: {e}")
    else:
        notes.append("nvidia-smi: not found or failed")
    if allow_cuda_init:
        node = _probe_torch(host, tuple(notes))
        if node is not None:
            return node
    return cpu_node(host, "; ".join(notes))


def _probe_torch(host: str, notes: tuple[str, ...]) -> NodeTopology | None:
    import torch

    if not torch.cuda.is_available():
        return None
    n = torch.cuda.device_count()
    gpus = []
    for i in range(n):
        p = torch.cuda.get_device_properties(i)
        gpus.append(GpuInfo(index=i, name=p.name, memory_mib=p.total_memory // 2**20,
                            compute_capability=(p.major, p.minor)))
    # torch cannot tell NVLink from PCIe: call every pair PCIe (the conservative guess) with its P2P bit.
    peer = tuple(tuple(None if i == j else torch.cuda.can_device_access_peer(i, j) for j in range(n))
                 for i in range(n))
    links = tuple(tuple(Link("none") if i == j else Link("pcie", level="PHB") for j in range(n)) for i in range(n))
    return NodeTopology(source="torch", gpus=tuple(gpus), links=links, peer_access=peer, hostname=host,
                        notes=(*notes, "torch: link kinds unknown, assumed PCIe (PHB)"))


def _share_file() -> Path:
    run = os.environ.get("TORCHELASTIC_RUN_ID", "norun")
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    return Path(tempfile.gettempdir()) / f"yolo_ddp-topology-{run}-{attempt}-{socket.gethostname()}.json"


def node_topology_before_init() -> NodeTopology:
    """This node as this job's local ranks use it (its GPUs in local-rank order), before the process group
    exists (see the module docstring)."""
    local_ranks = int(os.environ.get("LOCAL_WORLD_SIZE", 1))
    return job_view(_whole_node(), local_ranks, cuda_device_ids(local_ranks))


def _whole_node() -> NodeTopology:
    if not dist.under_elastic_agent():
        return probe_node(allow_cuda_init=False)  # a single process: nothing to share
    path = _share_file()
    if dist.get_local_rank() == 0:
        # Workers may initialise CUDA, but only after the group is up; NVML / nvidia-smi are enough here.
        node = probe_node(allow_cuda_init=False)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(node_to_json(node))
        tmp.replace(path)  # atomic: readers never see half a file
        return node
    deadline = time.monotonic() + SHARE_WAIT_S
    while not path.exists():
        if time.monotonic() > deadline:
            log.warning(f"local rank 0 wrote no topology to {path} within {SHARE_WAIT_S:.0f} s; probing here")
            return probe_node(allow_cuda_init=False)
        time.sleep(0.05)
    return node_from_json(path.read_text())


def gather_job_topology(node: NodeTopology) -> JobTopology:
    """Every rank gets every node's topology (one per node: local rank 0's)."""
    mine = node if dist.get_local_rank() == 0 else None
    if not dist.is_dist():
        return JobTopology(nodes=(node,), ranks_per_node=dist.get_world_size())
    import torch.distributed as tdist

    everyone: list = [None] * dist.get_world_size()
    tdist.all_gather_object(everyone, mine)
    nodes = tuple(n for n in everyone if n is not None)
    if mine is not None:
        _share_file().unlink(missing_ok=True)  # every local rank read it before it could join the group
    return JobTopology(nodes=nodes or (node,), ranks_per_node=dist.get_world_size() // max(1, len(nodes)))
