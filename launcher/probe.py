"""`python -m launcher.probe`: this node's GPU link matrix and the gradient sync strategy it gets.

On this node it shows the GPUs a job started here would train on (CUDA_VISIBLE_DEVICES, mapped to the node's
GPUs as the workers map it), with links and peer access among those only. `--topo-file` (saved `nvidia-smi
topo -m` output, optionally with `--p2p-file` from `nvidia-smi topo -p2p r`) plans for a machine you are not
logged into, all of its GPUs. Never initialises CUDA.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import replace
from pathlib import Path

from yolo_ddp.config import AUTO_CPU_RANKS, SYNC_STRATEGIES, SyncConfig
from yolo_ddp.sync.cost import Workload
from yolo_ddp.sync.plan import choose_sync, nccl_env_for
from yolo_ddp.topology.model import GpuInfo, JobTopology, NodeTopology, link_matrix_table
from yolo_ddp.topology.probe import probe_node
from yolo_ddp.topology.smi import TopoParseError, parse_topo_matrix
from yolo_ddp.topology.visible import job_view


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m launcher.probe", description=__doc__.splitlines()[0])
    p.add_argument("--topo-file", type=Path, help="saved `nvidia-smi topo -m` output")
    p.add_argument("--p2p-file", type=Path, help="saved `nvidia-smi topo -p2p r` output (with --topo-file)")
    p.add_argument("--gpu-name", default="", help="GPU model for a --topo-file (e.g. 'NVIDIA H100 80GB HBM3')")
    p.add_argument("--compute-capability", default="", help="e.g. 8.0, for a --topo-file (bf16 vs fp16)")
    p.add_argument("--model", default="yolov8n.yaml", help="Ultralytics model yaml (model.cfg)")
    p.add_argument("--imgsz", type=int, default=640)
    p.add_argument("--batch-per-rank", type=int, default=16)
    p.add_argument("--nproc-per-node", type=int, default=0, help="ranks per node; 0 = what launcher.nproc_per_node=auto starts")
    p.add_argument("--nnodes", type=int, default=1)
    p.add_argument("--strategy", default="auto", choices=SYNC_STRATEGIES)
    p.add_argument("--network-gbps", type=float, default=SyncConfig.network_gbps)
    return p.parse_args(argv)


def load_node(args: argparse.Namespace) -> NodeTopology:
    if args.topo_file is None:
        node = probe_node(allow_cuda_init=False)
        return job_view(node, args.nproc_per_node or node.n_gpus)  # NVML numbers the whole node
    p2p = args.p2p_file.read_text() if args.p2p_file else None
    node = parse_topo_matrix(args.topo_file.read_text(errors="replace"), p2p, source=f"file {args.topo_file.name}")
    if args.gpu_name or args.compute_capability:
        cc = tuple(int(x) for x in args.compute_capability.split(".")) if args.compute_capability else None
        gpus = tuple(GpuInfo(index=g.index, name=args.gpu_name or g.name, compute_capability=cc,
                             numa_node=g.numa_node) for g in node.gpus)
        node = replace(node, gpus=gpus)
    return node


def workload(model_cfg: str, imgsz: int, batch_per_rank: int) -> Workload:
    os.environ.setdefault("YOLO_OFFLINE", "1")
    from ultralytics.nn.tasks import DetectionModel

    from yolo_ddp.sync.ddp import model_gflops

    model = DetectionModel(model_cfg, nc=80, verbose=False)
    return Workload.of_model(model, model_gflops(model, imgsz), batch_per_rank)


def report(node: NodeTopology, args: argparse.Namespace) -> str:
    per_node = args.nproc_per_node or node.n_gpus or AUTO_CPU_RANKS
    job = JobTopology(nodes=(node,) * args.nnodes, ranks_per_node=per_node)
    world = per_node * args.nnodes
    cfg = SyncConfig(strategy=args.strategy, network_gbps=args.network_gbps)
    plan = choose_sync(cfg, job, workload(args.model, args.imgsz, args.batch_per_rank), world,
                       "cpu" if job.is_cpu else "cuda")
    kind = "cpu topology" if job.is_cpu else f"{node.n_gpus} GPU(s){', NVSwitch' if node.nvswitch else ''}"
    lines = [f"Topology ({node.source}, {kind}, {args.nnodes} node(s) x {per_node} rank(s))",
             link_matrix_table(node), *(f"note: {n}" for n in node.notes if n),
             f"worst link: {job.worst_link().label}  peer access: "
             f"{ {True: 'yes', False: 'no', None: 'unknown'}[job.peer_access()] }",
             f"workload: {args.model} at imgsz {args.imgsz}, batch {args.batch_per_rank} per rank", "",
             f"strategy: {plan.strategy}", plan.describe()]
    env = nccl_env_for(node)
    lines += [f"NCCL env: {k}={v} ({why})" for k, (v, why) in env.items()] or ["NCCL env: nothing to set"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        node = load_node(args)
    except (OSError, TopoParseError) as e:
        sys.stderr.write(f"error: {e}\n")
        return 2
    print(report(node, args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
