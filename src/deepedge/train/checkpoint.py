"""Per-epoch checkpoints that are written atomically and verified on load.

File format (one self-contained file, all integers little-endian)::

    offset  size  field
    0       16    magic  b"DEEPEDGE-CKPT-v1"
    16      8     payload length in bytes (uint64)
    24      32    sha256 digest of the payload
    56      n     payload: the state dict as written by ``torch.save``

The digest lives in the same file as the data it covers, so there is no pair of files
that could be caught half-updated. A save serialises to memory, writes header+payload to
a uniquely named temp file in the *same* directory, fsyncs it, ``os.replace``-s it over
the target and fsyncs the directory. ``os.replace`` is atomic on POSIX, so at every
instant the path names either the complete old checkpoint or the complete new one; a
crash can at worst leave a ``.<name>.*.tmp`` file behind, which the next
:meth:`CheckpointManager.save` removes. Serialising to memory first costs one extra copy
of the state, which is cheap for edge-sized models and means a pickling error never
touches the disk.

Loading uses ``torch.load(..., weights_only=True)`` (after the checksum is verified): a
checkpoint may be copied between devices, and unpickling arbitrary objects from a file
would let a tampered one run code. The state must therefore hold only tensors, ``None``,
bool/int/float/complex/str/bytes and dict/list/tuple/set of those — which covers
``state_dict()`` of models, optimizers and LR schedulers and ``torch.get_rng_state()``.
:func:`save_checkpoint` checks this up front so a bad state fails at save time, naming
the offending key, rather than at resume time.
"""

from __future__ import annotations

import builtins
import collections
import contextlib
import errno
import hashlib
import io
import logging
import os
import pickle
import re
import secrets
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from deepedge.errors import CheckpointError, SpecError

__all__ = [
    "MAGIC",
    "CheckpointInfo",
    "CheckpointManager",
    "load_checkpoint",
    "save_checkpoint",
    "verify_checkpoint",
]

log = logging.getLogger(__name__)

MAGIC = b"DEEPEDGE-CKPT-v1"
_HEADER = struct.Struct(f"<{len(MAGIC)}sQ32s")
_ZIP_MAGIC = b"PK\x03\x04"  # what a plain torch.save file starts with
_PICKLE_MAGIC = b"\x80"  # pickle protocol 2+ (also torch.save with the legacy format)
_FAMILY = b"DEEPEDGE-CKPT-"  # MAGIC without its version
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_PRIMITIVES = (type(None), bool, int, float, complex, str, bytes, bytearray)
_CONTAINERS = (dict, collections.OrderedDict, list, tuple, set)  # not frozenset: refused
_TENSORS = (torch.Tensor, torch.nn.Parameter, torch.Size, torch.dtype, torch.device)
_Location = str | torch.device | None
_OLDER = "delete it to fall back to the previous epoch, or use an older checkpoint"


@dataclass(frozen=True)
class CheckpointInfo:
    """Where a checkpoint is, its payload's sha256 (hex) and its size on disk in bytes."""

    path: Path
    sha256: str
    size_bytes: int


def _check_state(obj: object, where: str = "state") -> None:
    """Reject anything ``torch.load(weights_only=True)`` would refuse, naming its key.

    Exact type checks on purpose: ``numpy.float64`` *is* a ``float`` subclass but pickles
    as a numpy scalar, which the weights-only loader rejects.
    """
    kind = type(obj)
    if kind in _PRIMITIVES or kind in _TENSORS:
        return
    if kind not in _CONTAINERS:
        raise CheckpointError(
            f"cannot checkpoint {where}: {kind.__module__}.{kind.__qualname__} is not allowed",
            hint="store arrays as tensors (torch.from_numpy) and other objects as "
            "dicts/lists of numbers and strings",
        )
    if isinstance(obj, dict):
        for key, value in obj.items():
            _check_state(key, f"{where} key {key!r}")
            _check_state(value, f"{where}[{key!r}]")
    else:
        for i, value in enumerate(obj):  # type: ignore[arg-type]
            _check_state(value, f"{where}[{i}]")


def _os_error(action: str, path: Path, exc: OSError) -> CheckpointError:
    reason = exc.strerror or (os.strerror(exc.errno) if exc.errno else str(exc))
    hint = "check the path and its permissions"
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        hint = "free disk space or lower CheckpointManager keep; the previous checkpoint is intact"
    elif exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        hint = "make the checkpoint directory writable or choose another one"
    return CheckpointError(f"could not {action} checkpoint {path}: {reason}", hint=hint)


def _fsync_dir(directory: Path) -> None:
    """Make the rename itself durable.

    Never raises: by now the new file is complete, fsynced and in place, so a failure here
    only means the rename might not survive a power cut (some filesystems cannot fsync a
    directory at all) and the old checkpoint could reappear — still a valid one.
    """
    try:
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            log.warning("could not fsync directory %s: %s", directory, exc)


