"""Checks of a spec against the world: the catalog, the file system and this machine.

A spec that parses (:mod:`deepedge.spec`) can still be unusable: a device kind the
catalog does not know, LC apps that need more memory than their device has, an image
folder that is not there, a data set larger than this machine's memory. These checks run
in ``deepedge validate`` and before any command boots a cluster, and every problem is
reported at once, one line each, so a user fixes a file in one pass.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import psutil

from deepedge.catalog import resolve_device
from deepedge.errors import SpecError
from deepedge.spec import ClusterSpec, JobSpec

__all__ = ["check_cluster", "check_job", "problems", "require_usable"]

_CHANNELS = 3  # every data set is RGB uint8
_TRAINING_COPIES = 4  # source and drifted domains, plus float tensors of a batch and slack


def check_cluster(spec: ClusterSpec) -> list[str]:
    """Problems that make ``spec`` unusable, one line each (empty: usable).

    Linear in devices and apps, so a simulated 100,000-device fleet checks in seconds.
    """
    problems: list[str] = []
    free_mb: dict[str, int] = {}
    for i, device in enumerate(spec.devices):
        try:
            d = resolve_device(device)
        except SpecError as err:
            problems.append(f"devices.{i}: {err.one_line()}")
            continue
        assert d.memory_mb is not None and d.reserved_mb is not None  # filled by the catalog
        if d.reserved_mb >= d.memory_mb:
            problems.append(
                f"devices.{i} ({d.name}): reserved_mb {d.reserved_mb} (catalog default for "
                f"{d.kind!r} if not given) leaves nothing of memory_mb {d.memory_mb}"
            )
            continue
        free_mb[d.name] = d.memory_mb - d.reserved_mb
    apps_mb: dict[str, int] = defaultdict(int)
    for app in spec.apps:
        apps_mb[app.device] += app.memory_mb
    for name, need in apps_mb.items():
        if name in free_mb and need > free_mb[name]:
            problems.append(
                f"apps on device {name!r} need {need} MB but it has {free_mb[name]} MB beside "
                f"its reserved memory"
            )
    return problems


def check_job(spec: JobSpec) -> list[str]:
    """Problems that make ``spec`` unusable here, one line each (empty: usable)."""
    from deepedge.data import MAX_CLASSES
    from deepedge.data.drift import check_class_weights

    problems: list[str] = []
    ds = spec.dataset
    if ds.kind == "synthetic" and ds.num_classes > MAX_CLASSES:
        problems.append(
            f"dataset.num_classes {ds.num_classes} is more than the synthetic data set's "
            f"{MAX_CLASSES} distinct classes"
        )
    if ds.kind == "image_folder" and ds.path:
        root = Path(ds.path).expanduser()
        if not root.is_dir():
            problems.append(
                f"dataset.path {ds.path!r}: no such folder (relative paths start at {Path.cwd()})"
            )
    try:
        check_class_weights(ds.drift.class_weights, ds.num_classes)
    except SpecError as err:
        problems.append(f"dataset.{err.one_line()}")
    samples = ds.train_size + ds.test_size
    need = samples * _CHANNELS * ds.image_size**2 * _TRAINING_COPIES
    have = psutil.virtual_memory().total
    if need > have // 2:
        problems.append(
            f"dataset: {samples:,} images of {ds.image_size}×{ds.image_size} need about "
            f"{need / 2**30:.1f} GiB, more than half of this machine's {have / 2**30:.0f} GiB"
        )
    return problems


def problems(spec: ClusterSpec | JobSpec) -> list[str]:
    """Every problem of a cluster or job spec, one line each (empty: usable)."""
    return check_cluster(spec) if isinstance(spec, ClusterSpec) else check_job(spec)


def require_usable(spec: ClusterSpec | JobSpec, *, source: str) -> None:
    """Raise one SpecError naming ``source``, the first problem and how many more."""
    found = problems(spec)
    if found:
        more = f" (+{len(found) - 1} more)" if len(found) > 1 else ""
        raise SpecError(
            f"{source}: {found[0]}{more}", hint="`deepedge validate FILE` lists every problem"
        )
