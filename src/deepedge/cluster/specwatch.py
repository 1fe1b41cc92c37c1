"""Watch a cluster spec file for devices added while a job runs.

``deepedge cluster add`` (or an editor) writes a device into the spec of a running
``deepedge train``/``demo``; the controller polls a :class:`SpecWatch` at its step
boundaries and boots what it reports. Polling is a ``stat`` until the file changes, so it
can run every step. The file may be caught half-written, or saved broken by hand: that is
never an exception in the middle of a training run, only ``[]`` and a reason in
:attr:`SpecWatch.error`, and the next complete save is picked up.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable
from pathlib import Path

from deepedge.errors import DeepEdgeError
from deepedge.spec import ClusterSpec, DeviceSpec, load_spec
from deepedge.validation import require_usable

__all__ = ["SpecWatch"]

log = logging.getLogger(__name__)

_Stamp = tuple[int, int, int, int]  # inode, size, mtime and ctime (ns)


class SpecWatch:
    """Devices newly present in the cluster spec at ``path``, by name.

    The baseline is ``known`` (the names of the devices running now) or, without it, the
    devices of the file when the watch is made; if the file is unusable then, its first
    usable content is the baseline (nothing is reported for it). Each device is reported
    once: a device removed from the file and written back is not reported again, and
    removals are not reported at all. Devices are returned as written in the file, catalog
    defaults not filled in (the cluster does that when it boots them).

    A file modified less than ``settle_s`` ago is read only once it has settled: a writer
    that does not replace the file atomically (an editor, ``>>``) can leave a truncated
    list that still parses, whose last device would be booted without its last fields.
    """

    def __init__(
        self, path: str | Path, *, known: Iterable[str] | None = None, settle_s: float = 0.5
    ) -> None:
        self.path = Path(path)
        self.settle_s = settle_s
        self.error: str | None = None
        """Why the file's current content is not a usable cluster spec (one line), or None."""
        self._stamp: _Stamp | None = None  # of the content last read
        self._seen: set[str] | None = set(known) if known is not None else None
        if self._seen is None:
            self._check(settle_s=0.0)  # the baseline, if the file is usable now

    def added(self) -> list[DeviceSpec]:
        """Devices in the file now that were not there before (in file order); cheap when
        the file has not changed since the last call. Never raises: an unusable file gives
        ``[]`` and sets :attr:`error`."""
        return self._check(self.settle_s)

    def _check(self, settle_s: float) -> list[DeviceSpec]:
        try:
            st = os.stat(self.path)
        except OSError as err:
            self.error = f"cannot read {self.path}: {err.strerror}"
            self._stamp = None
            return []
        stamp = (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        if stamp == self._stamp:
            return []
        if 0 <= time.time() - st.st_mtime < settle_s:
            return []  # still being written, maybe: read it once it has settled
        self._stamp = stamp
        try:
            spec = load_spec(ClusterSpec, self.path)
            require_usable(spec, source=str(self.path))
        except DeepEdgeError as err:
            self.error = err.one_line()
            return []
        except Exception as err:  # a polling loop must outlive any file; say what it was
            log.debug("cluster spec %s unusable", self.path, exc_info=True)
            self.error = f"{self.path}: {type(err).__name__}: {err}".replace("\n", " ")
            return []
        self.error = None
        if self._seen is None:
            self._seen = {d.name for d in spec.devices}
            return []
        new = [d for d in spec.devices if d.name not in self._seen]
        self._seen.update(d.name for d in new)
        return new