def save_checkpoint(path: Path, state: dict[str, Any]) -> CheckpointInfo:
    """Atomically write ``state`` to ``path`` (see the module docstring for the format).

    On any failure the temp file is removed, ``path`` keeps its previous content and an
    ``OSError`` (disk full, permission denied, ...) becomes :class:`CheckpointError`
    carrying the errno text. The parent directory must exist.
    """
    path = Path(path)
    if not isinstance(state, dict):
        raise CheckpointError(
            f"cannot checkpoint {path}: state must be a dict, got {type(state).__name__}",
            hint="pass a dict, e.g. {'model': model.state_dict(), 'epoch': epoch}",
        )
    _check_state(state)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        buffer = io.BytesIO()
        torch.save(state, buffer)
        payload = buffer.getbuffer()
        digest = hashlib.sha256(payload).digest()
        header = _HEADER.pack(MAGIC, len(payload), digest)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(header)
                handle.write(payload)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
            raise
        _fsync_dir(path.parent)
    except OSError as exc:
        raise _os_error("write", path, exc) from exc
    except (pickle.PicklingError, TypeError) as exc:
        raise CheckpointError(
            f"could not serialise checkpoint {path}: {exc}",
            hint="the state must hold only tensors and plain Python values",
        ) from exc
    return CheckpointInfo(path=path, sha256=digest.hex(), size_bytes=_HEADER.size + len(payload))


def _read_verified(path: Path) -> tuple[CheckpointInfo, bytes]:
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise CheckpointError(
            f"checkpoint {path} does not exist",
            hint="check the path; `ls` its directory for the epochs written",
        ) from exc
    except IsADirectoryError as exc:
        raise CheckpointError(
            f"checkpoint {path} is a directory, not a file",
            hint="pass one checkpoint file in it, e.g. epoch-0003.ckpt",
        ) from exc
    except OSError as exc:
        raise _os_error("read", path, exc) from exc
    if not data:
        raise CheckpointError(
            f"checkpoint {path} is empty (0 bytes: truncated, or never written by deepedge)",
            hint=_OLDER,
        )
    if not data.startswith(MAGIC):
        raise _not_ours(path, data)
    if len(data) < _HEADER.size:
        raise CheckpointError(
            f"checkpoint {path} is truncated: {len(data)} bytes, shorter than its "
            f"{_HEADER.size}-byte header",
            hint=_OLDER,
        )
    _, length, digest = _HEADER.unpack_from(data)
    payload = data[_HEADER.size :]
    if len(payload) != length:
        problem = "is truncated" if len(payload) < length else "has trailing bytes"
        raise CheckpointError(
            f"checkpoint {path} {problem}: header promises {length} payload bytes, "
            f"file holds {len(payload)}",
            hint=_OLDER,
        )
    actual = hashlib.sha256(payload).digest()
    if actual != digest:
        raise CheckpointError(
            f"checkpoint {path} failed its checksum: sha256 is {actual.hex()[:16]}…, "
            f"header says {digest.hex()[:16]}… (the file is corrupt)",
            hint=_OLDER,
        )
    return CheckpointInfo(path=path, sha256=digest.hex(), size_bytes=len(data)), payload


def _not_ours(path: Path, data: bytes) -> CheckpointError:
    """Why a non-empty file without our magic is not a checkpoint, and what to do."""
    resave = (
        "deepedge checkpoints carry a checksum; re-save the state with "
        "deepedge.train.save_checkpoint if you trust the file, or " + _OLDER
    )
    if len(data) < len(MAGIC) and MAGIC.startswith(data):
        return CheckpointError(
            f"checkpoint {path} is truncated to {len(data)} bytes, inside its header",
            hint=_OLDER,
        )
    if data.startswith(_FAMILY):
        version = data[: len(MAGIC)].decode("ascii", "replace")
        return CheckpointError(
            f"checkpoint {path} has format {version!r}; this deepedge reads {MAGIC.decode()!r}",
            hint="load it with the deepedge version that wrote it, or " + _OLDER,
        )
    if data.startswith(_ZIP_MAGIC):
        what = "it looks like a plain torch.save file, without deepedge's header and checksum"
        return CheckpointError(f"{path} is not a deepedge checkpoint: {what}", hint=resave)
    if data.startswith(_PICKLE_MAGIC):
        what = "it looks like a plain pickle file, without deepedge's header and checksum"
        return CheckpointError(f"{path} is not a deepedge checkpoint: {what}", hint=resave)
    return CheckpointError(
        f"{path} is not a deepedge checkpoint (it starts with {data[:8]!r})",
        hint="use a file written by deepedge, or " + _OLDER,
    )


def _decode_problem(exc: Exception) -> str:
    """torch.load's multi-paragraph, ANSI-coloured error as a short clause."""
    if isinstance(exc, EOFError):
        return "its payload ends before the state does"
    text = _ANSI.sub("", str(exc))
    refused = re.search(r"Unsupported global: GLOBAL (\S+)", text)
    if refused:
        return f"it holds a {refused.group(1)} object, which the weights-only loader refuses"
    detail = re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", text)
    if detail:
        return f"the weights-only loader refused it ({detail.group(1).strip()})"
    if "zip archive" in text or "PytorchStreamReader" in text:
        return "its torch payload is not a valid archive"
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    return first or type(exc).__name__


