"""Connect to a Ray cluster, or start an embedded one on this machine; read what the cluster offers."""
from __future__ import annotations

import os
from dataclasses import dataclass, field


@dataclass(frozen=True)
class ClusterResources:
    cpus: float
    gpus: float
    nodes: int
    # each alive node's total resources (CPU, GPU, accelerator_type:<T>, ...): placement checks per node
    per_node: tuple[dict[str, float], ...] = field(default=(), compare=False)
    node_ids: frozenset[str] = frozenset()


def cluster_resources() -> ClusterResources:
    """What the connected cluster offers now (alive nodes only)."""
    import ray

    total = ray.cluster_resources()
    alive = [n for n in ray.nodes() if n.get("Alive")]
    return ClusterResources(cpus=total.get("CPU", 0.0), gpus=total.get("GPU", 0.0), nodes=len(alive),
                            per_node=tuple(dict(n.get("Resources", {})) for n in alive),
                            node_ids=frozenset(n["NodeID"] for n in alive))


def connect(address: str | None = None, log_to_driver: bool = False) -> ClusterResources:
    """`address` (or RAY_ADDRESS) joins a running cluster; none starts a local Ray. `log_to_driver`:
    show the workers' own output (the libraries' progress bars and logs), prefixed by Ray."""
    import ray

    if not ray.is_initialized():
        # the driver's project code travels to workers through the installed package (or the job's
        # working_dir under `ray job submit`), not through a runtime env set here
        # "local": with no address Ray would join the cluster named in /tmp/ray/ray_current_cluster (the last
        # `ray start` on this machine, anyone's); the embedded default is a Ray of its own
        ray.init(address=address or os.environ.get("RAY_ADDRESS") or "local", include_dashboard=False,
                 log_to_driver=log_to_driver, configure_logging=False)
    return cluster_resources()
