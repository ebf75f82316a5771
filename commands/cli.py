"""The ``ocikit`` command group and the one place errors become exit codes."""

from __future__ import annotations

from typing import Any

import click

from ocikit import __version__
from ocikit.commands.exits import EXIT_INTERRUPTED, debug_requested, exit_code_for


class Context:
    """What every command gets: the store location and output switches."""

    def __init__(self, store: str | None, debug: bool) -> None:
        self.store_override = store
        self.debug = debug

    def store(self) -> Any:
        from ocikit.oci.layout import Store
        from ocikit.settings import store_root

        s = Store(store_root(self.store_override))
        s.init()
        return s


class LazyGroup(click.Group):
    """Imports a command's module only when that command runs.

    ``run``, ``start`` and ``exec`` must not pay for importing the registry
    client (requests alone costs ~0.07 s here).
    """

    def __init__(self, *args: Any, lazy: dict[str, str] | None = None, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.lazy = lazy or {}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(self.lazy))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in self.lazy:
            import importlib

            modname, attr = self.lazy[name].split(":")
            cmd = getattr(importlib.import_module(modname), attr)
            assert isinstance(cmd, click.Command)
            return cmd
        return super().get_command(ctx, name)


# command name -> "module:attribute"; each module keeps its imports light.
COMMANDS: dict[str, str] = {
    "pull": "ocikit.commands.images:pull",
    "images": "ocikit.commands.images:images",
    "inspect": "ocikit.commands.images:inspect",
    "tags": "ocikit.commands.images:tags",
    "history": "ocikit.commands.images:history",
    "tag": "ocikit.commands.images:tag",
    "rmi": "ocikit.commands.images:rmi",
    "gc": "ocikit.commands.images:gc",
    "push": "ocikit.commands.push:push",
    "copy": "ocikit.commands.push:copy",
    "login": "ocikit.commands.push:login",
    "logout": "ocikit.commands.push:logout",
    "diff": "ocikit.commands.diff:diff",
    "efficiency": "ocikit.commands.diff:efficiency",
    "unpack": "ocikit.commands.unpack:unpack",
    "run": "ocikit.commands.containers:run",
    "create": "ocikit.commands.containers:create",
    "start": "ocikit.commands.containers:start",
    "stop": "ocikit.commands.containers:stop",
    "kill": "ocikit.commands.containers:kill",
    "rm": "ocikit.commands.containers:rm",
    "ps": "ocikit.commands.containers:ps",
    "exec": "ocikit.commands.containers:exec_",
    "logs": "ocikit.commands.containers:logs",
    "container": "ocikit.commands.containers:container",
    "commit": "ocikit.commands.containers:commit",
    "volume": "ocikit.commands.containers:volume",
}


@click.group(cls=LazyGroup, lazy=COMMANDS, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--store", "store", metavar="DIR", help="store root (default $OCIKIT_STORE)")
@click.option("--debug", is_flag=True, help="show tracebacks")
@click.version_option(version=__version__, prog_name="ocikit")
@click.pass_context
def cli(ctx: click.Context, store: str | None, debug: bool) -> None:
    """ocikit: pull, push, unpack, diff and run OCI images, without a daemon."""
    ctx.obj = Context(store, debug)


def run(argv: list[str]) -> int:
    debug = debug_requested(argv)
    try:
        # Without standalone mode click returns ctx.exit()'s code instead of raising.
        rc = cli.main(args=argv, prog_name="ocikit", standalone_mode=False)
        return rc if isinstance(rc, int) else 0
    except click.exceptions.Exit as e:
        return int(e.exit_code)
    except click.ClickException as e:
        e.show()
        return int(e.exit_code)
    except click.exceptions.Abort:
        return EXIT_INTERRUPTED
    except (Exception, KeyboardInterrupt) as e:
        return exit_code_for(e, debug)
