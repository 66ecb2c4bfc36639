"""The `nvidia-smi topo` parser on real outputs (tests/fixtures/topo, see its README), and the
strategy each machine gets from the cost model."""

from __future__ import annotations

from pathlib import Path

import pytest

from launcher.probe import main as probe_main
from yolo_ddp.config import SyncConfig
from yolo_ddp.sync.cost import Workload
from yolo_ddp.sync.plan import choose_sync, nccl_env_for
from yolo_ddp.topology.model import GpuInfo, JobTopology, node_from_json, node_to_json
from yolo_ddp.topology.smi import TopoParseError, parse_p2p_matrix, parse_topo_matrix

FIXTURES = Path(__file__).parent / "fixtures" / "topo"
# yolov8x (68.2 M parameters, 257.8 GFLOPs at 640): the largest gradient this project trains.
YOLOV8X = Workload(grad_bytes=68_229_648 * 4, gflops_per_image=257.8, batch_per_rank=16,
                   matrices=((320, 2880),) * 90, vector_bytes=100_000)
SMALL_BATCH = Workload(YOLOV8X.grad_bytes, YOLOV8X.gflops_per_image / 4, 2, YOLOV8X.matrices, YOLOV8X.vector_bytes)

# file, p2p file, GPUs, NVSwitch, worst pair, ring's slowest hop, NUMA per GPU, all-pairs peer access
CASES = [
    ("A_dgx_a100_nv12_nics.txt", None, 8, True, "NV12", "NV12", [3, 3, 1, 1, 7, 7, 5, 5], True),
    ("D_4xL40S_pcie_node_sys_nics.txt", None, 4, False, "SYS", "SYS", [0, 0, 1, 1], None),
    ("E_2080ti_pix.txt", "E_2080ti_p2p.txt", 2, False, "PIX", "PIX", [1, 1], False),
    ("F_8xH100_nvswitch_nv18.txt", None, 8, True, "NV18", "NV18", [0] * 4 + [1] * 4, True),
    ("G_8x4090_sys_nics_tabs.txt", None, 8, False, "SYS", "SYS", [0] * 4 + [1] * 4, None),
    ("H_2x5090_phb.txt", "H_2x5090_p2p.txt", 2, False, "PHB", "PHB", [0, 0], False),
    ("I_4xH100_nv6_mesh_nics.txt", None, 4, False, "NV6", "NV6", [3, 1, 7, 5], True),
    ("J_4gpu_pxb_pix_sys_tabs.txt", None, 4, False, "SYS", "SYS", [0, 0, 1, 1], None),
    ("K_mixed_one_nvlink_bridge.txt", None, 4, False, "PHB", "PHB", [0, 0, 0, 0], None),
]


def load(name: str, p2p: str | None = None):
    return parse_topo_matrix((FIXTURES / name).read_text(), (FIXTURES / p2p).read_text() if p2p else None)


@pytest.mark.parametrize(("name", "p2p", "n", "nvswitch", "worst", "ring", "numa", "peer"), CASES)
def test_fixture_link_matrix(name, p2p, n, nvswitch, worst, ring, numa, peer):
    node = load(name, p2p)
    assert node.n_gpus == n and node.nvswitch is nvswitch
    assert node.worst_link().label == worst and node.ring_bottleneck().label == ring
    assert [g.numa_node for g in node.gpus] == numa
    assert node.all_peer_access() is peer
    for i, j in node.pairs():
        assert node.links[i][j] == node.links[j][i], "the matrix is symmetric"
    assert node_from_json(node_to_json(node)) == node  # what ranks share round-trips


def test_fixture_cells():
    d = load("D_4xL40S_pcie_node_sys_nics.txt")
    assert d.links[0][1].label == "NODE" and d.links[0][2].label == "SYS" and d.links[2][3].label == "NODE"
    j = load("J_4gpu_pxb_pix_sys_tabs.txt")
    assert j.links[0][1].label == "PXB" and j.links[2][3].label == "PIX" and j.links[1][2].label == "SYS"
    a = load("A_dgx_a100_nv12_nics.txt")
    assert a.gpus[0].cpu_affinity == (*range(48, 64), *range(176, 192))  # after 12 NIC columns
    assert load("G_8x4090_sys_nics_tabs.txt").gpus[0].cpu_affinity  # an empty cell before `GPU NUMA ID`
    k = load("K_mixed_one_nvlink_bridge.txt")
    assert k.links[0][1].label == "NV4" and k.links[0][2].label == "PHB"


