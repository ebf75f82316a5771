"""A container's log: its stdout and stderr kept apart, in the order they arrived.

Every run of a container (foreground, detached, ``start``) appends to its
``log`` file, so ``logs`` shows what docker's does: the output of every run,
stderr on stderr. Records use docker's stream framing (the attach and logs
API's "stdcopy" format): an 8-byte header — the stream (1 stdout, 2 stderr),
three zero bytes, the payload length as a big-endian uint32 — then the
payload. Each record is one ``write`` to a file opened ``O_APPEND``.
"""

from __future__ import annotations

import errno
import os
import select
import struct
from collections.abc import Callable, Iterator, Sequence

STDOUT = 1
STDERR = 2
_HEADER = struct.Struct(">BxxxI")
_CHUNK = 1 << 16


class LogWriter:
    """Appends records to a container's log file."""

    def __init__(self, path: str) -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o640)

    def write(self, stream: int, data: bytes) -> None:
        if data:
            write_all(self.fd, _HEADER.pack(stream, len(data)) + data)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def parse(buf: bytes | bytearray) -> tuple[list[tuple[int, bytes]], int]:
    """The complete records at the start of ``buf`` and how many bytes they take."""
    out: list[tuple[int, bytes]] = []
    pos = 0
    while len(buf) - pos >= _HEADER.size:
        stream, size = _HEADER.unpack_from(buf, pos)
        end = pos + _HEADER.size + size
        if end > len(buf):
            break
        out.append((stream, bytes(buf[pos + _HEADER.size:end])))
        pos = end
    return out, pos


def read_records(path: str | os.PathLike[str]) -> list[tuple[int, bytes]]:
    """Every complete record of the log (none if there is no log yet)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return []
    return parse(data)[0]


class Source:
    """A pipe from the container: its records go to ``out`` (if >= 0) and the log."""

    __slots__ = ("fd", "out", "stream")

    def __init__(self, fd: int, stream: int, out: int = -1) -> None:
        self.fd = fd
        self.stream = stream
        self.out = out


def relay(sources: Sequence[Source], log: LogWriter | None) -> None:
    """Copy every source until each reaches end of file, then close them.

    When the reader of ``out`` has gone (a broken pipe), that source's pipe is
    closed too: the container then gets SIGPIPE on its next write, as it
    would writing to that pipe itself.
    """
    live = {s.fd: s for s in sources}
    try:
        while live:
            ready, _, _ = select.select(list(live), [], [])
            # stdout before stderr when both are ready: the usual order of a program
            for fd in sorted(ready, key=lambda f: live[f].stream):
                src = live[fd]
                try:
                    data = os.read(fd, _CHUNK)
                except OSError:
                    data = b""
                if not data:
                    del live[fd]
                    os.close(fd)
                    continue
                if log is not None:
                    log.write(src.stream, data)
                if src.out >= 0 and not write_all(src.out, data):
                    del live[fd]
                    os.close(fd)
    finally:
        for fd in live:
            os.close(fd)


def follow(path: str | os.PathLike[str], *, out: int, err: int,
           running: Callable[[], bool], poll: float = 0.1) -> None:
    """Write the log's records to ``out``/``err``; with ``running``, keep following
    new records until it returns False and the log is read to its end."""
    import time

    try:
        f = open(path, "rb")
    except FileNotFoundError:
        return
    buf = bytearray()
    with f:
        while True:
            data = f.read(_CHUNK)
            if data:
                buf += data
                records, used = parse(buf)
                del buf[:used]
                for stream, payload in records:
                    if not write_all(err if stream == STDERR else out, payload):
                        return
                continue
            if not running():
                # the runner records the exit after its last write: one more read
                rest = f.read()
                if not rest:
                    return
                buf += rest
                continue
            time.sleep(poll)


def payloads(records: Iterator[tuple[int, bytes]] | Sequence[tuple[int, bytes]]) -> bytes:
    return b"".join(p for _, p in records)


def write_all(fd: int, data: bytes) -> bool:
    """Write everything; False when the reader has gone (EPIPE, a closed descriptor)."""
    view = memoryview(data)
    while view:
        try:
            n = os.write(fd, view)
        except InterruptedError:
            continue
        except OSError as e:
            if e.errno in (errno.EPIPE, errno.EBADF, errno.EINVAL):
                return False
            raise
        view = view[n:]
    return True
