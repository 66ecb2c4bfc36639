"""Probe one node through NVML (`nvidia-ml-py`, imported as `pynvml`); never initialises CUDA.

Per GPU pair: active NVLinks (counted per link with `nvmlDeviceGetNvLinkState` and
`nvmlDeviceGetNvLinkRemotePciInfo`; a link that does not exist raises, which is normal), P2P read
status, and the PCIe common ancestor. A link whose remote end is an NVSwitch connects its GPU to every
other switched GPU, so a switched pair gets the smaller of the two GPUs' switch-link counts. Per GPU, the
PCIe generation and width are the link's maximum, not the downshifted state of an idle GPU.
"""

from __future__ import annotations

import os
import socket
from typing import Any

from yolo_ddp.topology.model import SELF, GpuInfo, Link, NodeTopology

# nvmlGpuTopologyLevel_t → nvidia-smi's PCIe codes (INTERNAL: two GPUs on one board, as close as PIX).
ANCESTOR_LEVEL = {0: "PIX", 10: "PIX", 20: "PXB", 30: "PHB", 40: "NODE", 50: "SYS"}


class NvmlUnavailable(RuntimeError):
    """No NVML library, no driver, or no GPU: the caller falls back to the next source."""


def _load() -> Any:
    try:
        import pynvml
    except ImportError as e:  # pragma: no cover - nvidia-ml-py is a dependency
        raise NvmlUnavailable(f"nvidia-ml-py is not installed: {e}") from None
    return pynvml


def _int(value: Any) -> int:
    """nvidia-ml-py defines some enum constants as 1-tuples (NVML_P2P_CAPS_INDEX_READ = (0,))."""
    return int(value[0]) if isinstance(value, tuple) else int(value)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _bus_id(value: Any) -> str:
    """`00000000:07:00.0` and `0000:07:00.0` name the same device: normalise the domain width."""
    parts = _text(value).strip().lower().split(":")
    if len(parts) == 3:
        return f"{int(parts[0], 16):04x}:{parts[1]}:{parts[2]}"
    return ":".join(parts)


def _try(fn, *args, default=None):
    try:
        return fn(*args)
    except Exception:  # NVMLError_NotSupported and friends: the fact is just unknown
        return default


def _nvlinks(nvml: Any, handle: Any, bus_to_index: dict[str, int]) -> tuple[dict[int, int], int]:
    """Active links per peer GPU index, and links whose remote end is an NVSwitch."""
    per_peer: dict[int, int] = {}
    to_switch = 0
    for link in range(int(getattr(nvml, "NVML_NVLINK_MAX_LINKS", 18))):
        try:
            if nvml.nvmlDeviceGetNvLinkState(handle, link) != nvml.NVML_FEATURE_ENABLED:
                continue
            remote_type = _try(nvml.nvmlDeviceGetNvLinkRemoteDeviceType, handle, link)
            if remote_type == nvml.NVML_NVLINK_DEVICE_TYPE_SWITCH:
                to_switch += 1
                continue
            peer = bus_to_index.get(_bus_id(nvml.nvmlDeviceGetNvLinkRemotePciInfo(handle, link).busId))
        except nvml.NVMLError:
            continue  # links that don't exist or are down raise: normal
        if peer is not None:
            per_peer[peer] = per_peer.get(peer, 0) + 1
        else:
            to_switch += 1  # active, but the remote is no GPU we know: a switch (older drivers lack the type)
    return per_peer, to_switch


def _pcie_link(nvml: Any, handle: Any) -> tuple[int | None, int | None]:
    """The link's generation and width at full speed. Idle GPUs downshift (often to Gen1), so the current
    values at job start understate the link the all-reduce will run on: ask for the maximum the GPU and its
    slot both support, then the GPU's own maximum (it may overstate an older slot), then the current link."""
    def first(*queries: str) -> int | None:
        for name in queries:
            value = _try(getattr(nvml, name), handle) if hasattr(nvml, name) else None
            if isinstance(value, int) and value > 0:
                return value
        return None

    gen = first("nvmlDeviceGetMaxPcieLinkGeneration", "nvmlDeviceGetGpuMaxPcieLinkGeneration",
                "nvmlDeviceGetCurrPcieLinkGeneration")
    return gen, first("nvmlDeviceGetMaxPcieLinkWidth", "nvmlDeviceGetCurrPcieLinkWidth")


