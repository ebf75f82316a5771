"""Image references, parsed and normalised by Docker's rules.

``nginx`` is ``docker.io/library/nginx:latest``; ``host:port/path:tag``;
``name@sha256:…``; ``name:tag@sha256:…``. Grammar from distribution's
reference package (reference/regexp.go), re-expressed here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ocikit.errors import InvalidReferenceError
from ocikit.oci.digest import Digest

DOCKER_HUB = "docker.io"
DOCKER_HUB_API = "registry-1.docker.io"
DEFAULT_TAG = "latest"

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_COMPONENT_RE = re.compile(rf"^{_COMPONENT}$")
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN_RE = re.compile(
    rf"^(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[a-fA-F0-9:]+\])(?::[0-9]+)?$"
)
_TAG_RE = re.compile(r"^[\w][\w.-]{0,127}$")
_MAX_NAME = 255
# name (255) + ":" + tag (128) + "@" + the longest digest we accept, with room to spare
_MAX_TEXT = 1024


@dataclass(frozen=True)
class Reference:
    """A normalised registry reference. ``tag`` and ``digest`` may both be set."""

    registry: str
    repository: str
    tag: str = ""
    digest: Digest | None = None

    @classmethod
    def parse(cls, text: str) -> Reference:
        if len(text) > _MAX_TEXT:
            # Echoing it whole would make the "one clear line" megabytes long.
            raise InvalidReferenceError(f"invalid reference format: {text[:60]!r}... "
                                        f"({len(text)} characters; too long)")
        if not text or text != text.strip():
            raise InvalidReferenceError(f"invalid reference format: {text!r}")
        name, digest = text, None
        if "@" in name:
            name, _, dig = name.partition("@")
            try:
                digest = Digest.parse(dig)
            except InvalidReferenceError:
                raise InvalidReferenceError(
                    f"invalid reference format: {text!r} (bad digest)") from None
        tag = ""
        slash = name.rfind("/")
        colon = name.rfind(":")
        if colon > slash:
            name, tag = name[:colon], name[colon + 1:]
            if not _TAG_RE.match(tag):
                raise InvalidReferenceError(f"invalid reference format: {text!r} (bad tag)")
        if not name:
            raise InvalidReferenceError(f"invalid reference format: {text!r}")
        first, _, rest = name.partition("/")
        if rest and ("." in first or ":" in first or first == "localhost" or
                     first != first.lower()):
            registry, path = first, rest
            if not _DOMAIN_RE.match(registry):
                raise InvalidReferenceError(
                    f"invalid reference format: {text!r} (bad registry {registry!r})")
        else:
            registry, path = DOCKER_HUB, name
        if registry == "index.docker.io":
            registry = DOCKER_HUB
        components = path.split("/")
        for c in components:
            if not _COMPONENT_RE.match(c):
                hint = " (repository names must be lowercase)" if c.lower() != c else ""
                raise InvalidReferenceError(f"invalid reference format: {text!r}{hint}")
        if registry == DOCKER_HUB and len(components) == 1:
            path = "library/" + path
        if len(registry) + 1 + len(path) > _MAX_NAME:
            raise InvalidReferenceError(f"invalid reference format: {text!r} (name too long)")
        if not tag and digest is None:
            tag = DEFAULT_TAG
        return cls(registry, path, tag, digest)

    @property
    def name(self) -> str:
        """registry/repository, without tag or digest."""
        return f"{self.registry}/{self.repository}"

    @property
    def api_host(self) -> str:
        """The host serving this registry's /v2/ API (Docker Hub's differs)."""
        return DOCKER_HUB_API if self.registry == DOCKER_HUB else self.registry

    @property
    def identifier(self) -> str:
        """What goes after /manifests/: the digest if pinned, else the tag."""
        return str(self.digest) if self.digest is not None else self.tag

    def with_tag(self, tag: str) -> Reference:
        return Reference(self.registry, self.repository, tag, None)

    def with_digest(self, digest: Digest) -> Reference:
        return Reference(self.registry, self.repository, "", digest)

    def familiar(self) -> str:
        """The short form docker prints: ``nginx:latest`` for docker.io/library."""
        name = self.name
        if self.registry == DOCKER_HUB:
            name = self.repository
            if name.startswith("library/") and name.count("/") == 1:
                name = name[len("library/"):]
        return name + self._suffix()

    def _suffix(self) -> str:
        s = f":{self.tag}" if self.tag else ""
        if self.digest is not None:
            s += f"@{self.digest}"
        return s

    def __str__(self) -> str:
        return self.name + self._suffix()
