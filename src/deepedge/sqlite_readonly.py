"""Opening a SQLite file only to read it, leaving nothing beside it.

``mode=ro`` alone is not enough for a WAL-mode file: SQLite then creates ``-wal`` and
``-shm`` files next to it, and a read-only connection leaves them behind. A WAL-mode file
with no ``-wal`` beside it holds all its committed data itself, so it is opened
``immutable`` instead. While a writer has the file open its ``-wal`` and ``-shm`` exist
already and are shared, and new rows are seen.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["readonly_uri"]

_WAL_FORMAT_OFFSET = 18  # the header's "file format write version": 2 means WAL


def readonly_uri(path: Path) -> str:
    """The URI to open ``path`` read-only with (pass ``uri=True`` to ``sqlite3.connect``)."""
    uri = f"{path.absolute().as_uri()}?mode=ro"
    try:
        with path.open("rb") as fh:
            head = fh.read(_WAL_FORMAT_OFFSET + 1)
    except OSError:
        return uri  # let sqlite3 report the missing or unreadable file
    wal_mode = len(head) > _WAL_FORMAT_OFFSET and head[_WAL_FORMAT_OFFSET] == 2
    if wal_mode and not Path(f"{path}-wal").exists():
        uri += "&immutable=1"
    return uri
