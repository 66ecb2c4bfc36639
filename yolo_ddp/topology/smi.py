"""Parse `nvidia-smi topo -m` (link matrix) and `nvidia-smi topo -p2p r|w|p` (peer access) text.

Real outputs vary: TAB- or space-separated, ` X ` on the diagonal, NIC rows (`mlx5_N`, `NICn`) and
columns after the GPU columns, an optional `GPU NUMA ID` column, empty cells, legends, and ANSI
colour codes when captured from a terminal. Only the GPU x GPU block and each GPU row's NUMA
affinity are read; everything else is skipped, never guessed at.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import replace

from yolo_ddp.topology.model import PCIE_LEVELS, SELF, GpuInfo, Link, NodeTopology

ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
GPU_NAME = re.compile(r"^GPU(\d+)$")
NV = re.compile(r"^NV(\d+)$")
MATRIX_CODES = re.compile(r"^(X|NV\d+|PIX|PXB|PHB|NODE|SYS|SOC)$")
P2P_OK = "OK"
NVLINKS_PER_GPU_MAX = 18  # H100/H200 SXM; more per-pair links than this in total means an NVSwitch


class TopoParseError(ValueError):
    """The text is not an `nvidia-smi topo` matrix."""


def _rows(text: str) -> tuple[list[str], list[list[str]]]:
    """Header device names and the GPU rows' tokens (diagonal `X` kept as a token)."""
    lines = [ANSI.sub("", line).rstrip() for line in text.splitlines()]
    # The header names GPU0; GPU0's own row names it too but also has the `X` diagonal.
    header_at = next((i for i, line in enumerate(lines) if "GPU0" in line.split() and "X" not in line.split()),
                     None)
    if header_at is None:
        raise TopoParseError("no header line with a GPU0 column: is this `nvidia-smi topo -m` output?")
    header = lines[header_at].split()
    devices = []
    for token in header:
        if token in ("CPU", "NUMA", "GPU") or token.startswith("Affinity"):
            break  # `CPU Affinity`, `NUMA Affinity`, `GPU NUMA ID`: per-row facts, not devices
        devices.append(token)
    rows = []
    for line in lines[header_at + 1:]:
        tokens = line.split()
        if not tokens or tokens[0].endswith(":") or tokens[0] == "Legend":
            if rows:
                break  # the matrix ended; legends follow
            continue
        if GPU_NAME.match(tokens[0]):
            rows.append(tokens)
    return devices, rows


def _gpu_columns(devices: list[str]) -> list[int]:
    cols = [i for i, name in enumerate(devices) if GPU_NAME.match(name)]
    if not cols:
        raise TopoParseError("the header names no GPU columns")
    return cols


def _link(code: str) -> Link:
    code = code.upper()
    if code == "X":
        return SELF
    nv = NV.match(code)
    if nv:
        return Link("nvlink", nvlinks=int(nv.group(1)))
    if code == "SOC":
        code = "SYS"
    if code in PCIE_LEVELS:
        return Link("pcie", level=code)
    raise TopoParseError(f"unknown link code {code!r} in the GPU matrix")


def _affinity(tokens: list[str], n_gpus: int) -> tuple[tuple[int, ...], int | None]:
    """CPU affinity (`0-15,32-47`) and NUMA affinity: the first non-code past the GPU cells, and the next.

    Scanning (rather than counting columns) survives empty NIC cells, which shift the columns.
    """
    tail = tokens[1 + n_gpus:]
    while tail and MATRIX_CODES.match(tail[0]):
        tail = tail[1:]
    cpus = parse_cpu_list(tail[0]) if tail else ()
    numa = int(tail[1]) if len(tail) >= 2 and tail[1].isdigit() else None
    return cpus, numa


def parse_cpu_list(text: str) -> tuple[int, ...]:
    """`0-15,32-47` (the kernel's cpulist format) as CPU ids; () for `N/A` or anything else."""
    cpus: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        if not lo.isdigit() or (hi and not hi.isdigit()):
            return ()
        cpus.extend(range(int(lo), int(hi or lo) + 1))
    return tuple(cpus)


