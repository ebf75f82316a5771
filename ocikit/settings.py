"""Where things are: the store, the config file, docker's config folder.

pathlib is imported where a Path is returned: the container start path asks
only for ``store_dir`` and does not pay for it.
"""

from __future__ import annotations

import os

# Not typing.TYPE_CHECKING: importing typing costs ~15 ms at every container start.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from pathlib import Path


def store_dir(override: str | os.PathLike[str] | None = None) -> str:
    # Absolute, because containers record their folders and chdir around.
    if override:
        return os.path.abspath(override)
    env = os.environ.get("OCIKIT_STORE")
    if env:
        return os.path.abspath(env)
    if os.geteuid() == 0:
        return "/var/lib/ocikit"
    data = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local",
                                                           "share")
    return os.path.join(os.path.abspath(data), "ocikit")


def store_root(override: str | os.PathLike[str] | None = None) -> Path:
    from pathlib import Path

    return Path(store_dir(override))


def config_path() -> Path:
    from pathlib import Path

    env = os.environ.get("OCIKIT_CONFIG")
    if env:
        return Path(env)
    conf = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(conf) / "ocikit" / "config.toml"


def docker_config_dir() -> Path:
    from pathlib import Path

    env = os.environ.get("DOCKER_CONFIG")
    if env:
        return Path(env)
    return Path.home() / ".docker"