def _cpu_affinity(nvml: Any, handle: Any) -> tuple[int, ...]:
    """The CPUs nearest the GPU: NVML's bitmask, 64 CPUs per word, as CPU ids."""
    words = _try(nvml.nvmlDeviceGetCpuAffinity, handle, -(-(os.cpu_count() or 1) // 64), default=()) or ()
    return tuple(64 * w + bit for w, mask in enumerate(words) for bit in range(64) if int(mask) >> bit & 1)


def _gpu(nvml: Any, index: int, handle: Any) -> GpuInfo:
    mem = _try(nvml.nvmlDeviceGetMemoryInfo, handle)
    cc = _try(nvml.nvmlDeviceGetCudaComputeCapability, handle)
    numa = _try(nvml.nvmlDeviceGetNumaNodeId, handle) if hasattr(nvml, "nvmlDeviceGetNumaNodeId") else None
    pci = _try(nvml.nvmlDeviceGetPciInfo, handle)
    pcie_gen, pcie_width = _pcie_link(nvml, handle)
    return GpuInfo(
        index=index, name=_text(_try(nvml.nvmlDeviceGetName, handle, default="unknown")),
        memory_mib=int(mem.total) // 2**20 if mem is not None else 0,
        compute_capability=tuple(cc) if cc else None,
        numa_node=numa if isinstance(numa, int) and numa >= 0 else None,
        pcie_gen=pcie_gen, pcie_width=pcie_width,
        uuid=_text(_try(nvml.nvmlDeviceGetUUID, handle, default="")),
        pci_bus_id=_bus_id(pci.busId) if pci is not None else "",
        cpu_affinity=_cpu_affinity(nvml, handle),
    )


def probe_nvml(nvml: Any = None) -> NodeTopology:
    """This node through NVML; raises `NvmlUnavailable` where NVML cannot answer (no driver, no GPU)."""
    nvml = nvml if nvml is not None else _load()
    try:
        nvml.nvmlInit()
    except Exception as e:
        raise NvmlUnavailable(f"NVML could not start ({e})") from None
    try:
        count = nvml.nvmlDeviceGetCount()
        if count == 0:
            raise NvmlUnavailable("NVML sees no GPU")
        handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
        gpus = tuple(_gpu(nvml, i, h) for i, h in enumerate(handles))
        bus_to_index = {_bus_id(nvml.nvmlDeviceGetPciInfo(h).busId): i for i, h in enumerate(handles)}
        nv = [_nvlinks(nvml, h, bus_to_index) for h in handles]
        read = _int(nvml.NVML_P2P_CAPS_INDEX_READ)
        links, peer = [], []
        for i, hi in enumerate(handles):
            row, prow = [], []
            for j, hj in enumerate(handles):
                if i == j:
                    row.append(SELF)
                    prow.append(None)
                    continue
                direct = nv[i][0].get(j, 0)
                switched = min(nv[i][1], nv[j][1])
                if direct or switched:
                    row.append(Link("nvlink", nvlinks=direct + switched))
                else:
                    level = _try(nvml.nvmlDeviceGetTopologyCommonAncestor, hi, hj)
                    row.append(Link("pcie", level=ANCESTOR_LEVEL.get(level, "SYS")))
                status = _try(nvml.nvmlDeviceGetP2PStatus, hi, hj, read)
                prow.append(None if status is None else status == nvml.NVML_P2P_STATUS_OK)
            links.append(tuple(row))
            peer.append(tuple(prow))
        return NodeTopology(source="nvml", gpus=gpus, links=tuple(links), peer_access=tuple(peer),
                            nvswitch=any(s for _, s in nv), hostname=socket.gethostname())
    except nvml.NVMLError as e:
        raise NvmlUnavailable(f"NVML failed while probing ({e})") from None
    finally:
        _try(nvml.nvmlShutdown)
