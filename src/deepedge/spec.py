"""Typed, validated specs for devices, LC apps, clusters, jobs and plans.

Specs are frozen pydantic models loadable from YAML or JSON. A malformed file gives a
one-line :class:`~deepedge.errors.SpecError` naming the field path and the bad value, so a
user can fix it without reading a traceback.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from deepedge.errors import SpecError

__all__ = [
    "AppSpec",
    "ClusterSpec",
    "DatasetSpec",
    "DeviceSpec",
    "DriftSpec",
    "ExcludedDevice",
    "JobSpec",
    "ModelSpec",
    "OptimizerSpec",
    "Plan",
    "load_spec",
    "parse_spec",
    "read_spec_file",
]

PositiveFloat = Annotated[float, Field(gt=0)]
Name = Annotated[str, Field(min_length=1, max_length=63, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")]


class _Spec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class GpuSpec(_Spec):
    """An optional accelerator; only used on the CUDA path."""

    name: str
    memory_mb: Annotated[int, Field(gt=0)]
    fp16_gflops: PositiveFloat | None = None


class DeviceSpec(_Spec):
    """One edge device. Fields left out are filled from the catalog entry for ``kind``.

    ``cpu_cores`` is the emulated capacity in host cores (the cgroup CPU quota);
    ``memory_mb`` the device's RAM (the cgroup memory limit); ``reserved_mb`` what the OS
    and other residents take, so training may use ``memory_mb - reserved_mb - apps``.
    """

    name: Name
    kind: str
    cpu_cores: PositiveFloat | None = None
    memory_mb: Annotated[int, Field(gt=0)] | None = None
    reserved_mb: Annotated[int, Field(ge=0)] | None = None
    gpu: GpuSpec | None = None
    link_mbps: PositiveFloat | None = None


class AppSpec(_Spec):
    """A latency-critical app pinned to a device, with an SLO on its p95 latency."""

    name: Name
    device: Name
    kind: Literal["cnn_inference", "kv_lookup", "log_ingest", "frame_relay"] = "cnn_inference"
    rate_rps: PositiveFloat
    deadline_ms: PositiveFloat
    memory_mb: Annotated[int, Field(gt=0)] = 300  # the torch inference server measures ~240 MB RSS


class ClusterSpec(_Spec):
    name: Name = "cluster"
    devices: Annotated[list[DeviceSpec], Field(min_length=1)]
    apps: list[AppSpec] = Field(default_factory=list)
    cpu_period_us: Annotated[int, Field(ge=1000, le=1_000_000)] = 20_000
    # loopback: all devices share this machine's loopback; netns: a namespace per device
    # with a tbf-shaped link of the device's link_mbps (needs root and iproute2)
    network: Literal["loopback", "netns"] = "loopback"

    @model_validator(mode="after")
    def _check_references(self) -> ClusterSpec:
        names = [d.name for d in self.devices]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"device names must be unique, repeated: {dupes}")
        app_names = [a.name for a in self.apps]
        dupes = sorted({n for n in app_names if app_names.count(n) > 1})
        if dupes:
            raise ValueError(f"app names must be unique, repeated: {dupes}")
        for app in self.apps:
            if app.device not in names:
                raise ValueError(
                    f"app {app.name!r} names unknown device {app.device!r}; known: {names}"
                )
        return self


class DriftSpec(_Spec):
    """How the target domain differs from the source: the data drift to re-train for."""

    brightness: Annotated[float, Field(gt=0, le=4)] = 1.0  # multiplies pixel intensity
    contrast: Annotated[float, Field(gt=0, le=4)] = 1.0
    noise_std: Annotated[float, Field(ge=0, le=128)] = 0.0  # in 0..255 pixel units
    background: Annotated[float, Field(ge=0, le=1)] = 0.0  # strength of a cluttered background
    class_weights: list[Annotated[float, Field(ge=0)]] | None = None  # new class mix


class DatasetSpec(_Spec):
    kind: Literal["synthetic", "image_folder", "digits"] = "synthetic"
    train_size: Annotated[int, Field(gt=0)] = 2000
    test_size: Annotated[int, Field(gt=0)] = 500
    num_classes: Annotated[int, Field(ge=2, le=1000)] = 10
    image_size: Annotated[int, Field(ge=8, le=256)] = 32
    seed: int = 0
    path: str | None = None  # image_folder root (Caltech-101/256 layout)
    drift: DriftSpec = DriftSpec()

    @model_validator(mode="after")
    def _check_path(self) -> DatasetSpec:
        if self.kind == "image_folder" and not self.path:
            raise ValueError("dataset.kind 'image_folder' needs dataset.path")
        return self


class ModelSpec(_Spec):
    arch: Literal["small_cnn", "resnet"] = "small_cnn"
    width: Annotated[int, Field(ge=4, le=256)] = 16
    depth: Annotated[int, Field(ge=1, le=8)] = 2  # blocks per stage for resnet


class OptimizerSpec(_Spec):
    name: Literal["sgd", "adam"] = "sgd"
    lr: PositiveFloat = 0.05
    momentum: Annotated[float, Field(ge=0, lt=1)] = 0.9
    weight_decay: Annotated[float, Field(ge=0)] = 0.0


class JobSpec(_Spec):
    name: Name = "retrain"
    model: ModelSpec = ModelSpec()
    dataset: DatasetSpec = DatasetSpec()
    epochs: Annotated[int, Field(gt=0, le=10_000)] = 2
    global_batch: Annotated[int, Field(gt=0)] = 128
    optimizer: OptimizerSpec = OptimizerSpec()
    seed: Annotated[int, Field(ge=0)] = 0


class ExcludedDevice(_Spec):
    device: Name
    reason: str


class Plan(_Spec):
    """Which devices train and each one's local batch b_i; Σ b_i equals the global batch.

    With ``micro_batch`` set the plan is *dynamic* (EDDL-style dispatch): every listed
    device takes part, and within each global step the devices claim chunks of
    ``micro_batch`` samples from a shared counter as they finish, so a faster device
    processes more of the step. ``local_batches`` is then only the *expected* share of
    each device (for predictions and display), not a fixed split.
    """

    policy: str
    global_batch: Annotated[int, Field(gt=0)]
    local_batches: dict[Name, Annotated[int, Field(gt=0)]]
    excluded: list[ExcludedDevice] = Field(default_factory=list)
    predicted_step_s: float | None = None
    notes: list[str] = Field(default_factory=list)
    # training intensity c_i per device: its share of the device's CPU (missing: 1.0)
    intensities: dict[Name, Annotated[float, Field(gt=0, le=1)]] = Field(default_factory=dict)
    predicted_compute_s: dict[Name, float] = Field(default_factory=dict)  # per device, per step
    predicted_comm_s: float | None = None
    micro_batch: Annotated[int, Field(gt=0)] | None = None  # set: dynamic dispatch (see above)

    @field_validator("local_batches")
    @classmethod
    def _non_empty(cls, v: dict[str, int]) -> dict[str, int]:
        if not v:
            raise ValueError("a plan needs at least one device with a positive local batch")
        return v

    @model_validator(mode="after")
    def _sums_to_global(self) -> Plan:
        total = sum(self.local_batches.values())
        if total != self.global_batch:
            raise ValueError(
                f"local batches sum to {total} but the global batch is {self.global_batch}"
            )
        stray = sorted(set(self.intensities) - set(self.local_batches))
        if stray:
            raise ValueError(f"intensities given for devices without a local batch: {stray}")
        if self.micro_batch is not None and self.micro_batch > self.global_batch:
            raise ValueError(
                f"micro batch {self.micro_batch} is larger than the global batch "
                f"{self.global_batch}"
            )
        return self

    @property
    def devices(self) -> list[str]:
        return list(self.local_batches)

    def describe(self) -> str:
        """The split in one line (as the CLI, demo and benchmarks print it)."""
        if self.dynamic:
            return f"dynamic: {self.micro_batch}-sample chunks to {', '.join(self.devices)}"
        return ", ".join(
            f"{n} {b}" + (f" @{self.intensities[n]:g}" if n in self.intensities else "")
            for n, b in self.local_batches.items()
        )

    @property
    def dynamic(self) -> bool:
        """Whether devices claim micro-batches at run time instead of a fixed share."""
        return self.micro_batch is not None


S = TypeVar("S", bound=BaseModel)


def _format_validation_error(kind: str, source: str, err: ValidationError) -> str:
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first["loc"]) or "(top level)"
    value = first.get("input")
    shown = json.dumps(value, default=str) if not isinstance(value, dict) else "{…}"
    if len(shown) > 60:
        shown = shown[:57] + "..."
    extra = f" (+{len(err.errors()) - 1} more)" if len(err.errors()) > 1 else ""
    return f"invalid {kind} in {source}: field '{loc}' = {shown}: {first['msg']}{extra}"


def parse_spec(model: type[S], data: Any, *, source: str = "input") -> S:
    """Validate ``data`` as ``model``; raise a one-line SpecError naming field and value."""
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise SpecError(
            _format_validation_error(model.__name__, source, err),
            hint="fix that field; `deepedge validate FILE` checks a file",
        ) from None


def load_spec(model: type[S], path: str | Path) -> S:
    """Load a YAML or JSON file into ``model``."""
    return parse_spec(model, read_spec_file(path, expect=model.__name__), source=str(path))


def read_spec_file(path: str | Path, *, expect: str = "spec") -> Any:
    """The parsed YAML/JSON content of ``path``; a one-line SpecError if unreadable or empty."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as err:
        raise SpecError(f"cannot read {p}: {err.strerror}", hint="check the path") from None
    try:
        data = json.loads(text) if p.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as err:
        line = getattr(getattr(err, "problem_mark", None), "line", None)
        where = f" at line {line + 1}" if line is not None else ""
        raise SpecError(
            f"{p} is not valid {'JSON' if p.suffix == '.json' else 'YAML'}{where}"
        ) from None
    if data is None:
        raise SpecError(f"{p} is empty", hint=f"write a {expect} in it")
    return data
