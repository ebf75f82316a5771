"""The options of ``run`` and ``create``, declared once for two parsers.

click builds the commands from this table (``commands/containers.py``). The
container start path (``commands/fastrun.py``) parses the same table with
the small parser below instead, because importing click costs more here
than starting the container itself. That parser accepts only what click
would accept with the same meaning; for anything else (``--help``, a
malformed or unknown option, a value click would refuse) it returns None
and the command goes to click, which then explains the error.

Nothing here may import click, typing or dataclasses (see fastrun.py).
"""

from __future__ import annotations

import os

# Not typing.TYPE_CHECKING: importing typing costs ~15 ms at every container start.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from typing import Any

    from ocikit.oci.descriptor import Platform
    from ocikit.oci.runtime.options import RunOptions

FLAG = "flag"  # a switch: False unless given
VALUE = "value"  # takes one value; the last one given wins
MULTI = "multi"  # takes one value each time; all of them, in order


class Flag:
    """One option: its spellings, where its value goes, and what click checks."""

    __slots__ = ("choices", "default", "dest", "existing_file", "help", "integer", "kind",
                 "metavar", "names", "show_default")

    def __init__(self, names: tuple[str, ...], dest: str, kind: str = VALUE, *,
                 default: str | None = None, metavar: str | None = None, help: str = "",
                 choices: tuple[str, ...] = (), integer: bool = False,
                 existing_file: bool = False, show_default: bool = False) -> None:
        self.names = names
        self.dest = dest
        self.kind = kind
        self.default = default
        self.metavar = metavar
        self.help = help
        self.choices = choices
        self.integer = integer
        self.existing_file = existing_file
        self.show_default = show_default

    def empty(self) -> bool | str | tuple[str, ...] | None:
        """The value when the option is not given, as click reports it."""
        if self.kind == FLAG:
            return False
        if self.kind == MULTI:
            return ()
        return self.default


DETACH = Flag(("-d", "--detach"), "detach", FLAG, help="run in the background, print the id")

# run and create share these (run adds DETACH in front).
RUN_FLAGS: tuple[Flag, ...] = (
    Flag(("--name",), "name", default="", help="the container's name"),
    Flag(("--entrypoint",), "entrypoint", help="replace the image's entrypoint"),
    Flag(("-e", "--env"), "env", MULTI, metavar="K=V", help="set a variable"),
    Flag(("--env-file",), "env_files", MULTI, metavar="FILE", existing_file=True,
         help="read variables from a file (K=V or K lines, # comments)"),
    Flag(("-v", "--volume"), "volumes", MULTI, metavar="SRC:DST[:ro]",
         help="a named volume or a host folder"),
    Flag(("-w", "--workdir"), "workdir", help="working directory inside"),
    Flag(("-u", "--user"), "user", metavar="NAME|UID[:GID]"),
    Flag(("--network",), "network", default="none", choices=("none", "host"),
         show_default=True),
    Flag(("-p", "--publish"), "publish", MULTI, metavar="[IP:]HOST:CTR[/tcp]"),
    Flag(("-i", "--interactive"), "interactive", FLAG, help="keep stdin open"),
    Flag(("-t", "--tty"), "tty", FLAG, help="allocate a pseudo-terminal"),
    Flag(("--memory", "-m"), "memory", help="memory limit (e.g. 64m)"),
    Flag(("--cpus",), "cpus", help="CPU limit (e.g. 0.5)"),
    Flag(("--pids-limit",), "pids_limit", integer=True),
    Flag(("--hostname", "-h"), "hostname", default=""),
    Flag(("--rm",), "auto_remove", FLAG, help="remove the container when it exits"),
    Flag(("--platform",), "platform", metavar="OS/ARCH[/VARIANT]"),
)


class ParsedRun:
    """``[OPTIONS] IMAGE [COMMAND...]`` taken apart: ``values`` by each flag's dest."""

    __slots__ = ("command", "image", "values")

    def __init__(self, values: dict[str, Any], image: str, command: tuple[str, ...]) -> None:
        self.values = values
        self.image = image
        self.command = command


def _convert(flag: Flag, text: str) -> str | int | None:
    """The value click would pass for ``text``; None where click would refuse it
    or might read it differently."""
    if flag.choices and text not in flag.choices:
        return None
    if flag.integer:
        digits = text[1:] if text.startswith("-") else text
        return int(text) if digits.isascii() and digits.isdigit() else None
    if flag.existing_file:
        try:
            st = os.stat(text)
        except (OSError, ValueError):
            return None
        if (st.st_mode & 0o170000) == 0o040000:  # a directory: click refuses it
            return None
    return text


def parse(argv: Sequence[str], flags: Sequence[Flag]) -> ParsedRun | None:
    """Parse as click does with interspersed arguments off: options up to the
    first positional (or ``--``), which is the image; the rest is the command."""
    by_name = {n: f for f in flags for n in f.names}
    values: dict[str, Any] = {f.dest: f.empty() for f in flags}
    multi: dict[str, list[str]] = {}

    def take(flag: Flag, text: str) -> bool:
        v = _convert(flag, text)
        if v is None:
            return False
        if flag.kind == MULTI:
            multi.setdefault(flag.dest, []).append(text)
        else:
            values[flag.dest] = v
        return True

    i, n = 0, len(argv)

    def take_next(flag: Flag) -> bool:
        """The value is the next argument, whatever it looks like (as click)."""
        nonlocal i
        i += 1
        return i < n and take(flag, argv[i])

    while i < n:
        arg = argv[i]
        if arg == "--":
            i += 1
            break
        if not arg.startswith("-") or arg == "-":
            break
        if arg.startswith("--"):
            name, eq, attached = arg.partition("=")
            flag = by_name.get(name)
            if flag is None:
                return None
            if flag.kind == FLAG:
                if eq:
                    return None
                values[flag.dest] = True
            elif eq:
                if not take(flag, attached):
                    return None
            elif not take_next(flag):
                return None
            i += 1
            continue
        # a cluster of short options: -it, -e K=V, -eK=V, -ite K=V
        j = 1
        while j < len(arg):
            flag = by_name.get("-" + arg[j])
            if flag is None:
                return None
            if flag.kind == FLAG:
                values[flag.dest] = True
                j += 1
                continue
            rest = arg[j + 1:]
            if not (take(flag, rest) if rest else take_next(flag)):
                return None
            break
        i += 1
    if i >= n:
        return None  # no image: click says so
    for dest, items in multi.items():
        values[dest] = tuple(items)
    return ParsedRun(values, argv[i], tuple(argv[i + 1:]))


def run_options(values: Mapping[str, Any], command: Sequence[str],
                platform: Platform | None = None) -> RunOptions:
    """What either parser found, with docker's meaning (``platform`` parsed by the caller)."""
    from ocikit.errors import UsageError
    from ocikit.oci.runtime.options import RunOptions, read_env_file

    if values["network"] == "host" and values["publish"]:
        raise UsageError("-p/--publish cannot be used with --network host")
    # as docker: the files first, then -e on top
    env = [e for path in values["env_files"] for e in read_env_file(path)] + list(values["env"])
    return RunOptions(command=tuple(command), name=values["name"],
                      entrypoint=values["entrypoint"], env=tuple(env),
                      volumes=tuple(values["volumes"]), workdir=values["workdir"],
                      user=values["user"], network=values["network"],
                      publish=tuple(values["publish"]), tty=values["tty"],
                      interactive=values["interactive"], memory=values["memory"],
                      cpus=values["cpus"], pids_limit=values["pids_limit"],
                      auto_remove=values["auto_remove"], hostname=values["hostname"],
                      platform=platform)
