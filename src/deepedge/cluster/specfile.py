"""Adding a device to a cluster spec file, the way a running job picks it up.

A running ``deepedge train`` or ``demo`` watches its cluster spec file
(:mod:`deepedge.cluster.specwatch`) and brings a device that appears there into training.
``deepedge cluster add`` and the dashboard (with ``--allow-control``) both add one through
:func:`add_to_spec_file`: the whole spec is checked with the device in it, then the file
is replaced atomically, so the job never reads it half-written.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path

import yaml_rs
from pydantic import ValidationError

from deepedge.catalog import CATALOG
from deepedge.errors import DeepEdgeError, UsageError
from deepedge.spec import ClusterSpec, DeviceSpec, parse_spec, read_spec_file
from deepedge.validation import require_usable

__all__ = ["add_to_spec_file", "new_device"]


def new_device(**fields: str | float | None) -> DeviceSpec:
    """The device these fields (``cluster add``'s options) describe; a bad value names its
    option, an unknown kind without capacities lists the catalog."""
    try:
        device = DeviceSpec.model_validate({k: v for k, v in fields.items() if v is not None})
    except ValidationError as err:
        e = err.errors(include_url=False)[0]
        where = f"--{str(e['loc'][0]).replace('_', '-')} {e['input']!r}: " if e["loc"] else ""
        raise UsageError(
            f"bad new device: {where}{e['msg'].removeprefix('Value error, ')}",
            hint="see `deepedge cluster add --help`",
        ) from None
    if device.kind not in CATALOG and (device.cpu_cores is None or device.memory_mb is None):
        raise UsageError(
            f"unknown device kind {device.kind!r}",
            hint=f"use one of {', '.join(sorted(CATALOG))} (`deepedge catalog`), or give "
            "--cpu-cores and --memory-mb for a board of your own",
        )
    return device


def add_to_spec_file(path: Path, device: DeviceSpec) -> int:
    """Append ``device`` to the cluster spec at ``path`` and replace the file atomically.

    The new content is validated as the spec loader would (schema, then the catalog and
    memory checks) before anything is written; the file is written to a temporary file
    beside it, read back and compared, then renamed over it (``os.replace``): a job that
    polls the spec sees the old file or the new one, never a mix. The file keeps its
    permissions; a symlink is followed, not replaced. Returns the number of devices now.
    """
    data = read_spec_file(path, expect="cluster spec")
    original = parse_spec(ClusterSpec, data, source=str(path))
    taken = [d.name for d in original.devices]
    if device.name in taken:
        raise UsageError(
            f"{path} already has a device named {device.name!r}",
            hint="pick another --name",
        )
    new = {**data, "devices": [*data["devices"], device.model_dump(exclude_none=True)]}
    require_usable(parse_spec(ClusterSpec, new, source=str(path)), source=str(path))
    as_json = path.suffix.lower() == ".json"
    text = json.dumps(new, indent=2) if as_json else yaml_rs.dumps(new)
    text = text if text.endswith("\n") else text + "\n"
    target = Path(os.path.realpath(path))
    tmp: Path | None = None
    try:
        fd, tmp_name = tempfile.mkstemp(
            prefix=f".{target.stem}.", suffix=f".tmp{target.suffix}", dir=target.parent
        )
        tmp = Path(tmp_name)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        st = target.stat()
        os.chmod(tmp, st.st_mode & 0o7777)
        with contextlib.suppress(OSError):  # root editing a user's file leaves it theirs
            os.chown(tmp, st.st_uid, st.st_gid)
        if read_spec_file(tmp, expect="cluster spec") != new:  # the dump must round-trip
            raise DeepEdgeError(
                f"{path} cannot be rewritten faithfully with the new device",
                hint="add the device to the file by hand; `deepedge validate` checks it",
            )
        os.replace(tmp, target)
    except OSError as err:
        raise DeepEdgeError(
            f"cannot write {path}: {err.strerror}", hint="check the folder's permissions"
        ) from None
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
    return len(new["devices"])
