"""ocikit: a daemonless OCI image toolkit.

The public API lives in submodules imported on first use, so that
``import ocikit`` stays cheap for the container start path.
"""

from __future__ import annotations

from ocikit.errors import (
    AuthError,
    ContainerError,
    InvalidReferenceError,
    LayerError,
    NotFoundError,
    OcikitError,
    RegistryError,
    StoreError,
    UnsafeLayerError,
    UnsupportedError,
    UsageError,
    VerificationError,
)

__version__ = "0.1.0"

# Not typing.TYPE_CHECKING: importing typing costs ~15 ms at every container start.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from ocikit.api import (
        diff_images,
        image_efficiency,
        inspect,
        open_store,
        pull,
        run,
        unpack,
    )

_API = ("pull", "inspect", "unpack", "run", "open_store", "diff_images", "image_efficiency")


def __getattr__(name: str) -> object:
    # The API functions import their modules on first use, so that
    # `import ocikit` stays cheap for the container start path.
    if name in _API:
        from ocikit import api

        return getattr(api, name)
    raise AttributeError(f"module 'ocikit' has no attribute {name!r}")


__all__ = [
    "AuthError",
    "ContainerError",
    "InvalidReferenceError",
    "LayerError",
    "NotFoundError",
    "OcikitError",
    "RegistryError",
    "StoreError",
    "UnsafeLayerError",
    "UnsupportedError",
    "UsageError",
    "VerificationError",
    "__version__",
    "diff_images",
    "image_efficiency",
    "inspect",
    "open_store",
    "pull",
    "run",
    "unpack",
]
