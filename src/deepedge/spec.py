"""Typed, validated specs for devices, LC apps, clusters, jobs and plans.

Specs are frozen pydantic models loadable from YAML or JSON. A malformed file gives a
one-line :class:`~deepedge.errors.SpecError` naming the field path and the bad value, so a
user can fix it without reading a traceback.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml_rs
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from deepedge.errors import DeepEdgeError, SpecError, UsageError

__all__ = [
    "AppSpec",
    "ClusterSpec",
    "CodeSpec",
    "CustomSpec",
    "DatasetSpec",
    "DeviceSpec",
    "DriftSpec",
    "ExcludedDevice",
    "JobSpec",
    "ModelSpec",
    "OptimizerSpec",
    "Plan",
    "RateTraceSpec",
    "load_spec",
    "parse_spec",
    "read_spec_file",
    "spec_errors",
    "spec_kind",
]


def _not_bool(value: Any) -> Any:
    """YAML's ``true`` is a bool, and pydantic would take it as the number 1: refuse it."""
    if isinstance(value, bool):
        raise ValueError("expected a number, not a boolean")
    return value


Int = Annotated[int, BeforeValidator(_not_bool)]
Float = Annotated[float, BeforeValidator(_not_bool)]
PositiveFloat = Annotated[Float, Field(gt=0)]
Seed = Annotated[Int, Field(ge=0, lt=2**63)]  # torch and numpy take 64-bit seeds
Name = Annotated[str, Field(min_length=1, max_length=63, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")]
T = TypeVar("T")
MAX_SAMPLES = 10_000_000  # beyond any edge data set; stops 1e12 samples reaching numpy


class _Spec(BaseModel):
    # inf and NaN are never a capacity, a rate or a deadline
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


class GpuSpec(_Spec):
    """An optional accelerator; only used on the CUDA path."""

    name: str
    memory_mb: Annotated[Int, Field(gt=0, le=2**24)]
    fp16_gflops: PositiveFloat | None = None


class DeviceSpec(_Spec):
    """One edge device. Fields left out are filled from the catalog entry for ``kind``.

    ``cpu_cores`` is the emulated capacity in host cores (the cgroup CPU quota);
    ``memory_mb`` the device's RAM (the cgroup memory limit); ``reserved_mb`` what the OS
    and other residents take, so training may use ``memory_mb - reserved_mb - apps``.
    """

    name: Name
    kind: str
    cpu_cores: Annotated[Float, Field(gt=0, le=1024)] | None = None
    memory_mb: Annotated[Int, Field(gt=0, le=2**24)] | None = None  # up to 16 TiB
    reserved_mb: Annotated[Int, Field(ge=0, le=2**24)] | None = None
    gpu: GpuSpec | None = None
    link_mbps: Annotated[Float, Field(gt=0, le=1e6)] | None = None

    @model_validator(mode="after")
    def _reserve_below_memory(self) -> DeviceSpec:
        if (
            self.memory_mb is not None
            and self.reserved_mb is not None
            and self.reserved_mb >= self.memory_mb
        ):
            raise ValueError(
                f"reserved_mb {self.reserved_mb} leaves nothing of memory_mb {self.memory_mb}"
            )
        return self


class RateTraceSpec(_Spec):
    """An LC app's request rate over time: a trace replayed hour by hour, compressed and
    scaled to the emulated cluster, which the planner can plan against at its forecast peak.

    ``path`` is ``bikeshare`` (the bundled Capital Bikeshare 2011 hourly trace) or a CSV
    as :func:`deepedge.serving.load_trace` reads it (columns ``t,rate``, or one column of
    request timestamps in seconds; relative paths start at the current directory), taken
    as mean rates per hour. The rates are scaled so
    that the trace's busiest hour asks ``peak_rps``; one trace hour lasts ``hour_s``
    seconds of wall time; the replay starts at hour ``start_hour`` of the trace (default:
    the start of its last week, so the weeks before are the forecaster's history) and
    stays at its last rate past the trace's end. ``level`` is the forecast quantile the
    planner plans at (``lc_rates: forecast-peak``).

    The file is read (once per file, cached) when the spec is validated: that is where
    an unknown path or a start beyond the trace is reported.
    """

    path: Annotated[str, Field(min_length=1, max_length=4096)]
    peak_rps: Annotated[Float, Field(gt=0, le=100_000)]
    hour_s: Annotated[Float, Field(gt=0, le=3600)] = 3600.0  # real time unless compressed
    start_hour: Annotated[Int, Field(ge=0, le=10_000_000)] | None = None
    level: Annotated[Float, Field(gt=0, lt=1)] = 0.95

    @model_validator(mode="after")
    def _readable(self) -> RateTraceSpec:
        # serving sits above spec in the layers: imported here, when a trace is given
        from deepedge.serving.lc_rates import check_rate_trace

        _as_value_error(check_rate_trace, self)
        return self


class AppSpec(_Spec):
    """A latency-critical app pinned to a device, with an SLO on its p95 latency.

    Its load is ``rate_rps`` requests/s (Poisson), or with ``rate_trace`` a replayed trace.
    With a trace ``rate_rps`` may be left out: it is then the trace's rate at the replay
    start (at least :data:`~deepedge.serving.lc_rates.MIN_RATE_SHARE` of ``peak_rps``, as a
    rate must be positive), which is what the app is profiled at and what the planner
    calls its *current* rate. Given, it overrides that (so a spec written out with the
    rate filled in loads again unchanged); the load still follows the trace. After
    validation ``rate_rps`` is always set.
    """

    name: Name
    device: Name
    kind: Literal["cnn_inference", "kv_lookup", "log_ingest", "frame_relay"] = "cnn_inference"
    rate_rps: Annotated[Float, Field(gt=0, le=100_000)] | None = None
    deadline_ms: Annotated[Float, Field(gt=0, le=3_600_000)]
    memory_mb: Annotated[Int, Field(gt=0, le=2**24)] = 300  # the torch server measures ~240 MB
    rate_trace: RateTraceSpec | None = None

    @model_validator(mode="after")
    def _rate_given(self) -> AppSpec:
        if self.rate_rps is not None:
            return self
        if self.rate_trace is None:
            raise ValueError("rate_rps is required (or a rate_trace to replay)")
        from deepedge.serving.lc_rates import start_rate

        # frozen: set in place once, as validation of the field itself would have
        object.__setattr__(self, "rate_rps", _as_value_error(start_rate, self.rate_trace))
        self.__pydantic_fields_set__.add("rate_rps")
        return self


def _as_value_error(check: Callable[[Any], T], value: Any) -> T:
    """``check(value)``, its DeepEdgeError as the ValueError pydantic reports per field."""
    try:
        return check(value)
    except DeepEdgeError as err:
        raise ValueError(err.one_line()) from None


class ClusterSpec(_Spec):
    name: Name = "cluster"
    devices: Annotated[list[DeviceSpec], Field(min_length=1)]
    apps: list[AppSpec] = Field(default_factory=list)
    cpu_period_us: Annotated[Int, Field(ge=1000, le=1_000_000)] = 20_000
    # loopback: all devices share this machine's loopback; netns: a namespace per device
    # with a tbf-shaped link of the device's link_mbps (needs root and iproute2)
    network: Literal["loopback", "netns"] = "loopback"
    # pin each device to its own host CPUs (cpuset, or CPU affinity without one), so that
    # where the scheduler happens to put a device's processes does not change its latency
    pin_cpus: bool = True
    # local: devices are emulated on this machine; ray: each device is a node of a Ray
    # cluster (started with `ray start ... --resources` as `deepedge cluster up` prints)
    backend: Literal["local", "ray"] = "local"
    # the Ray cluster's head (HOST:PORT, or "auto" for the one this machine belongs to);
    # unset with backend ray: an emulated Ray cluster on this machine, a node per device
    address: Annotated[str, Field(min_length=1, max_length=300)] | None = None

    @model_validator(mode="after")
    def _check_references(self) -> ClusterSpec:
        # linear in the fleet: simulated clusters have 100,000 devices
        for what, names in (
            ("device", [d.name for d in self.devices]),
            ("app", [a.name for a in self.apps]),
        ):
            dupes = sorted(n for n, c in Counter(names).items() if c > 1)
            if dupes:
                raise ValueError(f"{what} names must be unique, repeated: {_few(dupes)}")
        known = {d.name for d in self.devices}
        for app in self.apps:
            if app.device not in known:
                raise ValueError(
                    f"app {app.name!r} names unknown device {app.device!r}; "
                    f"known: {_few(sorted(known))}"
                )
        if self.address is not None and self.backend != "ray":
            raise ValueError("address is the Ray head's; it needs backend: ray")
        return self


def _few(names: list[str], shown: int = 8) -> str:
    """A list of names for one line: the first few and how many more."""
    head = ", ".join(repr(n) for n in names[:shown])
    return head + (f" and {len(names) - shown} more" if len(names) > shown else "")


class DriftSpec(_Spec):
    """How the target domain differs from the source: the data drift to re-train for."""

    brightness: Annotated[Float, Field(gt=0, le=4)] = 1.0  # multiplies pixel intensity
    contrast: Annotated[Float, Field(gt=0, le=4)] = 1.0
    noise_std: Annotated[Float, Field(ge=0, le=128)] = 0.0  # in 0..255 pixel units
    background: Annotated[Float, Field(ge=0, le=1)] = 0.0  # strength of a cluttered background
    class_weights: list[Annotated[Float, Field(ge=0, le=1e6)]] | None = None  # new class mix


class DatasetSpec(_Spec):
    # custom: tensors given in Python (``deepedge.fit``), shipped to the devices as a file
    kind: Literal["synthetic", "image_folder", "digits", "custom"] = "synthetic"
    train_size: Annotated[Int, Field(gt=0, le=MAX_SAMPLES)] = 2000
    test_size: Annotated[Int, Field(gt=0, le=MAX_SAMPLES)] = 500
    num_classes: Annotated[Int, Field(ge=2, le=1000)] = 10
    image_size: Annotated[Int, Field(ge=8, le=256)] = 32
    seed: Seed = 0
    path: str | None = None  # image_folder root (Caltech-101/256 layout)
    drift: DriftSpec = DriftSpec()

    @model_validator(mode="after")
    def _check_path(self) -> DatasetSpec:
        if self.kind == "image_folder" and not self.path:
            raise ValueError("dataset.kind 'image_folder' needs dataset.path")
        return self


class ModelSpec(_Spec):
    # custom: the job's ``custom`` section names the model factory (``deepedge.fit``)
    arch: Literal["small_cnn", "resnet", "meanet", "custom"] = "small_cnn"
    width: Annotated[Int, Field(ge=4, le=256)] = 16
    depth: Annotated[Int, Field(ge=1, le=8)] = 2  # blocks per stage for resnet and meanet
    # meanet trains block-wise: "main" trains the main block on every class, "extension"
    # the adaptive and extension blocks with the main block frozen (the edge-side
    # re-training; the hard classes come with the --init weights); "all" is for the others
    blocks: Literal["all", "main", "extension"] = "all"

    @model_validator(mode="after")
    def _check_blocks(self) -> ModelSpec:
        if self.arch == "meanet" and self.blocks == "all":
            raise ValueError(
                "model.arch 'meanet' trains block-wise: set model.blocks to 'main' or 'extension'"
            )
        if self.arch != "meanet" and self.blocks != "all":
            raise ValueError(
                f"model.blocks {self.blocks!r} is for arch 'meanet', not {self.arch!r}"
            )
        return self


class OptimizerSpec(_Spec):
    name: Literal["sgd", "adam"] = "sgd"
    lr: Annotated[Float, Field(gt=0, le=100)] = 0.05
    momentum: Annotated[Float, Field(ge=0, lt=1)] = 0.9
    weight_decay: Annotated[Float, Field(ge=0, le=100)] = 0.0


Shape = Annotated[list[Annotated[Int, Field(ge=1, le=2**31)]], Field(max_length=16)]


class CodeSpec(_Spec):
    """User code that every process of a job runs (coordinator, training agents, the
    interference lab's training co-runner): an import path ``package.module:attr`` or a
    callable pickled by value with cloudpickle (base64), for code in a script's
    ``__main__``. Exactly one of the two; ``name`` is what messages call it."""

    name: Annotated[str, Field(min_length=1, max_length=300)]
    ref: Annotated[str, Field(pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")] | None = None
    pickled: Annotated[str, Field(min_length=1, max_length=64 * 2**20)] | None = None

    @model_validator(mode="after")
    def _one_source(self) -> CodeSpec:
        if (self.ref is None) == (self.pickled is None):
            raise ValueError(f"code {self.name!r} needs exactly one of ref and pickled")
        return self


class CustomSpec(_Spec):
    """A model, loss and optimiser brought by the user (built by ``deepedge.fit``, which
    measures the fields below on the real model and data before anything boots).

    ``signature`` keys the job's profiles and interference rows in the knowledge base
    (a hash of the model's structure and input shape), so different user models never
    share a profile. ``loss`` must reduce by the *mean* over the batch's samples: uneven
    local batches are weighted by their share of the global batch (see ``train.ddp``).
    """

    model: CodeSpec
    loss: CodeSpec | None = None  # None: cross-entropy
    optimizer: CodeSpec | None = None  # None: the job's ``optimizer`` spec
    seeded: bool = False  # the factory takes ``seed=``
    signature: Annotated[str, Field(pattern=r"^[0-9a-f]{16}$")]
    optimizer_name: Annotated[str, Field(min_length=1, max_length=63)] = "sgd"
    optimizer_slots: Annotated[Int, Field(ge=0, le=16)] = 1  # state tensors per parameter
    param_bytes: Annotated[Int, Field(ge=0)] = 0
    activation_bytes: Annotated[Int, Field(ge=0)] = 0  # leaf outputs for one sample
    input_shape: Shape  # one sample's
    input_dtype: Literal["float32", "int64"] = "float32"
    input_high: Int | None = None  # integer inputs: one above the largest value seen
    target_shape: Shape = Field(default_factory=list)
    target_dtype: Literal["float32", "int64"] = "int64"
    target_high: Int | None = None
    sys_path: list[str] = Field(default_factory=list, max_length=64)


class JobSpec(_Spec):
    name: Name = "retrain"
    model: ModelSpec = ModelSpec()
    dataset: DatasetSpec = DatasetSpec()
    epochs: Annotated[Int, Field(gt=0, le=10_000)] = 2
    global_batch: Annotated[Int, Field(gt=0, le=MAX_SAMPLES)] = 128
    optimizer: OptimizerSpec = OptimizerSpec()
    seed: Seed = 0
    custom: CustomSpec | None = None  # a user's model, loss, optimiser (``deepedge.fit``)

    @model_validator(mode="after")
    def _batch_fits_data(self) -> JobSpec:
        custom = self.custom is not None
        if custom != (self.model.arch == "custom") or (
            self.dataset.kind == "custom" and not custom
        ):
            raise ValueError(
                "model.arch 'custom' and dataset.kind 'custom' go with a 'custom' section, "
                "which deepedge.fit builds from your Python code"
            )
        if self.global_batch > self.dataset.train_size:
            raise ValueError(
                f"global_batch {self.global_batch} is larger than dataset.train_size "
                f"{self.dataset.train_size}: no step could be full"
            )
        return self


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

MAX_NESTING = 32  # specs nest four levels; deeper is a broken or hostile file
MAX_VALUES = 5_000_000  # a 100,000-device cluster has about 400,000 (stops alias bombs)
_KINDS = {"ClusterSpec": "cluster", "JobSpec": "job"}
_JOB_KEYS = frozenset(JobSpec.model_fields) - {"name"}


def spec_kind(data: Any) -> str | None:
    """``"cluster"`` or ``"job"`` from a parsed file's top-level keys; None if neither."""
    if not isinstance(data, dict):
        return None
    if "devices" in data:
        return "cluster"
    if _JOB_KEYS & data.keys():
        return "job"
    return None


def _shown(value: Any) -> str:
    """A field's value for a one-line message: short, and safe for any parsed input."""
    if isinstance(value, dict):
        return "{…}"
    if isinstance(value, list):
        return f"[… {len(value)} items]"
    text = json.dumps(value, default=str, ensure_ascii=False)
    return text if len(text) <= 60 else text[:57] + "..."


def spec_errors(kind: str, err: ValidationError) -> list[str]:
    """Every problem in ``err`` as ``field 'a.b' = value: reason``, one line each."""
    lines = []
    for e in err.errors(include_url=False):
        reason = e["msg"].removeprefix("Value error, ")
        if e["loc"]:
            loc = ".".join(str(p) for p in e["loc"])
            lines.append(f"{kind}: field '{loc}' = {_shown(e.get('input'))}: {reason}")
        else:  # a check across fields: its message names them
            lines.append(f"{kind}: {reason}")
    return lines


def parse_spec(model: type[S], data: Any, *, source: str = "input") -> S:
    """Validate ``data`` as ``model``; raise a one-line SpecError naming field and value.

    A file of the other kind (a cluster spec where a job spec belongs) is named as such
    rather than reported field by field.
    """
    want = _KINDS.get(model.__name__)
    got = spec_kind(data)
    if want and got and got != want:
        raise UsageError(
            f"{source} looks like a {got} spec, but a {want} spec is expected here",
            hint="check the order of the arguments: CLUSTER first, then JOB",
        )
    if want and not isinstance(data, dict):
        raise SpecError(
            f"{source} holds a {_type_name(data)}, not the fields of a {want} spec",
            hint=f"see examples/demo-{want}.yaml",
        )
    try:
        return model.model_validate(data)
    except ValidationError as err:
        lines = spec_errors(f"invalid {model.__name__} in {source}", err)
        more = f" (+{len(lines) - 1} more; `deepedge validate {source}` lists all)"
        raise SpecError(
            lines[0] + (more if len(lines) > 1 else ""),
            hint="fix that field; `deepedge validate FILE` checks a file",
        ) from None


def _type_name(data: Any) -> str:
    return {list: "list", str: "string", int: "number", float: "number", bool: "boolean"}.get(
        type(data), type(data).__name__
    )


def load_spec(model: type[S], path: str | Path) -> S:
    """Load a YAML or JSON file into ``model``."""
    expect = _KINDS.get(model.__name__, model.__name__)
    return parse_spec(model, read_spec_file(path, expect=f"{expect} spec"), source=str(path))


def read_spec_file(path: str | Path, *, expect: str = "spec") -> Any:
    """The parsed YAML/JSON content of ``path`` (``.json`` is JSON, anything else YAML).

    YAML is read as YAML 1.2 by yaml-rs (Rust): a 100,000-device spec parses in half a
    second, a repeated key is an error rather than silently the last one, and aliases are
    bounded. Every way a file can be unusable is a one-line SpecError naming the file and,
    for syntax errors, the line and the reason: unreadable, empty, binary or not UTF-8, bad
    syntax, nested deeper than any spec, or expanding past any real spec.
    """
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as err:
        raise SpecError(f"cannot read {p}: {err.strerror}", hint="check the path") from None
    if b"\0" in raw:
        raise SpecError(f"{p} is a binary file, not a YAML or JSON {expect}", hint="check the path")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise SpecError(
            f"{p} is not UTF-8 text (byte 0x{raw[err.start]:02x} at line {line})",
            hint="save the file as UTF-8",
        ) from None
    as_json = p.suffix.lower() == ".json"
    try:
        data = json.loads(text) if as_json else yaml_rs.loads(text)
    except json.JSONDecodeError as err:
        raise SpecError(
            f"{p} is not valid JSON at line {err.lineno}, column {err.colno}: {err.msg}",
            hint="fix the syntax there",
        ) from None
    except yaml_rs.YAMLDecodeError as err:
        raise SpecError(
            f"{p} is not valid YAML{_yaml_where(err)}", hint="fix the syntax there"
        ) from None
    except RecursionError:
        raise _too_deep(p) from None
    if data is None:
        raise SpecError(f"{p} is empty", hint=f"write a {expect} in it")
    _check_size(data, p)
    return data


def _yaml_where(err: Exception) -> str:
    """yaml-rs says ``… at line L, column C`` on its first line and the reason on its last
    (a source excerpt between): keep both, on one line."""
    lines = str(err).strip().splitlines() or [""]
    where = lines[0].partition(" at ")[2]
    reason = lines[-1].strip()
    return (f" at {where}" if where else "") + (f": {reason}" if reason else "")


def _too_deep(p: Path) -> SpecError:
    return SpecError(
        f"{p} nests deeper than {MAX_NESTING} levels, deeper than any spec or report",
        hint="check the brackets and indentation",
    )


def _check_size(data: Any, p: Path) -> None:
    """Refuse deep nesting and alias bombs before pydantic walks the data recursively."""
    stack = [(data, 0)]
    count = 0
    while stack:
        value, depth = stack.pop()
        count += 1
        if depth > MAX_NESTING:
            raise _too_deep(p)
        if count > MAX_VALUES:
            raise SpecError(
                f"{p} holds more than {MAX_VALUES:,} values (YAML aliases expand them)",
                hint="write the spec out without aliases, or split it",
            )
        if isinstance(value, dict):
            stack.extend((v, depth + 1) for v in value.values())
        elif isinstance(value, list):
            stack.extend((v, depth + 1) for v in value)
