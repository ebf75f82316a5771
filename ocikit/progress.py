"""Progress as a stream of events; the CLI decides how to show them.

The library never writes to a terminal: it calls a ``Progress`` callback with
``ProgressEvent`` values, which ``commands/`` renders as bars, plain lines or
JSON lines.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

# Not typing.TYPE_CHECKING: importing typing costs ~15 ms at every container start.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


@dataclass(frozen=True)
class ProgressEvent:
    """One thing that happened. ``kind`` is one of the constants below."""

    kind: str
    ref: str = ""
    digest: str = ""
    current: int = 0
    total: int = 0
    message: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v not in ("", 0) or k == "kind"}


RESOLVED = "resolved"        # the reference resolved to a digest
BLOB_START = "blob-start"    # a download began (current = bytes already there)
BLOB_PROGRESS = "blob-progress"
BLOB_DONE = "blob-done"
BLOB_EXISTS = "blob-exists"  # already in the store, not downloaded again
BLOB_RESUMED = "blob-resumed"
STORED = "stored"            # the image's name now points at it
RATE_LIMIT = "rate-limit"    # the registry said how many pulls remain
INFO = "info"

Progress = Callable[[ProgressEvent], None]


def no_progress(_: ProgressEvent) -> None:
    return None
