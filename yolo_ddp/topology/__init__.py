"""Which GPUs a node has and how they are linked (NVLink, PCIe level, peer access), probed once per node."""

from yolo_ddp.topology.model import GpuInfo, JobTopology, Link, NodeTopology, cpu_node, link_matrix_table
from yolo_ddp.topology.probe import gather_job_topology, node_topology_before_init, probe_node
from yolo_ddp.topology.smi import parse_p2p_matrix, parse_topo_matrix

__all__ = ["GpuInfo", "JobTopology", "Link", "NodeTopology", "cpu_node", "gather_job_topology",
           "link_matrix_table", "node_topology_before_init", "parse_p2p_matrix", "parse_topo_matrix", "probe_node"]
