"""Showing progress events: bars on a terminal, plain lines or JSON lines for CI.

Everything goes to stderr; stdout carries only results.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from typing import IO, Any

from ocikit import progress as p

MODES = ("auto", "tty", "plain", "json", "none")


def _short(digest: str) -> str:
    return digest.split(":", 1)[-1][:12]


class PlainRenderer:
    """One line per event that matters; progress at most every few seconds."""

    def __init__(self, out: IO[str], interval: float = 5.0) -> None:
        self.out = out
        self.interval = interval
        self.last: dict[str, float] = {}
        self.lock = threading.Lock()

    def __call__(self, ev: p.ProgressEvent) -> None:
        with self.lock:
            line = self._line(ev)
            if line:
                self.out.write(line + "\n")
                self.out.flush()

    def _line(self, ev: p.ProgressEvent) -> str:
        d = _short(ev.digest)
        if ev.kind == p.RESOLVED:
            return f"{ev.ref}: resolved to {ev.digest}"
        if ev.kind == p.BLOB_EXISTS:
            return f"{d}: {ev.message or 'already exists'}"
        if ev.kind == p.BLOB_START:
            return f"{d}: {ev.message or 'downloading'} {ev.total} bytes" + (
                f" (resuming at {ev.current})" if ev.current else "")
        if ev.kind == p.BLOB_PROGRESS:
            now = time.monotonic()
            if now - self.last.get(ev.digest, 0.0) < self.interval:
                return ""
            self.last[ev.digest] = now
            pct = 100 * ev.current // ev.total if ev.total else 0
            return f"{d}: {pct}% ({ev.current}/{ev.total})"
        if ev.kind == p.BLOB_DONE:
            return f"{d}: done"
        if ev.kind == p.STORED:
            return f"{ev.ref}: stored"
        if ev.kind in (p.RATE_LIMIT, p.INFO):
            return ev.message
        return ""


class JsonRenderer:
    def __init__(self, out: IO[str]) -> None:
        self.out = out
        self.lock = threading.Lock()

    def __call__(self, ev: p.ProgressEvent) -> None:
        with self.lock:
            self.out.write(json.dumps(ev.to_dict()) + "\n")
            self.out.flush()


class TtyRenderer:
    """Per-blob bars with bytes and speed, drawn by rich on stderr."""

    def __init__(self, out: IO[str]) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TransferSpeedColumn,
        )

        self.progress = Progress(TextColumn("{task.description}"), BarColumn(),
                                 DownloadColumn(), TransferSpeedColumn(),
                                 console=Console(file=out), transient=False)
        self.tasks: dict[str, Any] = {}
        self.lock = threading.Lock()
        self.progress.start()

    def __call__(self, ev: p.ProgressEvent) -> None:
        with self.lock:
            d = _short(ev.digest)
            if ev.kind in (p.BLOB_START, p.BLOB_EXISTS) and ev.digest not in self.tasks:
                label = d + (f" ({ev.message or 'exists'})" if ev.kind == p.BLOB_EXISTS
                             else "")
                self.tasks[ev.digest] = self.progress.add_task(label, total=ev.total or None,
                                                               completed=ev.current)
            elif ev.kind in (p.BLOB_PROGRESS, p.BLOB_DONE) and ev.digest in self.tasks:
                self.progress.update(self.tasks[ev.digest], completed=ev.current)
            elif ev.kind in (p.RESOLVED, p.STORED, p.RATE_LIMIT, p.INFO):
                msg = ev.message if ev.kind in (p.RATE_LIMIT, p.INFO) else (
                    f"{ev.ref}: resolved to {ev.digest}" if ev.kind == p.RESOLVED
                    else f"{ev.ref}: stored")
                self.progress.console.print(msg, highlight=False)

    def close(self) -> None:
        self.progress.stop()


def make_renderer(mode: str, quiet: bool = False) -> Any:
    """A progress callback for ``mode``; call ``.close()`` if it has one."""
    err = sys.stderr
    if quiet or mode == "none":
        return p.no_progress
    if mode == "auto":
        mode = "tty" if err.isatty() else "plain"
    if mode == "tty":
        return TtyRenderer(err)
    if mode == "json":
        return JsonRenderer(err)
    return PlainRenderer(err)


def close_renderer(r: Any) -> None:
    close = getattr(r, "close", None)
    if close is not None:
        close()
