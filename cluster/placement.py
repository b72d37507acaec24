"""Where work may run, declared to Ray: resource shapes, accelerator types, tensor-parallel groups.

Ray does all pinning (CUDA_VISIBLE_DEVICES, ray.get_gpu_ids()); nothing here picks a device.
A cell's worker holds `tensor_parallel_size` GPUs on one node (one actor's resources always come
from one node), except for engines that start their own Ray worker per GPU (vLLM's Ray executor
at TP > 1): their actor holds nothing itself and sits in a STRICT_PACK placement group of TP
{GPU: 1, CPU: 1} bundles that captures child tasks, so the engine's workers land in those bundles.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Sequence

from matrix import Cell
from matrix.engines import ENGINES

# engines whose TP > 1 run starts one Ray worker per GPU inside the current placement group
_RAY_EXECUTOR_ENGINES = {e.name for e in ENGINES.values() if e.ray_executor}
ACCELERATOR_PREFIX = "accelerator_type:"     # the resource Ray exposes per node for its accelerator


class PlacementError(RuntimeError):
    """The spec asks for resources no node of the cluster offers."""


@dataclass(frozen=True)
class Slot:
    """The resource shape one worker needs; workers of one shape are interchangeable."""
    gpus: int                       # 0 on a CPU-only cluster
    cpus: int
    accelerator_type: str | None = None
    gang: bool = False              # a placement group of `gpus` bundles, the actor holding none

    def demand(self) -> dict[str, float]:
        """What the slot takes from the cluster's totals (for capacity accounting)."""
        return {"GPU": float(self.gpus), "CPU": float(max(self.cpus, self.gpus if self.gang else 0))}


def cell_slot(cell: Cell, gpu_cluster: bool, cpus_per_cell: int, accelerator_type: str | None) -> Slot:
    if not gpu_cluster:
        return Slot(0, cpus_per_cell)
    tp = cell.tensor_parallel_size
    return Slot(tp, 1, accelerator_type, gang=tp > 1 and cell.engine in _RAY_EXECUTOR_ENGINES)


def quantize_slot(cell: Cell, gpu_cluster: bool, cpus_per_cell: int, accelerator_type: str | None) -> Slot:
    """Building an artifact runs in one process: the model's TP GPUs, never a gang."""
    return Slot(cell.tensor_parallel_size, 1, accelerator_type) if gpu_cluster else Slot(0, cpus_per_cell)


def gang_bundles(slot: Slot) -> list[dict[str, float]]:
    bundle: dict[str, float] = {"GPU": 1.0, "CPU": 1.0}
    if slot.accelerator_type:      # the constraint must fit inside the bundle the actor lands in
        bundle[ACCELERATOR_PREFIX + slot.accelerator_type] = 0.001
    return [dict(bundle) for _ in range(slot.gpus)]


def ray_options(slot: Slot, runtime_env: dict[str, Any] | None = None, placement_group=None) -> dict[str, Any]:
    """`.options(...)` for a task or actor of this slot (`placement_group`: the gang's, when it has one)."""
    opts: dict[str, Any] = {}
    if runtime_env:
        opts["runtime_env"] = runtime_env
    if slot.gang:
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy
        opts.update(num_cpus=0, num_gpus=0, scheduling_strategy=PlacementGroupSchedulingStrategy(
            placement_group, placement_group_capture_child_tasks=True))
        return opts
    opts.update(num_cpus=slot.cpus, num_gpus=slot.gpus)
    if slot.gpus and slot.accelerator_type:
        opts["accelerator_type"] = slot.accelerator_type
    return opts


def capacity(nodes: Sequence[dict[str, float]], slot: Slot) -> int:
    """How many workers of `slot` fit at once on nodes with these resources (each worker on one node)."""
    need = {r: n for r, n in slot.demand().items() if n > 0}
    total = 0
    for node in nodes:
        if slot.gpus and slot.accelerator_type and ACCELERATOR_PREFIX + slot.accelerator_type not in node:
            continue
        fits = [int(node.get(r, 0.0) // n) for r, n in need.items()]
        total += min(fits) if fits else 0
    return total


def _offered(nodes: Sequence[dict[str, float]]) -> list[str]:
    return sorted({k.removeprefix(ACCELERATOR_PREFIX) for n in nodes for k in n if k.startswith(ACCELERATOR_PREFIX)})


def check_accelerator(nodes: Sequence[dict[str, float]], accelerator_type: str | None, gpu_cluster: bool,
                      spec_name: str | None = None) -> None:
    """Fail before anything runs when the spec pins an accelerator type no node offers
    (`accelerator_type`: Ray's name for it; `spec_name`: the spec's, when they differ)."""
    if not accelerator_type or not gpu_cluster:
        return
    offered = _offered(nodes)
    if accelerator_type not in offered:
        named = repr(spec_name or accelerator_type) + (f" (Ray: {accelerator_type!r})"
                                                        if spec_name and spec_name != accelerator_type else "")
        raise PlacementError(f"resources.accelerator_type {named}: no node of the cluster offers it; "
                             f"offered: {', '.join(offered) or 'none (Ray detected no accelerator type)'}")


def check_fits(nodes: Sequence[dict[str, float]], slots: Iterable[Slot]) -> None:
    """Fail before anything runs when a cell needs more than any one node offers."""
    for s in slots:
        if capacity(nodes, s) == 0:
            kind = f" of type {s.accelerator_type}" if s.gpus and s.accelerator_type else ""
            raise PlacementError(f"a cell needs {s.gpus} GPU(s){kind} and {s.cpus} CPU(s) on one node; largest node: "
                                 f"{max((n.get('GPU', 0) for n in nodes), default=0):g} GPU(s), "
                                 f"{max((n.get('CPU', 0) for n in nodes), default=0):g} CPU(s)")
