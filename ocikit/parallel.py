"""A bounded thread pool where the first failure stops the rest (blob transfers)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from typing import TypeVar

T = TypeVar("T")


def run_all(fn: Callable[[T], object], items: Sequence[T], *, max_workers: int,
            cancel: threading.Event, name: str) -> None:
    """Call ``fn`` on every item, at most ``max_workers`` at once.

    The first exception sets ``cancel`` (which ``fn`` polls between chunks),
    waits for the others to stop, and is raised; so is Ctrl-C.
    """
    if len(items) == 1:
        fn(items[0])
        return
    pool = ThreadPoolExecutor(max_workers=min(max_workers, len(items)),
                              thread_name_prefix=name)
    try:
        futures = [pool.submit(fn, item) for item in items]
        done, _ = wait(futures, return_when=FIRST_EXCEPTION)
        for f in done:
            exc = f.exception()
            if exc is not None:
                cancel.set()
                wait(futures)
                raise exc
    except BaseException:
        cancel.set()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