def test_p2p_matrix_codes():
    assert parse_p2p_matrix((FIXTURES / "E_2080ti_p2p.txt").read_text()) == ((None, False), (False, None))
    assert parse_p2p_matrix((FIXTURES / "H_2x5090_p2p.txt").read_text()) == ((None, False), (False, None))


def test_ansi_colours_and_soc_are_understood():
    text = (FIXTURES / "E_2080ti_pix.txt").read_text().replace("PIX ", "\x1b[32mSOC\x1b[0m ")
    node = parse_topo_matrix(text)
    assert node.links[0][1].label == "SYS"


def test_a_ring_through_nvlink_beats_the_worst_pair():
    """A hybrid cube mesh has unlinked pairs but an all-NVLink ring; one bridge among PCIe GPUs has none."""
    rows = ["        GPU0    GPU1    GPU2    GPU3    CPU Affinity    NUMA Affinity",
            "GPU0     X      NV2     SYS     NV1     0-19    0",
            "GPU1    NV2      X      NV1     SYS     0-19    0",
            "GPU2    SYS     NV1      X      NV2     0-19    0",
            "GPU3    NV1     SYS     NV2      X      0-19    0"]
    node = parse_topo_matrix("\n".join(rows))
    assert node.worst_link().label == "SYS" and node.ring_bottleneck().label == "NV1"


@pytest.mark.parametrize("text", ["", "hello\nworld", "        GPU0    GPU1\nGPU0     X      ZZZ\nGPU1    ZZZ      X"])
def test_garbage_is_a_parse_error(text):
    with pytest.raises(TopoParseError):
        parse_topo_matrix(text)


# Strategy per fixture: yolov8x at 640 x 16 per rank is compute-bound everywhere on one node (the
# cost model keeps all-reduce); at 320 px x 2 per rank, gradient sync is exposed on PCIe and
# compression pays, while NVLink still hides it. Buckets grow with slower links either way.
STRATEGY = {
    "A_dgx_a100_nv12_nics.txt": ("allreduce", "allreduce", 25),
    "D_4xL40S_pcie_node_sys_nics.txt": ("allreduce", "fp16_compress", 50),
    "E_2080ti_pix.txt": ("allreduce", "fp16_compress", 100),
    "F_8xH100_nvswitch_nv18.txt": ("allreduce", "allreduce", 25),
    "G_8x4090_sys_nics_tabs.txt": ("allreduce", "powersgd", 50),  # 8 ranks over SYS: even fp16 stays exposed
    "H_2x5090_phb.txt": ("allreduce", "fp16_compress", 100),
    "I_4xH100_nv6_mesh_nics.txt": ("allreduce", "allreduce", 25),
    "J_4gpu_pxb_pix_sys_tabs.txt": ("allreduce", "fp16_compress", 50),
    "K_mixed_one_nvlink_bridge.txt": ("allreduce", "fp16_compress", 50),
}


@pytest.mark.parametrize(("name", "p2p"), [(c[0], c[1]) for c in CASES])
def test_fixture_strategy(name, p2p):
    node = load(name, p2p)
    job = JobTopology(nodes=(node,), ranks_per_node=node.n_gpus)
    big, small, bucket = STRATEGY[name]
    plan = choose_sync(SyncConfig(), job, YOLOV8X, node.n_gpus, "cuda")
    assert plan.strategy == big, plan.describe()
    assert plan.bucket_cap_mb == bucket
    assert choose_sync(SyncConfig(), job, SMALL_BATCH, node.n_gpus, "cuda").strategy == small
    assert plan.inputs["worst_link"] == node.ring_bottleneck().label


def test_two_nodes_over_ethernet_compress_and_powersgd_only_where_it_wins():
    node = load("F_8xH100_nvswitch_nv18.txt")
    h100 = type(node)(**{**node.__dict__, "gpus": tuple(GpuInfo(g.index, "NVIDIA H100 80GB HBM3", 81559, (9, 0))
                                                             for g in node.gpus)})
    job = JobTopology(nodes=(h100, h100), ranks_per_node=8)
    plan = choose_sync(SyncConfig(network_gbps=25), job, YOLOV8X, 16, "cuda")
    assert plan.worst_link == "NET" and plan.strategy == "powersgd", plan.describe()
    assert plan.bucket_cap_mb == 100
    fast = choose_sync(SyncConfig(network_gbps=3200), job, YOLOV8X, 16, "cuda")  # 8 x 400 Gb/s InfiniBand
    assert fast.strategy == "allreduce", fast.describe()


