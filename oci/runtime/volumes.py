"""Named volumes: ``<volumes_root>/<name>/_data``, outliving the containers using them."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence

from ocikit.errors import ConflictError, NotFoundError, UsageError
from ocikit.oci.runtime.spec import Mount

_NAME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]*$")


def _check_name(name: str) -> None:
    if not _NAME_RE.match(name):
        raise UsageError(f"invalid volume name {name!r}: only [a-zA-Z0-9][a-zA-Z0-9_.-] "
                         "are allowed")


def volume_data(volumes_root: str | os.PathLike[str], name: str) -> str:
    return os.path.join(volumes_root, name, "_data")


def create_volume(volumes_root: str | os.PathLike[str], name: str) -> str:
    """Create (or find) the named volume; returns its data folder."""
    _check_name(name)
    data = volume_data(volumes_root, name)
    os.makedirs(data, exist_ok=True)
    return data


def list_volumes(volumes_root: str | os.PathLike[str]) -> list[str]:
    try:
        names = os.listdir(volumes_root)
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted(n for n in names if os.path.isdir(volume_data(volumes_root, n)))


def remove_volume(volumes_root: str | os.PathLike[str], name: str,
                  in_use_by: Sequence[str] = ()) -> None:
    """Delete the volume; refuses while containers (``in_use_by``) still name it."""
    _check_name(name)
    if in_use_by:
        raise ConflictError(f"volume {name} is in use by container(s) {', '.join(in_use_by)}")
    path = os.path.join(volumes_root, name)
    if not os.path.isdir(path):
        raise NotFoundError(f"no such volume: {name}")
    import shutil  # not at the top: a container start does not need it

    shutil.rmtree(path)


def parse_volume_arg(text: str, volumes_root: str | os.PathLike[str]) -> Mount:
    """``-v SRC:DST[:ro|rw]``: a SRC path (``/…``, ``./…``, ``../…``) is a bind mount,
    a bare name a named volume."""
    parts = text.split(":")
    if len(parts) not in (2, 3) or not parts[0] or not parts[1]:
        raise UsageError(f"invalid volume specification {text!r} (want SRC:DST[:ro])")
    src, dst = parts[0], parts[1]
    opts = parts[2].split(",") if len(parts) == 3 else []
    bad = [o for o in opts if o not in ("ro", "rw", "z", "Z")]
    if bad:
        raise UsageError(f"invalid volume option {bad[0]!r} in {text!r}")
    if not dst.startswith("/"):
        raise UsageError(f"invalid volume destination {dst!r}: not an absolute path")
    readonly = "ro" in opts
    if src in (".", "..") or src.startswith(("/", "./", "../")):
        # as docker (CLI 23+): a path, relative ones against the current folder
        return Mount(source=os.path.abspath(src), destination=dst, readonly=readonly)
    data = create_volume(volumes_root, src)
    return Mount(source=data, destination=dst, readonly=readonly, kind="volume", name=src)
