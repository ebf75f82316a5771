"""Docker's reference grammar for the name part (``host/path:tag``), without dataclasses.

``Reference.parse`` builds on this; the container start path
(``commands/fastrun.py``) calls it directly to find a stored image's name
without importing the typed reference and digest classes.
Grammar from distribution's reference package (reference/regexp.go),
re-expressed here.
"""

from __future__ import annotations

import re

from ocikit.errors import InvalidReferenceError

DOCKER_HUB = "docker.io"
DEFAULT_TAG = "latest"

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_COMPONENT_RE = re.compile(rf"^{_COMPONENT}$")
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN_RE = re.compile(
    rf"^(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[a-fA-F0-9:]+\])(?::[0-9]+)?$"
)
_TAG_RE = re.compile(r"^[\w][\w.-]{0,127}$")
_MAX_NAME = 255


def split_name(name: str, text: str) -> tuple[str, str, str]:
    """``name`` (``text`` without its ``@digest``) as (registry, repository, tag).

    The tag is empty when none was given; ``text`` is what errors quote.
    """
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
    return registry, path, tag
