"""The one exception hierarchy of ocikit.

Library code raises these with the names involved (reference, digest,
registry, path); only ``ocikit.commands`` turns them into a message and an
exit code.
"""

from __future__ import annotations


class OcikitError(Exception):
    """Base of every error ocikit raises on purpose."""

    exit_code = 1


class UsageError(OcikitError):
    """Bad usage: a malformed reference, a flag that makes no sense."""

    exit_code = 2


class InvalidReferenceError(UsageError):
    """A string that is not a valid image reference."""


class NotFoundError(OcikitError):
    """An image, tag, blob or container that does not exist."""


class RegistryError(OcikitError):
    """A registry answered with an error or could not be reached."""

    def __init__(self, message: str, *, registry: str = "", status: int | None = None) -> None:
        super().__init__(message)
        self.registry = registry
        self.status = status


class AuthError(RegistryError):
    """The registry refused our credentials (or wants some)."""


class VerificationError(OcikitError):
    """Content whose digest or size is not what its descriptor says."""


class UnsupportedError(OcikitError):
    """A format ocikit knows and refuses (schema1, unknown media types)."""


class LayerError(OcikitError):
    """A layer that cannot be applied: corrupt, truncated or unsafe."""

    def __init__(self, message: str, *, layer: str = "", entry: str = "") -> None:
        super().__init__(message)
        self.layer = layer
        self.entry = entry


class UnsafeLayerError(LayerError):
    """A layer entry that would reach outside the root filesystem."""


class StoreError(OcikitError):
    """The local store is unreadable, locked badly or full."""


class ContainerError(OcikitError):
    """A container could not be set up (docker's exit code 125)."""

    exit_code = 125


class ConflictError(ContainerError):
    """Refused in the present state, nothing set up (docker's exit 1): removing a
    running container or a volume in use, killing a container that is not running."""

    exit_code = 1
