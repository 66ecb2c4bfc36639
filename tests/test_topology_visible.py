"""The job's GPUs, not the node's: NVML and nvidia-smi number every GPU of the node in PCI bus order and
ignore CUDA_VISIBLE_DEVICES, while local rank r trains on CUDA ordinal r. A hand-written 8-GPU node
(tests/fixtures/topo/L_*): GPUs 4-7 NVLinked, 0-3 on PCIe, and the pair GPU0-GPU1 without peer access."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from yolo_ddp.sync.plan import apply_nccl_env
from yolo_ddp.topology import probe
from yolo_ddp.topology.model import JobTopology
from yolo_ddp.topology.smi import parse_topo_matrix

FIXTURES = Path(__file__).parent / "fixtures" / "topo"
L = "L_8gpu_nvlink_quad_4to7"


def l_node(with_ids: bool = True):
    node = parse_topo_matrix((FIXTURES / f"{L}.txt").read_text(), (FIXTURES / f"{L}_p2p.txt").read_text())
    if with_ids:
        from yolo_ddp.topology.smi import with_gpu_query

        node = with_gpu_query(node, (FIXTURES / f"{L}_query.csv").read_text())
    return node


def uuids() -> list[str]:
    return [line.split(", ")[1] for line in (FIXTURES / f"{L}_query.csv").read_text().splitlines()]


@pytest.fixture
def worker(monkeypatch, tmp_path):
    """A local-rank-0 worker under an elastic agent whose probe answers with the L node."""

    def start(visible: str | None, local_world: int, node=None, order: str | None = None):
        monkeypatch.setattr(probe, "probe_node", lambda allow_cuda_init=False: node or l_node(with_ids=False))
        monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
        env = {"TORCHELASTIC_RUN_ID": "visible", "RANK": "0", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": str(local_world)}
        for key, value in {**env, "CUDA_VISIBLE_DEVICES": visible, "CUDA_DEVICE_ORDER": order}.items():
            if value is None:
                monkeypatch.delenv(key, raising=False)
            else:
                monkeypatch.setenv(key, value)
        monkeypatch.delenv("NCCL_P2P_DISABLE", raising=False)
        return probe.node_topology_before_init()

    return start


def test_job_on_gpus_4_to_7_is_planned_from_them_and_keeps_p2p(worker):
    node = worker("4,5,6,7", 4)
    assert [g.index for g in node.gpus] == [4, 5, 6, 7]
    job = JobTopology(nodes=(node,), ranks_per_node=4)
    assert job.worst_link().label == "NV4" and job.peer_access() is True
    apply_nccl_env(node, "nccl")
    assert "NCCL_P2P_DISABLE" not in os.environ  # GPU0-GPU1 lack P2P, but this job does not use them


@pytest.mark.parametrize(("visible", "n", "expected", "worst"), [
    ("6,4", 2, [6, 4], "NV4"), ("5,1", 2, [5, 1], "SYS"), ("2,3,9", 2, [2, 3], "PIX"),
    ("3,-1,4", 2, [3], "-"),  # a negative entry ends the list, as CUDA reads it
])
def test_reordered_and_subset_lists(worker, visible, n, expected, worst):
    node = worker(visible, n)
    assert [g.index for g in node.gpus] == expected
    assert JobTopology(nodes=(node,), ranks_per_node=len(expected)).worst_link().label == worst


def test_the_whole_node_leaves_p2p_to_nccl(worker):
    """No CUDA_VISIBLE_DEVICES: all 8 GPUs, one pair without P2P. NCCL checks each pair itself and routes that
    one through host memory; disabling P2P for the job would send every NVLink pair through host memory too."""
    node = worker(None, 8)
    assert [g.index for g in node.gpus] == list(range(8)) and node.all_peer_access() is False
    assert not [line for line in apply_nccl_env(node, "nccl") if line.startswith("NCCL_P2P_DISABLE=1")]
    assert "NCCL_P2P_DISABLE" not in os.environ


def test_uuid_form_and_prefixes_map_by_uuid(worker):
    ids = uuids()
    node = worker(f"{ids[7]},{ids[5][:10]}", 2, node=l_node())
    assert [g.index for g in node.gpus] == [7, 5] and node.gpus[0].uuid == ids[7]
    assert node.gpus[1].pci_bus_id == "0000:af:00.0" and node.gpus[1].name == "NVIDIA RTX A6000"
    assert node.gpus[1].compute_capability == (8, 6)


def test_a_mig_or_unknown_uuid_falls_back_with_p2p_unknown(worker):
    node = worker("MIG-4aa0f8a9-fd5a-5c0f-77d1-aabb6c58b0a2", 1, node=l_node())
    assert node.n_gpus == 1 and any("CUDA_VISIBLE_DEVICES" in n for n in node.notes)
    node = worker("GPU-ffffffff", 2, node=l_node())
    assert node.n_gpus == 2 and node.all_peer_access() is None  # unknown: nothing forces P2P off
    assert any("CUDA_VISIBLE_DEVICES" in n for n in node.notes)


def test_pci_bus_order_and_fastest_first_on_a_mixed_node(worker):
    """CUDA's default order is fastest first; on a mixed node that is not NVML's PCI bus order."""
    mixed = l_node()
    gpus = tuple(g if g.index != 6 else type(g)(**{**g.__dict__, "name": "NVIDIA H100 PCIe",
                                                   "compute_capability": (9, 0)}) for g in mixed.gpus)
    mixed = type(mixed)(**{**mixed.__dict__, "gpus": gpus})
    assert [g.index for g in worker("0,1", 2, node=mixed).gpus] == [6, 0]
    assert [g.index for g in worker("0,1", 2, node=mixed, order="PCI_BUS_ID").gpus] == [0, 1]


def test_torch_ordinals_win_over_the_env(worker, monkeypatch):
    """Where CUDA can start, each ordinal's UUID (or PCI bus id) from torch is the truth."""
    ids = uuids()
    props = {0: SimpleNamespace(uuid=ids[7].removeprefix("GPU-"), pci_domain_id=0, pci_bus_id=0xDB, pci_device_id=0),
             1: SimpleNamespace(uuid="", pci_domain_id=0, pci_bus_id=0xD8, pci_device_id=0)}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: props[i])
    node = worker("0,1", 2, node=l_node())  # the env (read as indices) would say GPUs 0 and 1
    assert [g.index for g in node.gpus] == [7, 6]


def test_probe_command_shows_the_job_gpus_not_the_whole_node(monkeypatch, capsys):
    """`python -m launcher.probe` with CUDA_VISIBLE_DEVICES=4,5,6,7 plans the NVLinked quad, not GPUs 0-3."""
    from launcher import probe as probe_cmd

    monkeypatch.setattr(probe_cmd, "probe_node", lambda allow_cuda_init=False: l_node())
    monkeypatch.setattr(probe_cmd, "workload", lambda *a: probe_cmd.Workload(12_000_000, 8.7, 16))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5,6,7")
    assert probe_cmd.main([]) == 0
    out = capsys.readouterr().out
    assert "4 GPU(s)" in out and "worst link: NV4" in out and "NCCL_P2P_DISABLE" not in out
