"""Image references, parsed and normalised by Docker's rules.

``nginx`` is ``docker.io/library/nginx:latest``; ``host:port/path:tag``;
``name@sha256:…``; ``name:tag@sha256:…``. Grammar from distribution's
reference package (reference/regexp.go), re-expressed here.
"""

from __future__ import annotations

from dataclasses import dataclass

from ocikit.errors import InvalidReferenceError
from ocikit.oci.digest import Digest
from ocikit.oci.refname import DEFAULT_TAG, split_name
from ocikit.oci.refname import DOCKER_HUB as DOCKER_HUB  # re-exported: registry/ uses it

DOCKER_HUB_API = "registry-1.docker.io"
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
        registry, path, tag = split_name(name, text)
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
