"""Process-group lifecycle and rank helpers that degrade to one process.

`RANK` decides global side effects (files, W&B); `LOCAL_RANK` only the device and node-local caches.
Without an initialised process group every helper answers as a single process would.
"""

from __future__ import annotations

import datetime
import ipaddress
import logging
import os
import socket
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)


def is_dist() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_dist() else int(os.environ.get("RANK", 0))


def get_world_size() -> int:
    return dist.get_world_size() if is_dist() else int(os.environ.get("WORLD_SIZE", 1))


def get_local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", 0))


def is_main() -> bool:
    return get_rank() == 0


def under_elastic_agent() -> bool:
    """True inside a worker started by torchrun / elastic_launch."""
    return "TORCHELASTIC_RUN_ID" in os.environ and "RANK" in os.environ


def check_devices(backend: str, procs_per_node: int) -> None:
    """Refuse what this node's devices cannot run, before a process group (or a worker) starts: NCCL without
    a GPU fails deep inside init with a C++ message, and a second rank on one GPU only at its first collective."""
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if backend == "nccl" and not gpus:
        raise ValueError(
            "Config key 'dist.backend': dist.backend=nccl needs CUDA GPUs, but none is visible on this node "
            "(torch.cuda.is_available() is False). Use dist.backend=auto (gloo on CPU) or dist.backend=gloo, or run "
            "where GPUs are visible (check CUDA_VISIBLE_DEVICES and nvidia-smi)."
        )
    if gpus and procs_per_node > gpus:
        raise ValueError(
            f"Config key 'launcher.nproc_per_node': {procs_per_node} processes on this node but {gpus} GPU(s) "
            f"visible, and every rank needs a GPU of its own. Start at most {gpus} (launcher.nproc_per_node=auto "
            f"or {gpus}, torchrun --nproc_per_node={gpus}), or set CUDA_VISIBLE_DEVICES='' to train on CPU with gloo."
        )


def pick_device(local_rank: int) -> torch.device:
    if torch.cuda.is_available():
        count = torch.cuda.device_count()
        if local_rank >= count:  # NCCL cannot run two ranks on one GPU
            raise ValueError(
                f"Local rank {local_rank} has no GPU of its own: {count} visible on this node. Start at most {count} "
                f"processes per node (torchrun --nproc_per_node={count}, or launcher.nproc_per_node=auto), or set "
                f"CUDA_VISIBLE_DEVICES='' to train on CPU with gloo."
            )
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


# Extra time NCCL's own timeout gets over dist.timeout_s. The ranks wait for each other each step on a host-side
# gloo group (`host_group`) whose timeout is dist.timeout_s, so a stalled rank raises there, in Python, and is
# named (yolo_ddp/engine/heartbeat.py). NCCL's watchdog, whose timeout kills the process without a Python exception
# (TORCH_NCCL_ASYNC_ERROR_HANDLING, 1 under the elastic agent; left as is), stays the backstop for a hang
# inside an NCCL collective.
NCCL_GRACE_S = 60.0


def group_timeout(backend: str, timeout_s: float) -> datetime.timedelta:
    """The job group's timeout: dist.timeout_s, plus NCCL_GRACE_S under NCCL so the host-side check fires first."""
    return datetime.timedelta(seconds=timeout_s + (NCCL_GRACE_S if backend == "nccl" else 0.0))


# Gloo binds to the address its hostname resolves to; where that is 127.0.1.1 (Debian's /etc/hosts), it binds to
# loopback and a group across nodes cannot connect. GLOO_SOCKET_IFNAME names the interface instead: as the user
# set it, else NCCL_SOCKET_IFNAME's (the job's network, as the user chose it for NCCL), else the interface that
# routes to the rendezvous host (MASTER_ADDR). Where that host is this node's own loopback in a multi-node job,
# the default route's interface. Set on every rank before any gloo group exists.
ROUTE_PROBE = "192.0.2.1"  # TEST-NET-1: a UDP connect only looks up the route, it sends nothing


def _interface_with(address: str) -> str | None:
    import psutil  # an Ultralytics dependency

    ip = ipaddress.ip_address(address.split("%")[0])
    for name, addrs in psutil.net_if_addrs().items():
        for a in addrs:
            if a.family in (socket.AF_INET, socket.AF_INET6):
                mine = ipaddress.ip_address(a.address.split("%")[0])
                if mine == ip or (ip.is_loopback and mine.is_loopback):
                    return name
    return None


def route_interface(host: str) -> tuple[str | None, bool]:
    """(the local interface whose address routes to `host`, whether that is loopback); (None, False) where the
    host does not resolve or has no route."""
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_DGRAM)
    except OSError:
        return None, False
    for family, _, _, _, sockaddr in infos:
        try:
            with socket.socket(family, socket.SOCK_DGRAM) as s:
                s.connect((sockaddr[0], 9))
                local = s.getsockname()[0]
        except OSError:
            continue
        name = _interface_with(local)
        if name:
            return name, ipaddress.ip_address(local.split("%")[0]).is_loopback
    return None, False


def _from_nccl(value: str) -> str | None:
    """NCCL_SOCKET_IFNAME as one interface gloo can bind: `=eth0` exact, `eth` a prefix of local names; its
    exclusion form (`^docker`) names no interface. One only: gloo wants as many on every rank."""
    import psutil

    if value.startswith("^"):
        return None
    exact = value.startswith("=")
    wanted = [v for v in value.lstrip("=").split(",") if v]
    local = sorted(psutil.net_if_addrs())
    for w in wanted:
        hits = [name for name in local if (name == w if exact else name.startswith(w))]
        if hits:
            return hits[0]
    return None


