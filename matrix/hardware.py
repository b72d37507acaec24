"""Accelerators: memory and peak memory bandwidth, keyed by Ray accelerator type names.

The figures are the vendors' datasheet numbers (their "GB" as printed; usable memory is a little
lower, which is why `qmx plan` keeps headroom). Bandwidth is the roofline decode is measured against
(MBU = achieved bytes/s over `bandwidth_gbps`). Keys are Ray's names (`ray.util.accelerators`:
"H100", "A100-80G", "L4", ...; consumer cards as Ray derives them, "GeForce-RTX-4090"); variants Ray
reports under one name (H100 SXM / PCIe / NVL) are separate rows whose `ray_type` is that name.
"""
from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Accelerator:
    name: str                 # table key; the Ray accelerator type where one exists
    memory_gib: float
    bandwidth_gbps: float     # peak memory bandwidth, GB/s
    source: str
    device_pattern: str       # regex on torch.cuda.get_device_name() / nvidia-smi names
    ray_type: str = ""        # the accelerator_type Ray reports for it ("" = same as name)

    @property
    def ray_accelerator_type(self) -> str:
        return self.ray_type or self.name


_DC = "NVIDIA {} datasheet"
_GEFORCE = "NVIDIA GeForce {} specifications page"

# Ordered most specific first: accelerator_for_device_name takes the first pattern that matches.
_TABLE: tuple[Accelerator, ...] = (
    Accelerator("H100-PCIe", 80, 2000, _DC.format("H100 Tensor Core GPU (PCIe 80GB)"), r"H100.*PCIe", "H100"),
    Accelerator("H100-NVL", 94, 3900, _DC.format("H100 Tensor Core GPU (H100 NVL)"), r"H100.*NVL", "H100"),
    Accelerator("H100", 80, 3350, _DC.format("H100 Tensor Core GPU (SXM5 80GB HBM3)"), r"H100"),
    Accelerator("H200", 141, 4800, _DC.format("H200 Tensor Core GPU (SXM 141GB HBM3e)"), r"H200"),
    Accelerator("H20", 96, 4000, _DC.format("H20 (96GB HBM3)"), r"H20\b"),
    Accelerator("A100-80G-PCIe", 80, 1935, _DC.format("A100 Tensor Core GPU (PCIe 80GB HBM2e)"),
                r"A100.*80\s*GB.*PCIe", "A100"),
    Accelerator("A100-80G", 80, 2039, _DC.format("A100 Tensor Core GPU (SXM4 80GB HBM2e)"), r"A100.*80\s*GB",
                "A100"),
    Accelerator("A100-40G", 40, 1555, _DC.format("A100 Tensor Core GPU (SXM4 40GB HBM2)"), r"A100", "A100"),
    # Ray reports every A100 as "A100": the 40GB figures are the safe assumption for fit checks
    Accelerator("A100", 40, 1555, _DC.format("A100 Tensor Core GPU (40GB)"), r"$^"),
    Accelerator("L40S", 48, 864, _DC.format("L40S GPU (48GB GDDR6)"), r"L40S"),
    Accelerator("L4", 24, 300, _DC.format("L4 Tensor Core GPU (24GB GDDR6)"), r"\bL4\b"),
    Accelerator("A10G", 24, 600, "AWS EC2 G5 instances (NVIDIA A10G, 24GB GDDR6)", r"A10G"),
    Accelerator("T4", 16, 320, _DC.format("T4 Tensor Core GPU (16GB GDDR6)"), r"\bT4\b"),
    Accelerator("V100", 16, 900, _DC.format("V100 Tensor Core GPU (SXM2 16GB HBM2)"), r"V100"),
    Accelerator("RTX-PRO-6000", 96, 1792, _DC.format("RTX PRO 6000 Blackwell (96GB GDDR7)"), r"RTX PRO 6000"),
    Accelerator("GeForce-RTX-5090", 32, 1792, _GEFORCE.format("RTX 5090 (32GB GDDR7)"), r"RTX 5090"),
    Accelerator("GeForce-RTX-4090", 24, 1008, _GEFORCE.format("RTX 4090 (24GB GDDR6X)"), r"RTX 4090"),
    Accelerator("GeForce-RTX-4080", 16, 716.8, _GEFORCE.format("RTX 4080 (16GB GDDR6X)"), r"RTX 4080"),
    Accelerator("GeForce-RTX-4060", 8, 272, _GEFORCE.format("RTX 4060 (8GB GDDR6)"), r"RTX 4060(?!\s*Ti)"),
    Accelerator("GeForce-RTX-3090", 24, 936, _GEFORCE.format("RTX 3090 (24GB GDDR6X)"), r"RTX 3090"),
    Accelerator("GeForce-RTX-3070", 8, 448, _GEFORCE.format("RTX 3070 (8GB GDDR6)"), r"RTX 3070"),
)

ACCELERATORS: dict[str, Accelerator] = {a.name: a for a in _TABLE}


def accelerator_for_device_name(torch_device_name: str) -> Accelerator | None:
    """The table row for a device name such as "NVIDIA H100 80GB HBM3", or None when unknown."""
    for acc in _TABLE:
        if re.search(acc.device_pattern, torch_device_name, flags=re.IGNORECASE):
            return acc
    return None
