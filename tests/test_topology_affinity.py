"""Each GPU rank is pinned to the CPUs nearest its GPU, as the probe recorded them (the L fixture: GPUs 0-3
near CPUs 0-15,32-47 on NUMA node 0; GPUs 4-7 near 16-31,48-63 on node 1), within the CPUs it may use."""

from __future__ import annotations

import os
from dataclasses import replace

import pytest

from tests.test_topology_visible import l_node
from yolo_ddp.topology import affinity
from yolo_ddp.topology.model import cpu_node, select

NODE1 = {*range(16, 32), *range(48, 64)}


@pytest.fixture
def cpus(monkeypatch):
    """A 64-CPU host; records what the rank was pinned to."""
    state = {"allowed": set(range(64)), "set": None}
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(state["allowed"]))
    monkeypatch.setattr(os, "sched_setaffinity", lambda pid, mask: state.update(set=set(mask)))
    return state


def test_rank_is_pinned_to_its_gpus_numa_node(cpus):
    job = select(l_node(), (4, 5, 6, 7))  # CUDA_VISIBLE_DEVICES=4,5,6,7
    line = affinity.pin_to_gpu_cpus(job, local_rank=1)
    assert cpus["set"] == NODE1
    assert "local rank 1" in line and "GPU5" in line and "NUMA node 1" in line and "32 of 64" in line


def test_only_cpus_the_process_may_use(cpus):
    job = select(l_node(), (0, 4))
    cpus["allowed"] = set(range(20, 40))  # a cpuset from the scheduler
    affinity.pin_to_gpu_cpus(job, local_rank=1)
    assert cpus["set"] == set(range(20, 32))
    cpus["allowed"], cpus["set"] = set(range(8)) | {64}, None
    line = affinity.pin_to_gpu_cpus(job, local_rank=1)  # none of node 1's CPUs allowed: never an empty set
    assert cpus["set"] is None and "left on its 9 allowed CPUs" in line


def test_numa_node_from_sysfs_when_the_probe_has_no_cpu_list(cpus, monkeypatch, tmp_path):
    (tmp_path / "node1").mkdir()
    (tmp_path / "node1" / "cpulist").write_text("16-31,48-63\n")
    monkeypatch.setattr(affinity, "SYSFS_NODE", tmp_path)
    job = select(l_node(), (4,))
    job = replace(job, gpus=(replace(job.gpus[0], cpu_affinity=()),))
    affinity.pin_to_gpu_cpus(job, local_rank=0)
    assert cpus["set"] == NODE1


def test_nothing_on_cpu_jobs_or_without_facts(cpus):
    assert affinity.pin_to_gpu_cpus(cpu_node(), local_rank=0) is None
    job = select(l_node(), (4,))
    bare = replace(job, gpus=(replace(job.gpus[0], cpu_affinity=(), numa_node=None),))
    assert affinity.pin_to_gpu_cpus(bare, local_rank=0) is None
    cpus["allowed"] = NODE1  # already there
    assert affinity.pin_to_gpu_cpus(job, local_rank=0) is None
    assert cpus["set"] is None


def test_gpu_workers_pin_at_start_cpu_workers_do_not(cpus, monkeypatch):
    import torch

    from yolo_ddp.sync import ddp

    monkeypatch.setattr(ddp, "node_topology_before_init", lambda: select(l_node(), (4, 5)))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("NCCL_P2P_DISABLE", "0")  # keep the real environment as it is
    ddp.prepare_node("gloo")
    assert cpus["set"] is None
    ddp.prepare_node("nccl")
    assert cpus["set"] == NODE1
