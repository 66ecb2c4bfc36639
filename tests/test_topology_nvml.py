"""The NVML probe on recorded responses (a fake of the NVML module only: no driver here), and the
no-driver path with the real `nvidia-ml-py`, which must give a cpu topology and never raise."""

from __future__ import annotations

import pynvml
import pytest

from launcher.probe import main as probe_main
from yolo_ddp.topology.nvml import NvmlUnavailable, probe_nvml
from yolo_ddp.topology.probe import probe_node


class FakeNvml:
    """Answers like pynvml for a recorded machine: `links[gpu]` lists (remote bus id | "switch") per link."""

    NVMLError = pynvml.NVMLError
    NVML_FEATURE_ENABLED = pynvml.NVML_FEATURE_ENABLED
    NVML_NVLINK_DEVICE_TYPE_SWITCH = pynvml.NVML_NVLINK_DEVICE_TYPE_SWITCH
    NVML_NVLINK_DEVICE_TYPE_GPU = pynvml.NVML_NVLINK_DEVICE_TYPE_GPU
    NVML_NVLINK_MAX_LINKS = pynvml.NVML_NVLINK_MAX_LINKS
    NVML_P2P_CAPS_INDEX_READ = pynvml.NVML_P2P_CAPS_INDEX_READ  # the real 1-tuple
    NVML_P2P_STATUS_OK = pynvml.NVML_P2P_STATUS_OK

    def __init__(self, names, buses, links, ancestor, p2p, cc=(8, 0), numa=None):
        self.names, self.buses, self.links, self.ancestor, self.p2p = names, buses, links, ancestor, p2p
        self.cc, self.numa, self.shut = cc, numa, False

    def nvmlInit(self):
        pass

    def nvmlShutdown(self):
        self.shut = True

    def nvmlDeviceGetCount(self):
        return len(self.names)

    def nvmlDeviceGetHandleByIndex(self, i):
        return i

    def nvmlDeviceGetName(self, h):
        return self.names[h]

    def nvmlDeviceGetMemoryInfo(self, h):
        return type("Mem", (), {"total": 80 * 2**30})()

    def nvmlDeviceGetCudaComputeCapability(self, h):
        return self.cc

    def nvmlDeviceGetNumaNodeId(self, h):
        if self.numa is None:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return self.numa[h]

    def nvmlDeviceGetCurrPcieLinkGeneration(self, h):
        return 4

    def nvmlDeviceGetCurrPcieLinkWidth(self, h):
        return 16

    def nvmlDeviceGetPciInfo(self, h):
        return type("Pci", (), {"busId": self.buses[h]})()

    def nvmlDeviceGetUUID(self, h):
        return f"GPU-{h:08x}-0000-0000-0000-000000000000".encode()

    def nvmlDeviceGetCpuAffinity(self, h, words):
        if self.numa is None:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
        mask = (0xFFFF << 16 * self.numa[h]) | (0xFFFF << 64 + 16 * self.numa[h])  # CPUs 0-15,64-79 on node 0
        return [mask >> 64 * w & (2**64 - 1) for w in range(max(words, 2))]

    def _link(self, h, link):
        if link >= len(self.links[h]):
            raise pynvml.NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)  # links that don't exist raise
        return self.links[h][link]

    def nvmlDeviceGetNvLinkState(self, h, link):
        return pynvml.NVML_FEATURE_ENABLED if self._link(h, link) else pynvml.NVML_FEATURE_DISABLED

    def nvmlDeviceGetNvLinkRemoteDeviceType(self, h, link):
        return 2 if self._link(h, link) == "switch" else 0

    def nvmlDeviceGetNvLinkRemotePciInfo(self, h, link):
        remote = self._link(h, link)
        return type("Pci", (), {"busId": b"00000000:FF:00.0" if remote == "switch" else remote})()

    def nvmlDeviceGetTopologyCommonAncestor(self, a, b):
        return self.ancestor[a][b]

    def nvmlDeviceGetP2PStatus(self, a, b, index):
        assert isinstance(index, int), "nvidia-ml-py wants an int index; NVML_P2P_CAPS_INDEX_READ is a 1-tuple"
        return self.p2p[a][b]


