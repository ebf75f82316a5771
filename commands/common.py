"""Pieces every command shares: the store, the registry client, output."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import click

from ocikit.oci.descriptor import Platform
from ocikit.progress import RATE_LIMIT, Progress, ProgressEvent

F = TypeVar("F", bound=Callable[..., Any])

if TYPE_CHECKING:
    from ocikit.oci.layout import Store
    from ocikit.registry.client import RegistryClient


def get_store(ctx: click.Context) -> Store:
    store: Store = ctx.find_root().obj.store()
    return store


def make_client(progress: Progress | None = None) -> RegistryClient:
    from ocikit.registry.client import RegistryClient
    from ocikit.registry.config import load_config

    shown: set[str] = set()

    def rate(registry: str, remaining: str) -> None:
        # Docker Hub's "ratelimit-remaining: 76;w=21600": pulls left in the window.
        left, window = rate_limit_parts(remaining)
        if progress is not None and registry + left not in shown:
            shown.add(registry + left)
            progress(ProgressEvent(RATE_LIMIT, registry,
                                   message=f"{registry}: {left} pulls left in this "
                                           f"{window}rate-limit window"))

    return RegistryClient(load_config(), progress_rate=rate)


def rate_limit_parts(value: str) -> tuple[str, str]:
    """``"76;w=21600"`` -> ``("76", "6-hour ")``: the count and the window, if given."""
    count, *params = (p.strip() for p in value.split(";"))
    window = ""
    for param in params:
        key, _, secs = param.partition("=")
        if key.strip().lower() == "w" and secs.strip().isdigit():
            n = int(secs)
            window = (f"{n // 3600}-hour " if n % 3600 == 0 else
                      f"{n // 60}-minute " if n % 60 == 0 else f"{n}-second ")
    return count, window


def parse_platform(value: str | None) -> Platform | None:
    return Platform.parse(value) if value else None


def platform_option() -> Callable[[F], F]:
    return click.option("--platform", metavar="OS/ARCH[/VARIANT]",
                        help="pick this platform from a multi-platform image")


def print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, sort_keys=False) + "\n")


def human_size(n: int | None) -> str:
    if n is None:
        return "-"
    size = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if size < 1000 or unit == "TB":
            return f"{size:.0f}{unit}" if unit == "B" else f"{size:.3g}{unit}"
        size /= 1000
    return f"{n}B"


def table(rows: list[list[str]], headers: list[str]) -> str:
    widths = [len(h) for h in headers]
    for r in rows:
        widths = [max(w, len(c)) for w, c in zip(widths, r, strict=True)]
    lines = ["   ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines += ["   ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
              for r in rows]
    return "\n".join(lines)
