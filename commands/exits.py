"""Failures turned into one line on stderr and an exit code (SPEC.md, Exit codes).

Shared by the click command line (``cli.run``) and the container start path
(``fastrun``), which runs without click; so this module imports neither.
"""

from __future__ import annotations

import contextlib
import os
import sys

from ocikit.errors import ContainerError, OcikitError, UsageError

# Not typing.TYPE_CHECKING: importing typing costs ~15 ms at every container start.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator

EXIT_INTERRUPTED = 130


def _say(message: str) -> None:
    try:
        sys.stderr.write(message + "\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


def debug_requested(argv: list[str]) -> bool:
    return "--debug" in argv or bool(os.environ.get("OCIKIT_DEBUG"))


def exit_code_for(e: BaseException, debug: bool) -> int:
    """Report ``e`` and return the exit code; a bug of ours is re-raised under ``debug``."""
    if isinstance(e, OcikitError):
        if debug:
            import traceback

            traceback.print_exception(e)
        _say(f"ocikit: {e}")
        return int(e.exit_code)
    if isinstance(e, KeyboardInterrupt):
        _say("ocikit: interrupted")
        return EXIT_INTERRUPTED
    if isinstance(e, BrokenPipeError):
        # A reader that went away (`ocikit images | head`) is not an error.
        silence_stdout()
        return 0
    if debug or not isinstance(e, Exception):
        raise e
    if isinstance(e, OSError):
        filename = getattr(e, "filename", None)
        _say(f"ocikit: {e.strerror or e}" + (f": {filename}" if filename else ""))
        return 1
    # A bug of ours: still one line, the traceback only with --debug.
    _say(f"ocikit: internal error: {type(e).__name__}: {e} (rerun with --debug)")
    return 1


@contextlib.contextmanager
def setup_errors() -> Iterator[None]:
    """Failures before a container runs are docker's 125 (usage errors stay 2)."""
    try:
        yield
    except (UsageError, ContainerError):
        raise
    except OcikitError as e:
        raise ContainerError(str(e)) from None


def silence_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except OSError:
        pass