def test_nvswitch_box_links_every_pair_through_the_switch():
    n = 4
    fake = FakeNvml(names=["NVIDIA H100 80GB HBM3"] * n, buses=[f"00000000:{0x18 + i:02X}:00.0" for i in range(n)],
                    links=[["switch"] * 18 for _ in range(n)], ancestor=[[50] * n for _ in range(n)],
                    p2p=[[0] * n for _ in range(n)], cc=(9, 0), numa=[0, 0, 1, 1])
    node = probe_nvml(fake)
    assert node.source == "nvml" and node.nvswitch and node.n_gpus == 4 and fake.shut
    assert {node.links[i][j].label for i, j in node.pairs()} == {"NV18"}
    assert node.all_peer_access() is True
    assert node.gpus[2].numa_node == 1 and node.gpus[0].compute_capability == (9, 0)
    assert node.gpus[0].memory_mib == 80 * 1024 and node.gpus[0].pcie_gen == 4
    assert node.gpus[3].uuid == "GPU-00000003-0000-0000-0000-000000000000" and node.gpus[3].pci_bus_id == "0000:1b:00.0"
    assert node.gpus[2].cpu_affinity == (*range(16, 32), *range(80, 96))


def test_direct_nvlink_pair_among_pcie_gpus_and_missing_p2p():
    """GPU0-GPU1 share a 4-link bridge (remote bus ids in 4-digit domain form); GPU2 is PCIe only, no P2P."""
    buses = ["00000000:01:00.0", "00000000:02:00.0", "00000000:81:00.0"]
    links = [["0000:02:00.0"] * 4 + [None] * 2, ["0000:01:00.0"] * 4, []]
    ancestor = [[0, 10, 50], [10, 0, 50], [50, 50, 0]]
    ok, ns = pynvml.NVML_P2P_STATUS_OK, pynvml.NVML_P2P_STATUS_NOT_SUPPORTED
    p2p = [[ok, ok, ns], [ok, ok, ns], [ns, ns, ok]]
    node = probe_nvml(FakeNvml(["NVIDIA RTX A6000"] * 3, buses, links, ancestor, p2p, cc=(8, 6)))
    assert node.links[0][1].label == "NV4" and node.links[1][0].label == "NV4"
    assert node.links[0][2].label == "SYS" and node.links[2][1].label == "SYS"
    assert node.p2p(0, 1) is True and node.p2p(0, 2) is False and node.all_peer_access() is False
    assert not node.nvswitch
    assert node.worst_link().label == "SYS" and node.ring_bottleneck().label == "SYS"


def _driver_present() -> bool:
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return False
    pynvml.nvmlShutdown()
    return True


@pytest.mark.skipif(_driver_present(), reason="an NVIDIA driver is present: the no-driver path cannot be shown")
def test_no_driver_with_the_real_library_is_a_cpu_topology(capsys):
    with pytest.raises(NvmlUnavailable):
        probe_nvml()  # the real pynvml: no libnvidia-ml here
    node = probe_node()
    assert node.source == "cpu" and node.n_gpus == 0
    assert "nvml" in node.notes[0]
    assert probe_main([]) == 0
    out = capsys.readouterr().out
    assert "cpu topology" in out and "strategy: allreduce" in out