def verify_checkpoint(path: Path) -> CheckpointInfo:
    """Check magic, size and checksum without unpickling; raise CheckpointError if bad."""
    return _read_verified(path)[0]


def load_checkpoint(path: Path, *, map_location: _Location = "cpu") -> dict[str, Any]:
    """Verify and load a checkpoint. Tensors land on ``map_location`` (CPU by default, so a
    checkpoint saved on a GPU device can be resumed anywhere)."""
    _, payload = _read_verified(path)
    try:
        state = torch.load(io.BytesIO(payload), map_location=map_location, weights_only=True)
    except Exception as exc:
        raise CheckpointError(
            f"checkpoint {path} passed its checksum but could not be decoded: "
            f"{_decode_problem(exc)}",
            hint="it may come from a newer torch or hold non-tensor objects; " + _OLDER,
        ) from exc
    if not isinstance(state, dict):
        raise CheckpointError(
            f"checkpoint {path} holds a {type(state).__name__}, not a dict of state",
            hint="it was not written by deepedge's save_checkpoint; " + _OLDER,
        )
    return state


class CheckpointManager:
    """Keeps the last ``keep`` epoch checkpoints of one run in ``directory``.

    Files are named ``epoch-0003.ckpt``. One process (rank 0) writes to a directory at a
    time; that assumption lets :meth:`save` delete temp files left by a crashed save.
    """

    _NAME = re.compile(r"^epoch-(\d{4,})\.ckpt$")
    _TEMP = re.compile(r"^\.epoch-\d{4,}\.ckpt\.\d+\.[0-9a-f]+\.tmp$")

    def __init__(self, directory: Path | str, keep: int = 2) -> None:
        if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
            raise SpecError(
                f"checkpoint keep must be an integer >= 1, got {keep!r}",
                hint="keep at least one checkpoint so a run can resume",
            )
        self.directory = Path(directory)
        self.keep = keep

    def path_for(self, epoch: int) -> Path:
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
            raise SpecError(f"checkpoint epoch must be an integer >= 0, got {epoch!r}")
        return self.directory / f"epoch-{epoch:04d}.ckpt"

    def _entries(self) -> Iterator[tuple[int, Path]]:
        try:
            names = os.listdir(self.directory)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise _os_error("list", self.directory, exc) from exc
        for name in names:
            match = self._NAME.match(name)
            # Only the canonical spelling, so epoch-3 and epoch-00003 cannot shadow each other.
            if match and name == self.path_for(int(match.group(1))).name:
                yield int(match.group(1)), self.directory / name

    def save(self, epoch: int, state: dict[str, Any]) -> CheckpointInfo:
        """Write the checkpoint of ``epoch``, then prune.

        Pruning keeps the new file plus the ``keep - 1`` newest *others that verify*, so a
        corrupt file never displaces the last good fallback; everything else is deleted.
        """
        path = self.path_for(epoch)
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise _os_error("create the directory for", path, exc) from exc
        for name in os.listdir(self.directory):
            if self._TEMP.match(name):  # left by a save that crashed
                (self.directory / name).unlink(missing_ok=True)
        info = save_checkpoint(path, state)
        self._prune(epoch)
        return info

    def _prune(self, saved: int) -> None:
        others = sorted(((e, p) for e, p in self._entries() if e != saved), reverse=True)
        if others and others[0][0] > saved:
            log.warning(
                "%s holds checkpoints newer than epoch %d (up to %d) from an earlier run; "
                "latest() will prefer them",
                self.directory,
                saved,
                others[0][0],
            )
        kept = 0
        for epoch, path in others:
            if kept < self.keep - 1:
                try:
                    verify_checkpoint(path)
                except CheckpointError as exc:
                    log.warning("deleting corrupt checkpoint of epoch %d: %s", epoch, exc)
                else:
                    kept += 1
                    continue
            try:
                path.unlink(missing_ok=True)
            except OSError as exc:
                log.warning("could not delete old checkpoint %s: %s", path, exc)

    def load(self, epoch: int, *, map_location: _Location = "cpu") -> dict[str, Any]:
        return load_checkpoint(self.path_for(epoch), map_location=map_location)

    def latest(self, *, map_location: _Location = "cpu") -> tuple[int, dict[str, Any]] | None:
        """The newest checkpoint that loads, as ``(epoch, state)``; ``None`` if none does.

        Corrupt ones are skipped with a warning rather than aborting the resume, so one
        bad file costs an epoch of work instead of the whole run.
        """
        for epoch, path in self.list()[::-1]:
            try:
                return epoch, load_checkpoint(path, map_location=map_location)
            except CheckpointError as exc:
                log.warning("skipping checkpoint of epoch %d: %s", epoch, exc.one_line())
        return None

    def list(self) -> builtins.list[tuple[int, Path]]:
        """``(epoch, path)`` of every checkpoint file present, oldest first (unverified)."""
        return sorted(self._entries())
