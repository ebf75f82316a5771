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
]
