"""Connect to a Ray cluster, or start an embedded one on this machine."""
from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class ClusterResources:
    cpus: float
    gpus: float
    nodes: int


def connect(address: str | None = None) -> ClusterResources:
    """`address` (or RAY_ADDRESS) joins a running cluster; none starts a local Ray."""
    import ray

    if not ray.is_initialized():
        # the driver's project code travels to workers through the installed package, not working_dir
        ray.init(address=address or os.environ.get("RAY_ADDRESS"), include_dashboard=False,
                 log_to_driver=False, configure_logging=False)
    total = ray.cluster_resources()
    nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
    return ClusterResources(cpus=total.get("CPU", 0.0), gpus=total.get("GPU", 0.0), nodes=nodes)
