"""Which of the node's GPUs this job's local ranks train on, in local-rank order.

NVML and `nvidia-smi` number every GPU of the node in PCI bus order and ignore CUDA_VISIBLE_DEVICES, while
local rank r trains on CUDA ordinal r, which counts only the visible GPUs, in CUDA_DEVICE_ORDER
(FASTEST_FIRST unless set to PCI_BUS_ID). A job on GPUs 4-7 must be planned from GPUs 4-7.

Where CUDA can start (a worker), each ordinal's UUID / PCI bus id from torch is the truth. Otherwise the
environment is read as torch reads it (`torch.cuda._parse_visible_devices`, the parser behind torch's own
NVML device count: indices, `GPU-` UUID prefixes, `MIG-` ids, the first invalid entry ends the list).
"""

from __future__ import annotations

import itertools
import os

import torch

from yolo_ddp.topology.model import NodeTopology, select
from yolo_ddp.topology.smi import normalise_bus_id


def cuda_device_ids(n: int) -> list[tuple[str, str]] | None:
    """(UUID, PCI bus id) of CUDA ordinals 0..n-1 from torch, or None where CUDA is not available."""
    try:
        if not torch.cuda.is_available():
            return None
        ids = []
        for i in range(min(n, torch.cuda.device_count())):
            p = torch.cuda.get_device_properties(i)
            uuid = str(p.uuid)
            ids.append((f"GPU-{uuid}" if uuid and not uuid.startswith("GPU-") else uuid,
                        f"{p.pci_domain_id:04x}:{p.pci_bus_id:02x}:{p.pci_device_id:02x}.0"))
        return ids
    except (RuntimeError, AssertionError, AttributeError):  # a broken driver: the env is the next best thing
        return None


def cuda_order(node: NodeTopology) -> tuple[list[int], str]:
    """The node's GPU indices in CUDA's enumeration order (before CUDA_VISIBLE_DEVICES), and a note if guessed."""
    by_bus = sorted(range(node.n_gpus), key=lambda i: (node.gpus[i].pci_bus_id, i))  # NVML's order is bus order
    if os.environ.get("CUDA_DEVICE_ORDER", "FASTEST_FIRST") == "PCI_BUS_ID":
        return by_bus, ""
    if len({(g.name, g.compute_capability) for g in node.gpus}) <= 1:
        return by_bus, ""  # identical GPUs: fastest first ties, and CUDA breaks ties by bus id
    # CUDA ranks a mixed node by its own speed estimate; newer architectures first is the nearest guess.
    fastest = sorted(by_bus, key=lambda i: node.gpus[i].compute_capability or (0, 0), reverse=True)
    return fastest, "CUDA_DEVICE_ORDER=FASTEST_FIRST on mixed GPUs: CUDA's order guessed by compute capability"


def _by_ids(node: NodeTopology, ids: list[tuple[str, str]]) -> list[int] | None:
    uuid_at = {g.uuid.lower(): i for i, g in enumerate(node.gpus) if g.uuid}
    bus_at = {g.pci_bus_id: i for i, g in enumerate(node.gpus) if g.pci_bus_id}
    picked = [uuid_at.get(uuid.lower(), bus_at.get(normalise_bus_id(bus))) for uuid, bus in ids]
    return None if None in picked else picked


def _from_env(node: NodeTopology) -> tuple[list[int] | None, str]:
    visible = torch.cuda._parse_visible_devices()
    order, note = cuda_order(node)
    if not visible or isinstance(visible[0], int):
        # CUDA drops entries from the first one past its device count.
        return [order[i] for i in itertools.takewhile(lambda i: i < len(order), visible)], note
    if visible[0].startswith("MIG-"):
        return None, "MIG instances are not mapped to GPUs"
    uuids = [g.uuid for g in node.gpus]
    if not all(uuids):
        return None, "the probe gave no GPU UUIDs to match against"
    picked = torch.cuda._transform_uuid_to_ordinals(visible, uuids)  # unique prefixes, as CUDA matches them
    return (picked, "") if picked else (None, "no unique GPU of this node matches")


def job_gpu_indices(node: NodeTopology, local_ranks: int,
                    cuda_ids: list[tuple[str, str]] | None = None) -> tuple[tuple[int, ...] | None, str]:
    """Node GPU index of each local rank's device (None where it cannot be told), with a note."""
    if cuda_ids:
        picked = _by_ids(node, cuda_ids)
        if picked is not None:
            return tuple(picked[:local_ranks]), ""
    picked, note = _from_env(node)
    return (None if picked is None else tuple(picked[:local_ranks])), note


def job_view(node: NodeTopology, local_ranks: int, cuda_ids: list[tuple[str, str]] | None = None) -> NodeTopology:
    """The node as this job sees it: its GPUs in local-rank order, links and peer access among them only.

    Where the job's GPUs cannot be told apart, the first ones are assumed and peer access is marked unknown,
    so nothing is switched off on a guess.
    """
    if node.n_gpus == 0:
        return node
    picked, note = job_gpu_indices(node, local_ranks, cuda_ids)
    if picked == tuple(range(node.n_gpus)) and not note:
        return node
    if picked is not None:
        return select(node, picked, f"job GPUs {list(picked)} of {node.n_gpus}" + (f" ({note})" if note else ""))
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    first = select(node, tuple(range(min(local_ranks, node.n_gpus))),
                   f"CUDA_VISIBLE_DEVICES={visible} not mapped to this node's GPUs ({note}): the first "
                   f"{min(local_ranks, node.n_gpus)} assumed, peer access unknown")
    unknown = tuple(tuple(None for _ in first.gpus) for _ in first.gpus)
    return NodeTopology(**{**first.__dict__, "peer_access": unknown})
