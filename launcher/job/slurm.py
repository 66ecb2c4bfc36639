"""A sweep point run by submitit (`hydra/launcher=slurm`; `submitit_local` in tests): one task per node.

hydra-submitit-launcher runs the whole Hydra job in every task of the job. With one task per node, each
task is its node's elastic agent: it calls the same `launch_job` as a local run, starting
`launcher.nproc_per_node` workers, and the nodes meet at a c10d rendezvous. Every value comes from the
allocation, so all nodes derive the same ones without talking to each other:
- nnodes: the job's node count (SLURM_JOB_NUM_NODES); node ranks are assigned by the rendezvous;
- rendezvous endpoint: the first host of SLURM_JOB_NODELIST, port `rdzv_port(job id)`;
- rendezvous id: the job id. Each sweep point is its own array task with its own SLURM_JOB_ID, so it is
  unique per point, shared by its nodes, and stable across elastic restarts inside the allocation.
On one node the endpoint stays empty: a free local port, exactly as `python -m launcher`.
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass

from yolo_ddp.config import LauncherConfig

PORT_ENV = "YOLO_DDP_RDZV_PORT"


def rdzv_port(job_id: str) -> int:
    """Fixed per job: 20000 + id % 10000 stays below Linux's ephemeral ports (32768+), so no client socket
    holds it, and two jobs whose first node is the same host rarely pick the same one."""
    if os.environ.get(PORT_ENV):
        return int(os.environ[PORT_ENV])
    digits = re.sub(r"\D", "", job_id)
    return 20000 + int(digits or 0) % 10000


@dataclass(frozen=True)
class NodeTask:
    """This process's place in a submitit job."""

    nnodes: int
    node: int  # 0 writes the job's files (.hydra/, launcher.log, the sweep row); others only train
    rdzv_endpoint: str  # "" on one node
    run_id: str

    def launcher_config(self, launcher: LauncherConfig) -> LauncherConfig:
        if launcher.nnodes not in (1, self.nnodes):  # 1 is the default: follow the allocation
            raise ValueError(
                f"launcher.nnodes={launcher.nnodes}, but this submitit job has {self.nnodes} node(s). Set the node "
                f"count with hydra.launcher.nodes={launcher.nnodes} (launcher.nnodes follows it) and drop launcher.nnodes."
            )
        endpoint = launcher.rdzv_endpoint or self.rdzv_endpoint  # an explicit endpoint (another NIC's name) wins
        return dataclasses.replace(launcher, nnodes=self.nnodes, rdzv_endpoint=endpoint)


def node_task() -> NodeTask | None:
    """The submitit task this process is, or None outside submitit (a local run, or a torchrun rank)."""
    if not os.environ.get("SUBMITIT_EXECUTOR"):
        return None
    import submitit

    env = submitit.JobEnvironment()
    if env.num_tasks != env.num_nodes:
        raise ValueError(
            f"hydra.launcher.tasks_per_node must be 1 (this job has {env.num_tasks} tasks on {env.num_nodes} "
            f"node(s)): each node's one task starts launcher.nproc_per_node workers itself. Ask for GPUs with "
            f"hydra.launcher.gpus_per_node instead."
        )
    job_id = env.raw_job_id
    endpoint = f"{env.hostnames[0]}:{rdzv_port(job_id)}" if env.num_nodes > 1 else ""
    return NodeTask(nnodes=env.num_nodes, node=env.node, rdzv_endpoint=endpoint, run_id=f"job{job_id}")


def node_rank() -> int:
    """0 outside submitit: the process that writes a job's files."""
    if not os.environ.get("SUBMITIT_EXECUTOR"):
        return 0
    import submitit

    return submitit.JobEnvironment().node
