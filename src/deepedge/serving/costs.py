"""Replica flavours and what they cost, so the serving optimiser can trade money for latency.

A *flavour* is the size of one model-server replica: a CPU quota in host cores and a memory
limit, both enforced by the replica's cgroup. The defaults are sized for the emulated edge
devices (0.08–0.42 host cores each), so one to ten replicas fit on a device.

Edge devices have no price list, so a replica is priced as if it ran on AWS Fargate, whose
per-vCPU-hour and per-GB-hour prices map one to one onto a flavour's quota and limit: that
keeps the cost numbers comparable with cloud autoscaling papers (Barista prices VMs the
same way) instead of inventing a scale. Another price list is a small JSON or YAML file
(:func:`load_catalog`).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deepedge.errors import SpecError

__all__ = [
    "DEFAULT_CATALOG",
    "DEFAULT_FLAVOURS",
    "CostCatalog",
    "Flavour",
    "load_catalog",
    "parse_flavours",
]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class Flavour:
    """One replica size: ``cores`` host cores of CPU quota and ``memory_mb`` of memory."""

    name: str
    cores: float
    memory_mb: int

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise SpecError(
                f"flavour name {self.name!r} is not a plain name",
                hint="use letters, digits, '_', '.' or '-', e.g. 'xs' or 'm2'",
            )
        if isinstance(self.cores, bool) or not (math.isfinite(self.cores) and self.cores > 0):
            raise SpecError(
                f"flavour {self.name!r} has {self.cores!r} cores",
                hint="give a positive number of host cores, e.g. 0.08",
            )
        if isinstance(self.memory_mb, bool) or not (
            isinstance(self.memory_mb, int) and self.memory_mb > 0
        ):
            raise SpecError(
                f"flavour {self.name!r} has {self.memory_mb!r} MB of memory",
                hint="give a positive whole number of MB, e.g. 512",
            )

    def __str__(self) -> str:
        return f"{self.name}={self.cores:g}:{self.memory_mb}"


DEFAULT_FLAVOURS: tuple[Flavour, ...] = (
    Flavour("xs", 0.04, 512),
    Flavour("s", 0.08, 512),
    Flavour("m", 0.16, 768),
    Flavour("l", 0.25, 1024),
)
"""Sized for the emulated devices (0.08–0.42 host cores): the smallest device takes two
``xs`` or one ``s``, the largest one ``l`` and one ``m``."""


@dataclass(frozen=True)
class CostCatalog:
    """Prices per vCPU-hour and per GB-hour in ``currency``; ``source`` says where from."""

    vcpu_hour: float
    gb_hour: float
    currency: str
    source: str

    def __post_init__(self) -> None:
        for field, value in (("vcpu_hour", self.vcpu_hour), ("gb_hour", self.gb_hour)):
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise SpecError(
                    f"cost catalog: {field} is {value!r}, not a number",
                    hint=f"give {field} as a price per hour, e.g. 0.04",
                )
            if not (math.isfinite(value) and value >= 0):
                raise SpecError(
                    f"cost catalog: {field} is {value!r}",
                    hint=f"give {field} as a finite price per hour of at least 0",
                )
        if not isinstance(self.currency, str) or not self.currency.strip():
            raise SpecError(
                f"cost catalog: currency is {self.currency!r}",
                hint="name the currency, e.g. 'USD'",
            )
        if not isinstance(self.source, str):
            raise SpecError(
                f"cost catalog: source is {self.source!r}, not text",
                hint="say in one sentence where the prices come from",
            )

    def cost_per_hour(self, flavour: Flavour) -> float:
        """What one replica of ``flavour`` costs per hour: its cores priced as vCPUs plus
        its memory limit (reserved whether used or not) priced per GB."""
        return flavour.cores * self.vcpu_hour + flavour.memory_mb / 1024 * self.gb_hour


DEFAULT_CATALOG = CostCatalog(
    vcpu_hour=0.04048,
    gb_hour=0.004445,
    currency="USD",
    source=(
        "AWS Fargate on-demand list prices, Linux/x86, us-east-1 "
        "(https://aws.amazon.com/fargate/pricing/), copied into the code, not fetched at run "
        "time; a flavour's host cores are priced as vCPUs."
    ),
)

_CATALOG_KEYS = ("vcpu_hour", "gb_hour", "currency", "source")


def load_catalog(path: str | Path) -> CostCatalog:
    """Read a price list from a JSON (``.json``) or YAML file of the four catalog fields.

    ``currency`` defaults to USD and ``source`` to the file's path; an unknown key is an
    error, so a misspelt price is not silently replaced by nothing.
    """
    from deepedge.spec import read_spec_file  # pydantic: only when a file is read

    data: Any = read_spec_file(path, expect="cost catalog")
    if not isinstance(data, dict):
        raise SpecError(
            f"{path} holds a {type(data).__name__}, not a cost catalog",
            hint='write a mapping like {"vcpu_hour": 0.04048, "gb_hour": 0.004445}',
        )
    unknown = sorted(str(k) for k in data if k not in _CATALOG_KEYS)
    if unknown:
        raise SpecError(
            f"{path}: unknown cost catalog key {unknown[0]!r}",
            hint=f"the keys are {', '.join(_CATALOG_KEYS)}",
        )
    missing = [k for k in ("vcpu_hour", "gb_hour") if k not in data]
    if missing:
        raise SpecError(
            f"{path}: the cost catalog has no {missing[0]}",
            hint="give vcpu_hour and gb_hour, the prices per vCPU-hour and per GB-hour",
        )
    try:
        return CostCatalog(
            vcpu_hour=data["vcpu_hour"],
            gb_hour=data["gb_hour"],
            currency=data.get("currency", "USD"),
            source=data.get("source", f"read from {path}"),
        )
    except SpecError as err:
        raise SpecError(f"{path}: {err}", hint=err.hint) from None


def parse_flavours(text: str) -> tuple[Flavour, ...]:
    """Flavours from a command-line option like ``"xs=0.04:512,s=0.08:512"``
    (name=cores:memory_mb, comma-separated), so an experiment can try other sizes."""
    flavours: list[Flavour] = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        name, eq, rest = item.partition("=")
        cores_text, colon, mem_text = rest.partition(":")
        if not (eq and colon):
            raise SpecError(
                f"flavour {item!r} is not name=cores:memory_mb",
                hint='write e.g. "xs=0.04:512,s=0.08:512"',
            )
        try:
            cores = float(cores_text)
            memory_mb = int(mem_text)
        except ValueError:
            raise SpecError(
                f"flavour {item!r} is not name=cores:memory_mb",
                hint="cores is a number (e.g. 0.08), memory_mb a whole number (e.g. 512)",
            ) from None
        flavours.append(Flavour(name.strip(), cores, memory_mb))
    if not flavours:
        raise SpecError(f"no flavours in {text!r}", hint='write e.g. "xs=0.04:512,s=0.08:512"')
    names = [f.name for f in flavours]
    repeated = next((n for n in names if names.count(n) > 1), None)
    if repeated is not None:
        raise SpecError(f"flavour {repeated!r} is given twice", hint="name each flavour once")
    return tuple(flavours)
