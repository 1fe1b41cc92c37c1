"""Built-in device kinds, modelled on real edge boards.

An emulated device gets a CPU quota in *host cores* proportional to its board's CPU
capacity, and the board's real RAM as its memory limit. The capacity score is

    cpu_score = cores × max clock (GHz) × relative per-clock throughput (Cortex-A57 = 1.0)

from the vendors' datasheets (cores, clocks, RAM) and an *estimated* per-clock factor per
micro-architecture (marked ``ipc`` below, rounded from public per-clock comparisons; treat
it as approximate). ``HOST_CORES_PER_SCORE`` maps the score to a host-core quota so that a
typical 5-device demo cluster takes about 0.8 host cores. That is deliberately low: on these
2-vCPU machines two busy single-thread trainers each get about half the speed of one
alone, so larger quotas would let devices slow each other down through the host. Relative
speeds are preserved, absolute speeds are not.
"""

from __future__ import annotations

from dataclasses import dataclass

from deepedge.errors import SpecError
from deepedge.spec import DeviceSpec, GpuSpec

__all__ = ["CATALOG", "HOST_CORES_PER_SCORE", "DeviceKind", "resolve_device"]

HOST_CORES_PER_SCORE = 0.014


@dataclass(frozen=True)
class DeviceKind:
    name: str
    board: str
    cores: int
    clock_ghz: float
    ipc: float
    memory_mb: int
    reserved_mb: int
    link_mbps: float
    gpu: GpuSpec | None
    source: str

    @property
    def cpu_score(self) -> float:
        return self.cores * self.clock_ghz * self.ipc

    @property
    def cpu_cores(self) -> float:
        """Emulated capacity in host cores (the cgroup CPU quota)."""
        return round(self.cpu_score * HOST_CORES_PER_SCORE, 3)


_KINDS = [
    DeviceKind(
        "jetson-nano",
        "NVIDIA Jetson Nano 4GB",
        4,
        1.43,
        1.0,
        4096,
        1200,
        1000,
        GpuSpec(name="Maxwell 128-core", memory_mb=4096, fp16_gflops=472),
        "NVIDIA Jetson Nano datasheet: 4x Cortex-A57 @ 1.43 GHz, 4 GB LPDDR4, 472 GFLOPS FP16, "
        "1 GbE; ipc = 1.0 (reference)",
    ),
    DeviceKind(
        "jetson-tx2",
        "NVIDIA Jetson TX2 8GB",
        6,
        2.0,
        1.1,
        8192,
        1500,
        1000,
        GpuSpec(name="Pascal 256-core", memory_mb=8192, fp16_gflops=1330),
        "NVIDIA Jetson TX2 datasheet: 2x Denver2 + 4x Cortex-A57 @ 2.0 GHz, 8 GB, 1.33 TFLOPS "
        "FP16, 1 GbE; ipc ≈ 1.1 (Denver2 estimated ~1.3× A57, averaged over 6 cores)",
    ),
    DeviceKind(
        "xavier-nx",
        "NVIDIA Jetson Xavier NX 8GB",
        6,
        1.4,
        1.6,
        8192,
        1500,
        1000,
        GpuSpec(name="Volta 384-core", memory_mb=8192, fp16_gflops=1690),
        "NVIDIA Jetson Xavier NX datasheet: 6x Carmel @ 1.4 GHz (6-core mode), 8 GB, 1 GbE; "
        "ipc ≈ 1.6 (Carmel estimated vs A57)",
    ),
    DeviceKind(
        "orin-nano",
        "NVIDIA Jetson Orin Nano 8GB",
        6,
        1.5,
        2.2,
        8192,
        1500,
        1000,
        GpuSpec(name="Ampere 1024-core", memory_mb=8192, fp16_gflops=5000),
        "NVIDIA Jetson Orin Nano datasheet: 6x Cortex-A78AE @ 1.5 GHz, 8 GB, 1 GbE; "
        "ipc ≈ 2.2 (A78 estimated vs A57)",
    ),
    DeviceKind(
        "rpi4",
        "Raspberry Pi 4 Model B 4GB",
        4,
        1.5,
        1.35,
        4096,
        700,
        1000,
        None,
        "Raspberry Pi 4 product brief: 4x Cortex-A72 @ 1.5 GHz, 4 GB, GbE; "
        "ipc ≈ 1.35 (A72 estimated vs A57)",
    ),
    DeviceKind(
        "rpi4-1gb",
        "Raspberry Pi 4 Model B 1GB",
        4,
        1.5,
        1.35,
        1024,
        700,
        1000,
        None,
        "as rpi4, with the 1 GB RAM variant",
    ),
    DeviceKind(
        "odroid-xu4",
        "Hardkernel ODROID-XU4",
        4,
        2.0,
        1.0,
        2048,
        500,
        1000,
        None,
        "Hardkernel ODROID-XU4 spec: 4x Cortex-A15 @ 2.0 GHz (+4x A7, ignored), 2 GB, GbE; "
        "ipc ≈ 1.0 (A15 ~ A57 per clock, estimated)",
    ),
    DeviceKind(
        "x86-mini",
        "Intel N100 mini PC 16GB",
        4,
        3.4,
        2.2,
        16384,
        2000,
        2500,
        None,
        "Intel N100 spec: 4 E-cores (Gracemont) @ up to 3.4 GHz, typical 16 GB, 2.5 GbE; "
        "ipc ≈ 2.2 (Gracemont estimated vs A57)",
    ),
]

CATALOG: dict[str, DeviceKind] = {k.name: k for k in _KINDS}


def resolve_device(spec: DeviceSpec) -> DeviceSpec:
    """Fill the fields a device spec left out from its catalog kind.

    A spec that sets every capacity field may use a kind not in the catalog (a custom board).
    """
    kind = CATALOG.get(spec.kind)
    missing = [f for f in ("cpu_cores", "memory_mb") if getattr(spec, f) is None]
    if kind is None:
        if missing:
            raise SpecError(
                f"device {spec.name!r} has unknown kind {spec.kind!r} and no {', '.join(missing)}",
                hint=f"use one of {sorted(CATALOG)} or set {', '.join(missing)} explicitly",
            )
        return spec.model_copy(
            update={"reserved_mb": spec.reserved_mb or 0, "link_mbps": spec.link_mbps or 1000.0}
        )
    return spec.model_copy(
        update={
            "cpu_cores": spec.cpu_cores if spec.cpu_cores is not None else kind.cpu_cores,
            "memory_mb": spec.memory_mb if spec.memory_mb is not None else kind.memory_mb,
            "reserved_mb": spec.reserved_mb if spec.reserved_mb is not None else kind.reserved_mb,
            "link_mbps": spec.link_mbps if spec.link_mbps is not None else kind.link_mbps,
            "gpu": spec.gpu if spec.gpu is not None else kind.gpu,
        }
    )
