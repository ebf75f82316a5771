"""Typed views of descriptors, manifests, indexes and image configs.

The original bytes of a manifest are what its digest covers, so they travel
beside these views (see ``ManifestBlob``); the dataclasses are for reading.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

from ocikit.errors import UnsupportedError, VerificationError
from ocikit.oci import mediatypes as mt
from ocikit.oci.digest import Digest, sha256_of

# Not typing.TYPE_CHECKING: importing typing costs ~15 ms at every container start.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

# Registries and tools cap manifests at a few MiB; anything larger is refused
# before it is parsed (distribution's own limit is 4 MiB).
# where the container start path (storeview.py) reads them too
MAX_MANIFEST_SIZE = mt.MAX_MANIFEST_SIZE
MAX_CONFIG_SIZE = mt.MAX_CONFIG_SIZE


def _load_json(data: bytes, what: str) -> dict[str, Any]:
    try:
        obj = json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise VerificationError(f"{what} is not valid JSON: {e}") from None
    if not isinstance(obj, dict):
        raise VerificationError(f"{what} is not a JSON object")
    return obj


@dataclass(frozen=True)
class Platform:
    os: str
    architecture: str
    variant: str = ""
    os_version: str = ""

    @classmethod
    def parse(cls, text: str) -> Platform:
        from ocikit.errors import UsageError

        parts = text.split("/")
        if len(parts) not in (2, 3) or not all(parts):
            raise UsageError(f"invalid platform {text!r} (want os/arch[/variant])")
        return cls(parts[0], parts[1], parts[2] if len(parts) == 3 else "")

    @classmethod
    def host(cls) -> Platform:
        machine = os.uname().machine.lower()
        arch = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64",
                "armv7l": "arm", "armv6l": "arm", "i686": "386", "i386": "386",
                "ppc64le": "ppc64le", "s390x": "s390x", "riscv64": "riscv64"}.get(machine, machine)
        variant = {"armv7l": "v7", "armv6l": "v6"}.get(machine, "")
        return cls("linux", arch, variant)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Platform:
        return cls(str(d.get("os", "")), str(d.get("architecture", "")),
                   str(d.get("variant", "") or ""), str(d.get("os.version", "") or ""))

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"architecture": self.architecture, "os": self.os}
        if self.os_version:
            d["os.version"] = self.os_version
        if self.variant:
            d["variant"] = self.variant
        return d

    def matches(self, want: Platform) -> bool:
        """True if this (an index entry's) platform satisfies ``want``.

        A wanted variant must match; arm64's implied variant is v8 as in
        containerd's platform matcher.
        """
        if self.os != want.os or self.architecture != want.architecture:
            return False
        if not want.variant:
            return True
        mine = self.variant or ("v8" if self.architecture == "arm64" else "")
        return mine == want.variant

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: Digest
    size: int
    annotations: dict[str, str] = field(default_factory=dict, hash=False, compare=False)
    platform: Platform | None = None
    urls: tuple[str, ...] = ()
    artifact_type: str = ""

    @classmethod
    def from_dict(cls, d: Any, what: str = "descriptor") -> Descriptor:
        if not isinstance(d, dict):
            raise VerificationError(f"{what} is not an object")
        try:
            digest = Digest.parse(str(d["digest"]))
            size = d["size"]
            media_type = str(d.get("mediaType", ""))
        except KeyError as e:
            raise VerificationError(f"{what} lacks {e.args[0]!r}") from None
        except Exception as e:  # an invalid digest string
            raise VerificationError(f"{what}: {e}") from None
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise VerificationError(f"{what} {digest} has an invalid size {size!r}")
        plat = d.get("platform")
        ann = d.get("annotations") or {}
        return cls(
            media_type=media_type,
            digest=digest,
            size=size,
            annotations={str(k): str(v) for k, v in ann.items()} if isinstance(ann, dict) else {},
            platform=Platform.from_dict(plat) if isinstance(plat, dict) else None,
            urls=tuple(str(u) for u in d.get("urls") or ()),
            artifact_type=str(d.get("artifactType", "") or ""),
        )

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"mediaType": self.media_type, "digest": str(self.digest),
                             "size": self.size}
        if self.urls:
            d["urls"] = list(self.urls)
        if self.annotations:
            d["annotations"] = dict(self.annotations)
        if self.platform is not None:
            d["platform"] = self.platform.to_dict()
        if self.artifact_type:
            d["artifactType"] = self.artifact_type
        return d

    def with_annotations(self, annotations: dict[str, str]) -> Descriptor:
        return Descriptor(self.media_type, self.digest, self.size, dict(annotations),
                          self.platform, self.urls, self.artifact_type)


@dataclass(frozen=True)
class Manifest:
    media_type: str
    config: Descriptor
    layers: tuple[Descriptor, ...]
    annotations: dict[str, str] = field(default_factory=dict, hash=False, compare=False)
    subject: Descriptor | None = None
    artifact_type: str = ""


@dataclass(frozen=True)
class Index:
    media_type: str
    manifests: tuple[Descriptor, ...]
    annotations: dict[str, str] = field(default_factory=dict, hash=False, compare=False)
    subject: Descriptor | None = None

    def select(self, want: Platform) -> Descriptor | None:
        for d in self.manifests:
            if d.platform is not None and d.platform.matches(want):
                return d
        return None

    def platforms(self) -> list[str]:
        return [str(d.platform) for d in self.manifests if d.platform is not None]

    def choose(self, want: Platform | None, what: str) -> Descriptor:
        """The entry for ``want`` (default: this host's platform), or NotFoundError."""
        from ocikit.errors import NotFoundError

        platform = want or Platform.host()
        chosen = self.select(platform)
        if chosen is None:
            have = ", ".join(self.platforms()) or "none"
            raise NotFoundError(f"{what}: no image for platform {platform} (available: {have})")
        return chosen


@dataclass(frozen=True)
class ManifestBlob:
    """A manifest or index exactly as its bytes came, with its parsed view."""

    data: bytes
    media_type: str
    digest: Digest
    parsed: Manifest | Index

    @property
    def descriptor(self) -> Descriptor:
        return Descriptor(self.media_type, self.digest, len(self.data))

    @property
    def is_index(self) -> bool:
        return isinstance(self.parsed, Index)


def parse_manifest(data: bytes, content_type: str = "", *, what: str = "manifest"
                   ) -> ManifestBlob:
    """Parse manifest bytes; the body's mediaType must agree with Content-Type."""
    if len(data) > MAX_MANIFEST_SIZE:
        raise VerificationError(f"{what} is larger than {MAX_MANIFEST_SIZE} bytes")
    obj = _load_json(data, what)
    body_type = str(obj.get("mediaType", "") or "")
    ctype = content_type.split(";")[0].strip()
    if obj.get("schemaVersion") == 1 or body_type in mt.SCHEMA1 or ctype in mt.SCHEMA1:
        raise UnsupportedError(f"{what} is Docker schema 1, which ocikit does not support")
    if body_type and ctype and ctype not in ("application/json", "application/octet-stream") \
            and body_type != ctype:
        raise VerificationError(
            f"{what} says mediaType {body_type} but was served as {ctype}")
    media_type = body_type or ctype
    if not media_type:
        # OCI allows an absent mediaType; tell the two apart by their fields.
        media_type = mt.OCI_INDEX if "manifests" in obj else mt.OCI_MANIFEST
    if media_type in mt.INDEXES:
        manifests = obj.get("manifests")
        if not isinstance(manifests, list):
            raise VerificationError(f"{what}: index has no manifests list")
        subj = obj.get("subject")
        parsed: Manifest | Index = Index(
            media_type=media_type,
            manifests=tuple(Descriptor.from_dict(m, f"{what} entry") for m in manifests),
            annotations=dict(obj.get("annotations") or {}),
            subject=Descriptor.from_dict(subj, f"{what} subject") if subj else None,
        )
    elif media_type in mt.MANIFESTS:
        layers = obj.get("layers")
        if not isinstance(layers, list) or "config" not in obj:
            raise VerificationError(f"{what}: manifest lacks config or layers")
        subj = obj.get("subject")
        parsed = Manifest(
            media_type=media_type,
            config=Descriptor.from_dict(obj["config"], f"{what} config"),
            layers=tuple(Descriptor.from_dict(ly, f"{what} layer") for ly in layers),
            annotations=dict(obj.get("annotations") or {}),
            subject=Descriptor.from_dict(subj, f"{what} subject") if subj else None,
            artifact_type=str(obj.get("artifactType", "") or ""),
        )
    else:
        raise UnsupportedError(f"{what} has unsupported media type {media_type!r}")
    return ManifestBlob(data=data, media_type=media_type, digest=sha256_of(data), parsed=parsed)


@dataclass(frozen=True)
class HistoryEntry:
    created: str = ""
    created_by: str = ""
    comment: str = ""
    author: str = ""
    empty_layer: bool = False


@dataclass(frozen=True)
class ImageConfig:
    """The parts of an image config ocikit reads; ``raw`` keeps the rest."""

    raw: dict[str, Any]
    architecture: str
    os: str
    variant: str
    created: str
    diff_ids: tuple[Digest, ...]
    history: tuple[HistoryEntry, ...]
    env: tuple[str, ...]
    entrypoint: tuple[str, ...] | None
    cmd: tuple[str, ...] | None
    working_dir: str
    user: str
    labels: dict[str, str]
    exposed_ports: tuple[str, ...]
    volumes: tuple[str, ...]
    stop_signal: str

    @classmethod
    def parse(cls, data: bytes, what: str = "image config") -> ImageConfig:
        if len(data) > MAX_CONFIG_SIZE:
            raise VerificationError(f"{what} is larger than {MAX_CONFIG_SIZE} bytes")
        obj = _load_json(data, what)
        cfg = obj.get("config") or {}
        if not isinstance(cfg, dict):
            cfg = {}
        rootfs = obj.get("rootfs") or {}
        try:
            diff_ids = tuple(Digest.parse(str(d)) for d in rootfs.get("diff_ids") or ())
        except Exception as e:
            raise VerificationError(f"{what}: {e}") from None

        def strs(v: Any) -> tuple[str, ...] | None:
            if v is None:
                return None
            if isinstance(v, str):
                return (v,)
            return tuple(str(x) for x in v)

        history = tuple(
            HistoryEntry(
                created=str(h.get("created", "") or ""),
                created_by=str(h.get("created_by", "") or ""),
                comment=str(h.get("comment", "") or ""),
                author=str(h.get("author", "") or ""),
                empty_layer=bool(h.get("empty_layer", False)),
            )
            for h in obj.get("history") or () if isinstance(h, dict)
        )
        return cls(
            raw=obj,
            architecture=str(obj.get("architecture", "") or ""),
            os=str(obj.get("os", "") or ""),
            variant=str(obj.get("variant", "") or ""),
            created=str(obj.get("created", "") or ""),
            diff_ids=diff_ids,
            history=history,
            env=strs(cfg.get("Env")) or (),
            entrypoint=strs(cfg.get("Entrypoint")),
            cmd=strs(cfg.get("Cmd")),
            working_dir=str(cfg.get("WorkingDir", "") or ""),
            user=str(cfg.get("User", "") or ""),
            labels={str(k): str(v) for k, v in (cfg.get("Labels") or {}).items()},
            exposed_ports=tuple(sorted(cfg.get("ExposedPorts") or {})),
            volumes=tuple(sorted(cfg.get("Volumes") or {})),
            stop_signal=str(cfg.get("StopSignal", "") or ""),
        )

    @property
    def platform(self) -> Platform:
        return Platform(self.os, self.architecture, self.variant)