def _spans_nodes(env: Mapping[str, str]) -> bool:
    world = int(env.get("WORLD_SIZE", 1))
    return world > int(env.get("LOCAL_WORLD_SIZE", world))


def gloo_interface(env: Mapping[str, str]) -> tuple[str | None, str]:
    """The GLOO_SOCKET_IFNAME to set, and why; None: leave the environment as it is."""
    if env.get("GLOO_SOCKET_IFNAME"):
        return None, "GLOO_SOCKET_IFNAME as set"
    if env.get("NCCL_SOCKET_IFNAME") and (name := _from_nccl(env["NCCL_SOCKET_IFNAME"])):
        return name, f"NCCL_SOCKET_IFNAME={env['NCCL_SOCKET_IFNAME']}"
    master = env.get("MASTER_ADDR")
    if not master:
        return None, "no rendezvous address (MASTER_ADDR)"
    name, loopback = route_interface(master)
    if loopback and _spans_nodes(env):
        name, _ = route_interface(ROUTE_PROBE)
        return name, f"the default route's interface: MASTER_ADDR={master} is this node's loopback, the job spans nodes"
    return name, f"the route to MASTER_ADDR={master}"


def set_gloo_interface() -> None:
    """Put gloo's interface into this rank's environment (a value the user set wins); call before gloo groups."""
    name, why = gloo_interface(os.environ)
    if name:
        os.environ["GLOO_SOCKET_IFNAME"] = name
        log.info("gloo binds to %s (%s); set GLOO_SOCKET_IFNAME to choose another", name, why)
    elif not os.environ.get("GLOO_SOCKET_IFNAME") and _spans_nodes(os.environ):
        log.warning("No network interface found for gloo's groups across nodes (%s): gloo binds to the address "
                    "this host's name resolves to, which fails where that is 127.0.1.1. Set GLOO_SOCKET_IFNAME to "
                    "the interface the nodes reach each other on (as NCCL_SOCKET_IFNAME), e.g. "
                    "GLOO_SOCKET_IFNAME=eth0, on every node.", why)


def host_group(timeout_s: float) -> Any:
    """A group for small flags that never waits for a GPU stream: the job's own group under gloo, beside NCCL a
    gloo group with dist.timeout_s (`new_group` without `timeout=` would wait 30 minutes). None without a group."""
    if not is_dist():
        return None
    if dist.get_backend() == "gloo":
        return dist.group.WORLD
    set_gloo_interface()
    return dist.new_group(backend="gloo", timeout=datetime.timedelta(seconds=timeout_s))


def init_process_group(timeout_s: float, backend: str = "auto") -> torch.device:
    """Join the job's process group (when launched by an elastic agent) and bind this rank's device.

    NCCL on CUDA, gloo otherwise. A single process without an agent runs without a group.
    """
    check_devices(backend, int(os.environ.get("LOCAL_WORLD_SIZE", 1)))
    device = pick_device(get_local_rank())
    if under_elastic_agent() and not is_dist():
        if backend == "auto":
            backend = "nccl" if device.type == "cuda" else "gloo"
        kwargs: dict[str, Any] = {"timeout": group_timeout(backend, timeout_s)}
        if backend == "nccl":
            kwargs["device_id"] = device  # eager NCCL init: a bad GPU fails here, not in the first all-reduce
        set_gloo_interface()  # the job's group under gloo, the host-side group beside NCCL
        dist.init_process_group(backend=backend, **kwargs)
    return device


def destroy_process_group() -> None:
    if is_dist():
        dist.destroy_process_group()


def barrier(group: Any = None) -> None:
    if is_dist():
        dist.barrier(group=group)


@contextmanager
def local_rank_zero_first() -> Iterator[bool]:
    """Let local rank 0 do node-local work (caches) while the others wait; yields whether this rank leads."""
    leader = get_local_rank() == 0
    if not leader:
        barrier()
    yield leader
    if leader:
        barrier()


def all_reduce_min(value: float, device: torch.device) -> float:
    if not is_dist():
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return float(t.item())


def all_reduce_mean(t: torch.Tensor) -> torch.Tensor:
    """Mean across ranks of a tensor (returns a new tensor; the input is untouched)."""
    if not is_dist():
        return t.clone()
    out = t.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out / get_world_size()


def all_reduce_sum_(t: torch.Tensor) -> torch.Tensor:
    """Sum across ranks, in place (a device tensor: no host sync under NCCL)."""
    if is_dist():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def broadcast_buffers(module: torch.nn.Module, src: int = 0) -> None:
    """Give every rank `src`'s buffers (BatchNorm statistics), as Ultralytics does for the EMA before validation."""
    if is_dist():
        for buffer in module.buffers():
            dist.broadcast(buffer, src=src)


def all_reduce_max(t: torch.Tensor) -> torch.Tensor:
    if not is_dist():
        return t.clone()
    out = t.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.MAX)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    if not is_dist():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def gather_objects(obj: Any, dst: int = 0) -> list[Any] | None:
    """Gather one picklable object per rank on `dst`; other ranks get None."""
    if not is_dist():
        return [obj]
    out = [None] * get_world_size() if get_rank() == dst else None
    dist.gather_object(obj, out, dst=dst)
    return out
