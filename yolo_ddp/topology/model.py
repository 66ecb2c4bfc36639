"""Typed topology: GPUs, the pairwise link matrix and peer access of one node, and the job's nodes.

Links are ranked by how fast a ring all-reduce can run over them, so "the worst link" and "a ring's
slowest hop" are plain `min` over ranks. Everything here is picklable and JSON-round-trips, because
the probe runs once per node and is shared with every rank (and with a planning team, as a file).
"""

from __future__ import annotations

import itertools
import json
from dataclasses import asdict, dataclass

# PCIe levels from nvidia-smi's legend, nearest first (SOC is what old drivers print for SYS).
PCIE_LEVELS = ("PIX", "PXB", "PHB", "NODE", "SYS")
LINK_KINDS = ("nvlink", "pcie", "net", "cpu", "none")
RING_EXACT_MAX_GPUS = 9  # brute-force the best ring up to 8! orderings; beyond that, the worst pair


@dataclass(frozen=True)
class Link:
    kind: str  # nvlink | pcie | net (between nodes) | cpu (processes on one host, no GPU) | none
    nvlinks: int = 0  # bonded NVLinks between the pair (through an NVSwitch: the GPU's own link count)
    level: str = ""  # PCIe level (PIX ... SYS) for kind == pcie

    @property
    def label(self) -> str:
        return {"nvlink": f"NV{self.nvlinks}", "pcie": self.level, "net": "NET", "cpu": "CPU"}.get(self.kind, "-")

    @property
    def rank(self) -> int:
        """Larger is faster: NVLink by link count, then PCIe by nearness, then network, then nothing."""
        if self.kind == "nvlink":
            return 100 + self.nvlinks
        if self.kind == "pcie":
            return 50 - PCIE_LEVELS.index(self.level)
        return {"cpu": 40, "net": 10}.get(self.kind, 0)


SELF = Link("none")


@dataclass(frozen=True)
class GpuInfo:
    index: int
    name: str = "unknown"
    memory_mib: int = 0
    compute_capability: tuple[int, int] | None = None
    numa_node: int | None = None
    pcie_gen: int | None = None
    pcie_width: int | None = None
    uuid: str = ""  # GPU-xxxxxxxx-...: how CUDA_VISIBLE_DEVICES and torch name the GPU, whatever the order
    pci_bus_id: str = ""  # 0000:18:00.0 (domain:bus:device.function, lower case)
    cpu_affinity: tuple[int, ...] = ()  # CPUs nearest the GPU (its NUMA node's), empty when unknown


@dataclass(frozen=True)
class NodeTopology:
    """One node as its local rank 0 (or the node's launcher process) saw it."""

    source: str  # nvml | nvidia-smi | torch | file | cpu
    gpus: tuple[GpuInfo, ...] = ()
    links: tuple[tuple[Link, ...], ...] = ()  # links[i][j]; the diagonal is SELF
    peer_access: tuple[tuple[bool | None, ...], ...] = ()  # None: unknown (no P2P data for this pair)
    nvswitch: bool = False
    hostname: str = ""
    notes: tuple[str, ...] = ()

    @property
    def n_gpus(self) -> int:
        return len(self.gpus)

    def pairs(self) -> list[tuple[int, int]]:
        return list(itertools.combinations(range(self.n_gpus), 2))

    def p2p(self, i: int, j: int) -> bool | None:
        return self.peer_access[i][j] if self.peer_access else None

    def worst_link(self) -> Link:
        if self.n_gpus < 2:
            return Link("cpu") if self.n_gpus == 0 else SELF
        return min((self.links[i][j] for i, j in self.pairs()), key=lambda link: link.rank)

    def ring_bottleneck(self) -> Link:
        """The slowest hop of the best ring over all GPUs: what a ring all-reduce runs at.

        A box with one NVLink bridge among PCIe GPUs still has PCIe hops in every ring, while a
        hybrid cube mesh (DGX-1) has all-NVLink rings although some pairs are not linked.
        """
        n = self.n_gpus
        if n < 2 or n > RING_EXACT_MAX_GPUS:
            return self.worst_link()
        best = None
        for order in itertools.permutations(range(1, n)):
            ring = (0, *order)
            if n > 2 and ring[1] > ring[-1]:
                continue  # a ring and its mirror image have the same hops
            hop = min((self.links[a][b] for a, b in zip(ring, ring[1:] + ring[:1], strict=True)),
                      key=lambda link: link.rank)
            best = hop if best is None or hop.rank > best.rank else best
        return best

    def all_peer_access(self) -> bool | None:
        """True if every pair has P2P, False if any pair lacks it, None if unknown."""
        values = [self.p2p(i, j) for i, j in self.pairs()]
        if any(v is False for v in values):
            return False
        return True if values and all(v is True for v in values) else None