class IdleL40SNode(FakeNvml):
    """4x L40S on PCIe Gen4 x16 (NODE within a socket, SYS across) whose idle links downshifted to Gen1 x8:
    NVML's current link is the idle one, its max-link queries the link a job runs on."""

    def __init__(self, max_queries: tuple[str, ...] = ("Max", "GpuMax", "MaxWidth")):
        ok = pynvml.NVML_P2P_STATUS_OK
        ancestor = [[0, 40, 50, 50], [40, 0, 50, 50], [50, 50, 0, 40], [50, 50, 40, 0]]
        super().__init__(["NVIDIA L40S"] * 4, [f"00000000:{0x18 + i:02X}:00.0" for i in range(4)], [[]] * 4,
                         ancestor, [[ok] * 4 for _ in range(4)], cc=(8, 9), numa=[0, 0, 1, 1])
        self.max_queries = max_queries

    def _max(self, query: str, value: int) -> int:
        if query not in self.max_queries:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return value

    def nvmlDeviceGetCurrPcieLinkGeneration(self, h):
        return 1

    def nvmlDeviceGetCurrPcieLinkWidth(self, h):
        return 8

    def nvmlDeviceGetMaxPcieLinkGeneration(self, h):
        return self._max("Max", 4)

    def nvmlDeviceGetGpuMaxPcieLinkGeneration(self, h):
        return self._max("GpuMax", 4)

    def nvmlDeviceGetMaxPcieLinkWidth(self, h):
        return self._max("MaxWidth", 16)


@pytest.fixture(scope="module")
def yolov8m_and_x():
    from ultralytics.nn.tasks import DetectionModel

    from yolo_ddp.sync.cost import Workload

    gflops = {"yolov8m": 78.9, "yolov8x": 257.8}  # Ultralytics' GFLOPs at 640 px
    return {name: Workload.of_model(DetectionModel(f"{name}.yaml", nc=80, verbose=False), gf, batch_per_rank=16)
            for name, gf in gflops.items()}


def test_an_idle_downshifted_pcie_node_is_planned_at_its_max_link(yolov8m_and_x):
    """At job start idle GPUs report Gen1: planned on that, the ring looks 8x slower than it is and the cost
    model picks lossy PowerSGD for yolov8m and yolov8x. The probe reports the max link; the plan is Gen4's."""
    from yolo_ddp.config import SyncConfig
    from yolo_ddp.sync.cost import link_speed
    from yolo_ddp.sync.plan import choose_sync
    from yolo_ddp.topology.model import JobTopology

    node = probe_nvml(IdleL40SNode())
    assert {(g.pcie_gen, g.pcie_width) for g in node.gpus} == {(4, 16)}
    job = JobTopology(nodes=(node,), ranks_per_node=4)
    speed = link_speed(job.worst_link(), job, SyncConfig().network_gbps)
    assert speed.gbps == pytest.approx(32.0 * 0.8 * 0.5) and "gen4 x16" in speed.why  # Gen4 x16 over SYS
    for name, w in yolov8m_and_x.items():
        plan = choose_sync(SyncConfig(), job, w, 4, "cuda", amp="bf16")
        assert plan.strategy == "allreduce", (name, plan.describe())
        assert plan.inputs["link_bandwidth_GBps"] == pytest.approx(12.8)
    # what the current link would have planned: Gen1 x8, PowerSGD for both
    idle = type(node)(**{**node.__dict__, "gpus": tuple(type(g)(**{**g.__dict__, "pcie_gen": 1, "pcie_width": 8})
                                                         for g in node.gpus)})
    idle_job = JobTopology(nodes=(idle,), ranks_per_node=4)
    assert {choose_sync(SyncConfig(), idle_job, w, 4, "cuda", amp="bf16").strategy
            for w in yolov8m_and_x.values()} == {"powersgd"}


def test_pcie_max_link_falls_back_when_a_query_is_unsupported():
    gpu = probe_nvml(IdleL40SNode(max_queries=("GpuMax",))).gpus[0]
    assert (gpu.pcie_gen, gpu.pcie_width) == (4, 8)  # the GPU's own max gen; width: only the current is known
    gpu = probe_nvml(IdleL40SNode(max_queries=())).gpus[0]
    assert (gpu.pcie_gen, gpu.pcie_width) == (1, 8)  # no max query answers: the current link
