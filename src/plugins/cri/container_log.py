"""A CRI container's log file in the kubelet's format: ``<RFC3339Nano> stdout|stderr F|P <line>``
records, and the file itself, reopened when the kubelet rotates it (containerd 2.x's
``internal/cri/io/logger.go`` and ``container_log_reopen.go``)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

__all__ = ["MAX_LOG_LINE", "ContainerLog", "kubelet_log_lines", "rfc3339_nano"]

MAX_LOG_LINE = 16 * 1024
"""containerd's default max_container_log_line_size: longer lines are split into P records."""


def kubelet_log_lines(stream: str, data: bytes, now: datetime | None = None) -> tuple[bytes, bytes]:
    """The complete records in ``data`` (``<RFC3339Nano> <stream> F <line>\\n``, lines longer than
    MAX_LOG_LINE split into P records) and the unfinished tail to keep for the next read."""
    out = bytearray()
    stamp = rfc3339_nano(now or datetime.now(UTC)).encode()
    while True:
        nl = data.find(b"\n")
        if nl < 0 and len(data) < MAX_LOG_LINE:
            return bytes(out), data
        if 0 <= nl < MAX_LOG_LINE:
            line, data, tag = data[:nl], data[nl + 1 :], b"F"
        else:
            line, data, tag = data[:MAX_LOG_LINE], data[MAX_LOG_LINE:], b"P"
        out += stamp + b" " + stream.encode() + b" " + tag + b" " + line + b"\n"


def rfc3339_nano(at: datetime) -> str:
    """Go's time.RFC3339Nano in UTC: trailing zeros of the fraction dropped."""
    at = at.astimezone(UTC)
    fraction = f"{at.microsecond:06d}000".rstrip("0")
    return at.strftime("%Y-%m-%dT%H:%M:%S") + (f".{fraction}" if fraction else "") + "Z"


class ContainerLog:
    """The kubelet's log file of one container, written by its stdout and stderr pumps alike and
    reopened at the same path once the kubelet has renamed it (ReopenContainerLog): a record goes
    whole to the old file or the new one."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._file: BinaryIO | None = None
        self._writers = 0

    def _open(self) -> BinaryIO:
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        return open(self.path, "ab")

    def acquire(self) -> None:
        if self._writers == 0 and self.path:
            self._file = self._open()
        self._writers += 1

    def release(self) -> None:
        self._writers -= 1
        if self._writers == 0 and self._file is not None:
            self._file.close()
            self._file = None

    def write(self, records: bytes) -> None:
        if self._file is not None:
            self._file.write(records)
            self._file.flush()

    def reopen(self) -> None:
        """Open the path anew (created when the kubelet moved the file away) and write there."""
        if not self.path:
            return
        new = self._open()
        if self._writers == 0:
            new.close()
            return
        old, self._file = self._file, new
        if old is not None:
            old.close()