def test_explicit_strategy_wins_and_says_so():
    node = load("F_8xH100_nvswitch_nv18.txt")
    plan = choose_sync(SyncConfig(strategy="bf16_compress", bucket_cap_mb=40), JobTopology((node,), 8), YOLOV8X, 8,
                       "cuda")
    assert plan.strategy == "bf16_compress" and plan.bucket_cap_mb == 40
    assert any("set by sync.strategy" in r for r in plan.reasons)


def test_nccl_env_from_the_probe(monkeypatch):
    from yolo_ddp.sync.plan import apply_nccl_env

    no_p2p = load("E_2080ti_pix.txt", "E_2080ti_p2p.txt")
    assert nccl_env_for(no_p2p) == {}  # NCCL's own per-pair check stages that pair through host memory
    assert nccl_env_for(load("F_8xH100_nvswitch_nv18.txt")) == {}
    g = load("G_8x4090_sys_nics_tabs.txt")
    named = type(g)(**{**g.__dict__, "gpus": tuple(GpuInfo(x.index, "NVIDIA GeForce RTX 4090") for x in g.gpus)})
    assert "40-series" in nccl_env_for(named)["NCCL_P2P_DISABLE"][1]
    monkeypatch.delenv("NCCL_P2P_DISABLE", raising=False)
    assert apply_nccl_env(named, "nccl") and __import__("os").environ["NCCL_P2P_DISABLE"] == "1"
    monkeypatch.setenv("NCCL_P2P_DISABLE", "0")
    said = apply_nccl_env(named, "nccl")
    assert "kept as set" in said[0] and __import__("os").environ["NCCL_P2P_DISABLE"] == "0"
    assert apply_nccl_env(named, "gloo") == []


def test_probe_cli_on_a_saved_file(capsys):
    assert probe_main(["--topo-file", str(FIXTURES / "E_2080ti_pix.txt"), "--p2p-file",
                       str(FIXTURES / "E_2080ti_p2p.txt"), "--imgsz", "160", "--batch-per-rank", "2"]) == 0
    out = capsys.readouterr().out
    assert "PIX*" in out and "strategy: fp16_compress" in out and "NCCL env: nothing to set" in out
    assert "input link_bandwidth_GBps" in out
    assert probe_main(["--topo-file", str(FIXTURES / "README.md")]) == 2


def test_powersgd_is_refused_with_fp16_amp_and_never_chosen_under_it():
    """torch's PowerSGD keeps its error-feedback residual without a finite check: after one GradScaler
    overflow it stays inf/NaN (tests/test_sync_ddp.py shows it) and every later fp16 step is skipped."""
    from yolo_ddp.sync.plan import refuse_powersgd_with_fp16

    node = load("F_8xH100_nvswitch_nv18.txt")
    h100 = type(node)(**{**node.__dict__, "gpus": tuple(GpuInfo(g.index, "NVIDIA H100 80GB HBM3", 81559, (9, 0))
                                                             for g in node.gpus)})
    job = JobTopology(nodes=(h100, h100), ranks_per_node=8)
    slow_net = SyncConfig(network_gbps=25)
    assert choose_sync(slow_net, job, YOLOV8X, 16, "cuda", amp="bf16").strategy == "powersgd"
    under_fp16 = choose_sync(slow_net, job, YOLOV8X, 16, "cuda", amp="fp16")
    assert under_fp16.strategy == "bf16_compress", under_fp16.describe()
    assert any("fp16" in r and "PowerSGD" in r for r in under_fp16.reasons)
    asked = SyncConfig(strategy="powersgd")
    with pytest.raises(ValueError, match=r"train\.amp.*sync\.strategy=powersgd.*fp16.*train\.amp=bf16"):
        choose_sync(asked, job, YOLOV8X, 16, "cuda", amp="fp16")
    with pytest.raises(ValueError, match="auto"):  # amp=auto that resolved to fp16 says so
        refuse_powersgd_with_fp16("powersgd", "fp16", requested_amp="auto")
    refuse_powersgd_with_fp16("powersgd", "bf16", requested_amp="auto")  # bf16 has no GradScaler: fine
    refuse_powersgd_with_fp16("fp16_compress", "fp16", requested_amp="fp16")
