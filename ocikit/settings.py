"""Where things are: the store, the config file, docker's config folder."""

from __future__ import annotations

import os
from pathlib import Path


def store_root(override: str | os.PathLike[str] | None = None) -> Path:
    # Absolute, because containers record their folders and chdir around.
    if override:
        return Path(override).absolute()
    env = os.environ.get("OCIKIT_STORE")
    if env:
        return Path(env).absolute()
    if os.geteuid() == 0:
        return Path("/var/lib/ocikit")
    data = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data) / "ocikit"


def config_path() -> Path:
    env = os.environ.get("OCIKIT_CONFIG")
    if env:
        return Path(env)
    conf = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(conf) / "ocikit" / "config.toml"


def docker_config_dir() -> Path:
    env = os.environ.get("DOCKER_CONFIG")
    if env:
        return Path(env)
    return Path.home() / ".docker"