@dataclass(frozen=True)
class JobTopology:
    """Every node of the job; the strategy is chosen from this."""

    nodes: tuple[NodeTopology, ...]
    ranks_per_node: int = 1

    @property
    def nnodes(self) -> int:
        return len(self.nodes)

    @property
    def is_cpu(self) -> bool:
        return all(node.n_gpus == 0 for node in self.nodes)

    def worst_link(self) -> Link:
        """The slowest hop any ring over the job's ranks must take."""
        if self.nnodes > 1:
            return Link("net")
        node = self.nodes[0]
        if node.n_gpus == 0:
            return Link("cpu")
        if self.ranks_per_node < node.n_gpus:  # only the first N GPUs take part
            node = restrict(node, self.ranks_per_node)
        return node.ring_bottleneck() if node.n_gpus > 1 else Link("none")

    def peer_access(self) -> bool | None:
        values = [n.all_peer_access() for n in self.nodes if n.n_gpus > 1]
        if any(v is False for v in values):
            return False
        return True if values and all(v is True for v in values) else None

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)


def restrict(node: NodeTopology, n: int) -> NodeTopology:
    """The node as seen by a job that uses only its first `n` GPUs (one per local rank)."""
    return select(node, tuple(range(min(n, node.n_gpus))))


def select(node: NodeTopology, indices: tuple[int, ...], note: str = "") -> NodeTopology:
    """The node as seen by a job whose local rank r uses the node's GPU `indices[r]` (links and peer access
    among those GPUs only; `GpuInfo.index` keeps the node's numbering)."""
    return NodeTopology(
        source=node.source, gpus=tuple(node.gpus[i] for i in indices),
        links=tuple(tuple(node.links[i][j] for j in indices) for i in indices),
        peer_access=tuple(tuple(node.peer_access[i][j] for j in indices) for i in indices)
        if node.peer_access else (),
        nvswitch=node.nvswitch, hostname=node.hostname, notes=(*node.notes, note) if note else node.notes,
    )


def node_from_dict(d: dict) -> NodeTopology:
    gpus = tuple(GpuInfo(**{**g, "compute_capability": tuple(g["compute_capability"])
                            if g.get("compute_capability") else None,
                            "cpu_affinity": tuple(g.get("cpu_affinity", ()))}) for g in d["gpus"])
    return NodeTopology(
        source=d["source"], gpus=gpus, links=tuple(tuple(Link(**c) for c in row) for row in d["links"]),
        peer_access=tuple(tuple(row) for row in d["peer_access"]), nvswitch=d["nvswitch"],
        hostname=d.get("hostname", ""), notes=tuple(d.get("notes", ())),
    )


def node_to_json(node: NodeTopology) -> str:
    return json.dumps(asdict(node))


def node_from_json(text: str) -> NodeTopology:
    return node_from_dict(json.loads(text))


def cpu_node(hostname: str = "", note: str = "") -> NodeTopology:
    """A machine with no GPU (or no driver): ranks are processes talking through host memory."""
    return NodeTopology(source="cpu", hostname=hostname, notes=(note,) if note else ())


def link_matrix_table(node: NodeTopology) -> str:
    """The link matrix as nvidia-smi prints it, plus a P2P marker (`*` = no peer access)."""
    if node.n_gpus == 0:
        return "(no GPUs: ranks are CPU processes exchanging gradients through host memory)"
    header = "       " + "".join(f"GPU{g.index:<5}" for g in node.gpus) + "NUMA  name"
    rows = [header]
    for i, gpu in enumerate(node.gpus):
        cells = []
        for j in range(node.n_gpus):
            label = "X" if i == j else node.links[i][j].label + ("*" if node.p2p(i, j) is False else "")
            cells.append(f"{label:<8}")
        numa = "-" if gpu.numa_node is None else str(gpu.numa_node)
        rows.append(f"GPU{gpu.index:<4}" + "".join(cells) + f"{numa:<6}{gpu.name}")
    if any(node.p2p(i, j) is False for i, j in node.pairs()):
        rows.append("* = no peer (P2P) access between the pair: traffic is staged through host memory")
    return "\n".join(rows)


__all__ = ["GpuInfo", "JobTopology", "Link", "NodeTopology", "cpu_node", "link_matrix_table", "node_from_json",
           "node_to_json", "restrict", "select"]
