"""GPU catalogue for planning: usable memory as the driver reports it (nvidia-smi total),
not the marketing figure, since that is what a serving engine can actually allocate."""

import re
from dataclasses import dataclass

GIB = 1024**3
MIB = 1024**2


@dataclass(frozen=True)
class GpuSpec:
    """A GPU model's name and memory, from the built-in table or `custom:NGiB`."""

    name: str
    memory_bytes: int

    @property
    def memory_gib(self) -> float:
        return self.memory_bytes / GIB


GPUS: dict[str, GpuSpec] = {
    "H100-80GB": GpuSpec("H100-80GB", 81559 * MIB),
    "H200": GpuSpec("H200", 143771 * MIB),
    "A100-80GB": GpuSpec("A100-80GB", 81920 * MIB),
    "L40S": GpuSpec("L40S", 46068 * MIB),
}


def resolve_gpu(spec: str) -> GpuSpec:
    """A catalogue name (case-insensitive) or a custom size such as `custom:24GiB`, `24GiB`,
    `24GB` (decimal) or a bare number of GiB."""
    for name, gpu in GPUS.items():
        if name.lower() == spec.lower():
            return gpu
    body = spec.split(":", 1)[1] if spec.lower().startswith("custom:") else spec
    match = re.fullmatch(r"\s*([0-9.]+)\s*(gib|gb|g)?\s*", body, re.IGNORECASE)
    if not match:
        known = ", ".join(GPUS)
        raise ValueError(f"unknown GPU {spec!r}: use one of {known} or custom:<N>GiB")
    amount, unit = float(match.group(1)), (match.group(2) or "gib").lower()
    size = amount * (1e9 if unit == "gb" else GIB)
    return GpuSpec(f"custom-{amount:g}{'GB' if unit == 'gb' else 'GiB'}", int(size))
