"""The TOML config of SPEC.md: per-registry mirrors, ``insecure`` and ``ca_file``.

```toml
[registries."docker.io"]
mirrors = ["http://127.0.0.1:5000"]
[registries."myreg.example:5000"]
insecure = true
ca_file = "/path/to/ca.pem"
```

Registry keys are host[:port] as in image references; ``index.docker.io`` and
``registry-1.docker.io`` mean ``docker.io``. A relative ``ca_file`` is read
relative to the config file's folder.
"""

from __future__ import annotations

import ipaddress
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit

from ocikit import settings
from ocikit.errors import UsageError
from ocikit.oci.reference import DOCKER_HUB

_HUB_ALIASES = ("index.docker.io", "registry-1.docker.io")
_REGISTRY_KEYS = frozenset({"mirrors", "insecure", "ca_file"})


def normalize_host(text: str) -> str:
    """``https://Host:5000/v2/`` -> ``host:5000``; Docker Hub's aliases -> docker.io."""
    text = text.strip()
    if "://" in text:
        text = urlsplit(text).netloc
    text = text.split("/", 1)[0].lower()
    if text in _HUB_ALIASES:
        return DOCKER_HUB
    return text


def split_host_port(host: str) -> tuple[str, int | None]:
    """``[::1]:5000`` -> ``("::1", 5000)``; ``localhost`` -> ``("localhost", None)``."""
    if host.startswith("["):
        end = host.find("]")
        name, rest = host[1:end], host[end + 1:]
        port = rest[1:] if rest.startswith(":") else ""
    else:
        name, _, port = host.partition(":")
    return name, int(port) if port.isdigit() else None


def is_loopback(host: str) -> bool:
    """True for localhost, 127.0.0.0/8 and ::1, with or without a port."""
    name, _ = split_host_port(host)
    if name.lower() == "localhost" or name.lower().endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class Mirror:
    """A mirror endpoint: ``host`` is host[:port]; ``scheme`` is "" when not given."""

    host: str
    scheme: str = ""

    @classmethod
    def parse(cls, text: str, *, where: str) -> Mirror:
        raw = text.strip()
        scheme = ""
        if "://" in raw:
            parts = urlsplit(raw)
            scheme = parts.scheme.lower()
            if scheme not in ("http", "https"):
                raise UsageError(f"{where}: mirror {text!r} must be an http:// or https:// URL")
            if parts.path.rstrip("/") not in ("", "/v2") or parts.query or parts.fragment:
                raise UsageError(f"{where}: mirror {text!r} must not have a path")
            host = parts.netloc.lower()
        else:
            host = raw.rstrip("/").lower()
            if "/" in host:
                raise UsageError(f"{where}: mirror {text!r} must not have a path")
        if not host or "@" in host:
            raise UsageError(f"{where}: invalid mirror {text!r}")
        return cls(host, scheme)

    def __str__(self) -> str:
        return f"{self.scheme}://{self.host}" if self.scheme else self.host


@dataclass(frozen=True)
class RegistryConfig:
    """Settings for one registry (or mirror) host; defaults when not configured."""

    host: str
    mirrors: tuple[Mirror, ...] = ()
    insecure: bool = False
    ca_file: Path | None = None

    @property
    def loopback(self) -> bool:
        return is_loopback(self.host)


@dataclass(frozen=True)
class Config:
    registries: Mapping[str, RegistryConfig] = field(
        default_factory=lambda: MappingProxyType({}), hash=False)
    path: Path | None = None

    @classmethod
    def load(cls, path: Path | None = None) -> Config:
        """Read the config file; a missing file is an empty config."""
        path = path if path is not None else settings.config_path()
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return cls(path=path)
        except OSError as e:
            raise UsageError(f"cannot read config {path}: {e.strerror or e}") from None
        try:
            doc = tomllib.loads(raw.decode("utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise UsageError(f"invalid config {path}: {e}") from None
        return cls.from_dict(doc, path=path)

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any], *, path: Path | None = None) -> Config:
        where = str(path) if path is not None else "config"
        regs = doc.get("registries", {})
        if not isinstance(regs, dict):
            raise UsageError(f"{where}: [registries] must be a table")
        out: dict[str, RegistryConfig] = {}
        for key, table in regs.items():
            host = normalize_host(str(key))
            here = f"{where}: registries.{key!r}"
            if not host:
                raise UsageError(f"{here}: empty registry name")
            if not isinstance(table, dict):
                raise UsageError(f"{here} must be a table")
            unknown = sorted(set(table) - _REGISTRY_KEYS)
            if unknown:
                raise UsageError(f"{here}: unknown key {unknown[0]!r}")
            mirrors = table.get("mirrors", [])
            if not isinstance(mirrors, list) or not all(isinstance(m, str) for m in mirrors):
                raise UsageError(f"{here}: mirrors must be a list of URLs")
            insecure = table.get("insecure", False)
            if not isinstance(insecure, bool):
                raise UsageError(f"{here}: insecure must be true or false")
            ca = table.get("ca_file")
            ca_file: Path | None = None
            if ca is not None:
                if not isinstance(ca, str) or not ca:
                    raise UsageError(f"{here}: ca_file must be a path")
                ca_file = Path(ca).expanduser()
                if not ca_file.is_absolute() and path is not None:
                    ca_file = path.parent / ca_file
            out[host] = RegistryConfig(
                host=host,
                mirrors=tuple(Mirror.parse(m, where=here) for m in mirrors),
                insecure=insecure,
                ca_file=ca_file,
            )
        return cls(registries=MappingProxyType(out), path=path)

    def registry(self, host: str) -> RegistryConfig:
        """The settings for ``host`` (a registry or mirror), defaults if absent."""
        key = normalize_host(host)
        found = self.registries.get(key)
        return found if found is not None else RegistryConfig(host=key)


def load_config(path: Path | None = None) -> Config:
    """The config at ``path`` or ``settings.config_path()``; empty if there is none."""
    return Config.load(path)
