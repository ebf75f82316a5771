"""Where an image lives: a registry, an OCI layout folder, or a docker-archive.

A transport prefix wins over the reference grammar: ``oci:5000/x`` is a
layout folder, not a registry on port 5000.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ocikit.errors import UsageError
from ocikit.oci.reference import Reference


@dataclass(frozen=True)
class RegistryLocation:
    ref: Reference
    explicit: bool = False  # named with docker://, so the store is not consulted

    def __str__(self) -> str:
        return ("docker://" if self.explicit else "") + str(self.ref)


@dataclass(frozen=True)
class LayoutLocation:
    path: Path
    tag: str = ""

    def __str__(self) -> str:
        return f"oci:{self.path}" + (f":{self.tag}" if self.tag else "")


@dataclass(frozen=True)
class ArchiveLocation:
    path: Path
    ref: str = ""

    def __str__(self) -> str:
        return f"docker-archive:{self.path}" + (f":{self.ref}" if self.ref else "")


Location = RegistryLocation | LayoutLocation | ArchiveLocation


def parse_location(text: str) -> Location:
    if text.startswith("oci:"):
        rest = text[len("oci:"):]
        if not rest:
            raise UsageError("oci: needs a directory (oci:DIR[:TAG])")
        # The tag is what follows the last ':' unless that is part of the path.
        path, sep, tag = rest.rpartition(":")
        if sep and path and "/" not in tag:
            return LayoutLocation(Path(path), tag)
        return LayoutLocation(Path(rest), "")
    if text.startswith("docker-archive:"):
        rest = text[len("docker-archive:"):]
        if not rest:
            raise UsageError("docker-archive: needs a file (docker-archive:FILE)")
        if Path(rest).exists():
            return ArchiveLocation(Path(rest))
        # as skopeo: the path ends at the first ':' (a REF has its own, name:tag)
        path, sep, ref = rest.partition(":")
        if sep and path and ref:
            return ArchiveLocation(Path(path), ref)
        return ArchiveLocation(Path(rest))
    if text.startswith("docker://"):
        return RegistryLocation(Reference.parse(text[len("docker://"):]), explicit=True)
    return RegistryLocation(Reference.parse(text))
