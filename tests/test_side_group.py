"""Hang detection beside NCCL: the host-side gloo group gets dist.timeout_s (new_group's default is 30 min), and
the NCCL group a grace period on top, so a stalled rank is named from Python before NCCL's watchdog, which
ends the process without a Python exception, fires."""

from __future__ import annotations

import datetime
import os
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as tdist
import torch.multiprocessing as mp

from tests.conftest import free_port
from yolo_ddp import dist


def test_host_group_beside_nccl_gets_the_job_timeout(monkeypatch):
    made = []
    monkeypatch.setattr(tdist, "is_initialized", lambda: True)
    monkeypatch.setattr(tdist, "get_backend", lambda group=None: "nccl")
    monkeypatch.setattr(tdist, "new_group", lambda **kw: made.append(kw) or "side")
    assert dist.host_group(7.0) == "side"
    assert made == [{"backend": "gloo", "timeout": datetime.timedelta(seconds=7)}]


def test_nccl_group_waits_longer_than_the_host_check_and_error_handling_is_left_to_the_agent(monkeypatch):
    seen = {}
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "x")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.delenv("TORCH_NCCL_ASYNC_ERROR_HANDLING", raising=False)
    monkeypatch.setattr(dist, "check_devices", lambda *a: None)
    monkeypatch.setattr(dist, "pick_device", lambda local_rank: torch.device("cpu"))
    monkeypatch.setattr(tdist, "is_initialized", lambda: False)
    monkeypatch.setattr(tdist, "init_process_group", lambda backend, **kw: seen.update(backend=backend, **kw))
    dist.init_process_group(30.0, "nccl")
    assert seen["backend"] == "nccl" and seen["timeout"] == datetime.timedelta(seconds=30 + dist.NCCL_GRACE_S)
    assert dist.group_timeout("gloo", 30.0) == datetime.timedelta(seconds=30)  # gloo: the host check itself
    # The elastic agent sets 1 (tear down on an NCCL timeout): the backstop for a hang inside NCCL, kept as is.
    assert "TORCH_NCCL_ASYNC_ERROR_HANDLING" not in os.environ


@pytest.fixture
def no_gloo_env(monkeypatch):
    """A clean slate for the interface choice; whatever the code sets is undone after the test."""
    for key in ("GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME", "MASTER_ADDR", "WORLD_SIZE", "LOCAL_WORLD_SIZE"):
        monkeypatch.setenv(key, "x")
        monkeypatch.delenv(key)
    return monkeypatch


def test_gloo_interface_follows_the_rendezvous_route(no_gloo_env):
    assert dist.gloo_interface({"MASTER_ADDR": "127.0.0.1"})[0] == "lo"  # a loopback rendezvous: lo
    assert dist.gloo_interface({"MASTER_ADDR": "localhost", "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2"})[0] == "lo"
    assert dist.gloo_interface({"MASTER_ADDR": "127.0.0.1", "NCCL_SOCKET_IFNAME": "=lo"})[0] == "lo"
    assert dist.gloo_interface({"NCCL_SOCKET_IFNAME": "l"})[0] == "lo"  # NCCL's prefix form, matched locally
    assert dist.gloo_interface({"NCCL_SOCKET_IFNAME": "^docker"}) == (None, "no rendezvous address (MASTER_ADDR)")
    assert dist.gloo_interface({"MASTER_ADDR": "no-such-host.invalid"})[0] is None


def test_a_value_the_user_set_wins(no_gloo_env):
    no_gloo_env.setenv("GLOO_SOCKET_IFNAME", "eth7")
    no_gloo_env.setenv("NCCL_SOCKET_IFNAME", "=lo")
    no_gloo_env.setenv("MASTER_ADDR", "127.0.0.1")
    assert dist.gloo_interface(os.environ)[0] is None
    dist.set_gloo_interface()
    assert os.environ["GLOO_SOCKET_IFNAME"] == "eth7"


def test_a_multi_node_job_whose_master_is_this_nodes_loopback_takes_the_default_route(no_gloo_env):
    """Node 0's own name resolving to 127.0.1.1 routes MASTER_ADDR over lo, which the other nodes cannot reach."""
    routes = {"node0": ("lo", True), dist.ROUTE_PROBE: ("eth0", False)}
    no_gloo_env.setattr(dist, "route_interface", lambda host: routes[host])
    env = {"MASTER_ADDR": "node0", "WORLD_SIZE": "16", "LOCAL_WORLD_SIZE": "8"}
    assert dist.gloo_interface(env)[0] == "eth0"
    assert dist.gloo_interface({**env, "WORLD_SIZE": "8"})[0] == "lo"  # one node: loopback is right


def test_every_rank_sets_the_interface_before_a_gloo_group_exists(no_gloo_env):
    monkeypatch = no_gloo_env
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    seen = []
    monkeypatch.setattr(tdist, "is_initialized", lambda: True)
    monkeypatch.setattr(tdist, "get_backend", lambda group=None: "nccl")
    monkeypatch.setattr(tdist, "new_group", lambda **kw: seen.append(os.environ.get("GLOO_SOCKET_IFNAME")))
    dist.host_group(7.0)
    monkeypatch.delenv("GLOO_SOCKET_IFNAME")
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "x")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setattr(dist, "check_devices", lambda *a: None)
    monkeypatch.setattr(dist, "pick_device", lambda local_rank: torch.device("cpu"))
    monkeypatch.setattr(tdist, "is_initialized", lambda: False)
    monkeypatch.setattr(tdist, "init_process_group", lambda backend, **kw: seen.append(
        os.environ.get("GLOO_SOCKET_IFNAME")))
    dist.init_process_group(30.0, "gloo")
    assert seen == ["lo", "lo"]


def _stall_worker(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    # The job group stands in for NCCL: a long timeout, and a backend name that makes the guard add a side group.
    tdist.init_process_group("gloo", rank=rank, world_size=2, timeout=datetime.timedelta(seconds=60))
    tdist.get_backend = lambda group=None: "nccl"
    from yolo_ddp.engine.heartbeat import Heartbeat, explain_timeout, is_collective_timeout
    from yolo_ddp.memory.oom import OOMGuard

    guard = OOMGuard(None, retries=0, timeout_s=3)  # every rank creates the side group (a collective)
    heartbeat = Heartbeat()
    heartbeat.beat(12 if rank == 0 else 11)
    if rank == 1:
        time.sleep(12)  # stops participating
        return
    t0 = time.time()
    try:
        guard.agreed(False)  # the step's host check
        message = "no error"
    except Exception as e:  # what train() turns into CollectiveTimeout
        assert is_collective_timeout(e), repr(e)
        message = explain_timeout(e, heartbeat, 3, "RUN")
    Path(out, "msg.txt").write_text(f"{time.time() - t0:.1f}\n{message}")


@pytest.mark.slow
def test_a_stalled_rank_is_named_within_the_timeout_on_the_side_group(tmp_path):
    mp.spawn(_stall_worker, args=(free_port(), str(tmp_path)), nprocs=2, join=True)
    elapsed, message = (tmp_path / "msg.txt").read_text().split("\n", 1)
    assert float(elapsed) < 8, message  # dist.timeout_s=3, not new_group's 30 minutes (nor the peer's exit)
    assert "Behind: rank 1 (rank 1: last step 11" in message