def parse_topo_matrix(text: str, p2p_text: str | None = None, source: str = "nvidia-smi") -> NodeTopology:
    devices, rows = _rows(text)
    cols = _gpu_columns(devices)
    n = len(cols)
    if len(rows) < n:
        raise TopoParseError(f"the header names {n} GPUs but only {len(rows)} GPU rows follow")
    links, gpus = [], []
    for r, tokens in enumerate(rows[:n]):
        cells = tokens[1:]
        if len(cells) < n:
            raise TopoParseError(f"row {tokens[0]} has {len(cells)} cells, expected at least {n}")
        links.append(tuple(_link(cells[c]) for c in cols))
        cpus, numa = _affinity(tokens, n)
        gpus.append(GpuInfo(index=r, numa_node=numa, cpu_affinity=cpus))
    peer = parse_p2p_matrix(p2p_text) if p2p_text else tuple(
        tuple(None for _ in range(n)) for _ in range(n))
    if len(peer) != n:
        raise TopoParseError(f"the P2P matrix has {len(peer)} GPUs but the link matrix {n}")
    for i in range(n):
        for j in range(n):
            if i != j and links[i][j].kind == "nvlink" and peer[i][j] is None:
                peer = _set(peer, i, j, True)  # NVLink peers always have P2P
    return NodeTopology(source=source, gpus=tuple(gpus), links=tuple(links), peer_access=peer,
                        nvswitch=_looks_like_nvswitch(links))


def _set(m: tuple, i: int, j: int, value) -> tuple:
    rows = [list(r) for r in m]
    rows[i][j] = value
    return tuple(tuple(r) for r in rows)


def _looks_like_nvswitch(links: list[tuple[Link, ...]]) -> bool:
    """Every pair NVLinked and more links per GPU than any GPU has: the links go through a switch."""
    n = len(links)
    if n < 3:
        return False
    per_gpu = [sum(link.nvlinks for j, link in enumerate(row) if j != i and link.kind == "nvlink")
               for i, row in enumerate(links)]
    all_nv = all(links[i][j].kind == "nvlink" for i in range(n) for j in range(n) if i != j)
    return all_nv and min(per_gpu) > NVLINKS_PER_GPU_MAX


def parse_p2p_matrix(text: str) -> tuple[tuple[bool | None, ...], ...]:
    """`nvidia-smi topo -p2p r` (or w, p): OK means peer access; NS/CNS/GNS/TNS/DR mean none; U unknown."""
    devices, rows = _rows(text)
    cols = _gpu_columns(devices)
    out = []
    for tokens in rows[:len(cols)]:
        cells = tokens[1:]
        out.append(tuple(None if cells[c] in ("X", "U") else cells[c] == P2P_OK for c in cols))
    return tuple(out)


def with_gpu_query(node: NodeTopology, text: str) -> NodeTopology:
    """Add what `nvidia-smi --query-gpu=GPU_QUERY --format=csv,noheader,nounits` says (UUID, PCI bus id, name,
    memory, compute capability: what maps the job's CUDA devices onto the matrix) to the matrix's GPUs."""
    gpus = list(node.gpus)
    for line in text.splitlines():
        cells = [c.strip() for c in line.split(",")]
        if len(cells) < 5 or not cells[0].isdigit() or int(cells[0]) >= len(gpus):
            continue
        i = int(cells[0])
        cc = tuple(int(x) for x in cells[5].split(".")) if len(cells) > 5 and re.fullmatch(r"\d+\.\d+", cells[5]) \
            else gpus[i].compute_capability
        gpus[i] = replace(gpus[i], uuid=cells[1], pci_bus_id=normalise_bus_id(cells[2]), name=cells[3],
                          memory_mib=int(cells[4]) if cells[4].isdigit() else 0, compute_capability=cc)
    return replace(node, gpus=tuple(gpus))


def normalise_bus_id(text: str) -> str:
    """`00000000:07:00.0` (NVML, nvidia-smi) and `0000:07:00.0` (sysfs) name the same device."""
    parts = text.strip().lower().split(":")
    if len(parts) == 3 and all(parts):
        return f"{int(parts[0], 16):04x}:{parts[1]}:{parts[2]}"
    return ":".join(parts)


GPU_QUERY = "index,uuid,pci.bus_id,name,memory.total,compute_cap"


def _smi(exe: str, args: list[str], timeout_s: float) -> str | None:
    try:
        return subprocess.run([exe, *args], capture_output=True, text=True, timeout=timeout_s, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None


def run_nvidia_smi(timeout_s: float = 20.0) -> tuple[str, str | None, str | None] | None:
    """The live `topo -m`, `topo -p2p r` and per-GPU query text, or None when nvidia-smi is missing or fails."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    topo = _smi(exe, ["topo", "-m"], timeout_s)
    if topo is None:
        return None
    p2p = _smi(exe, ["topo", "-p2p", "r"], timeout_s)  # older drivers have no -p2p
    fmt = "--format=csv,noheader,nounits"
    query = _smi(exe, [f"--query-gpu={GPU_QUERY}", fmt], timeout_s) or \
        _smi(exe, [f"--query-gpu={GPU_QUERY.removesuffix(',compute_cap')}", fmt], timeout_s)  # drivers < 510
    return topo, p2p, query
