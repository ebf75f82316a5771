"""Container commands: run, create, start, stop, rm, ps, exec, logs, container, commit, volume.

As docker: ``run``/``create``/``start -a``/``exec`` exit 125 when the
container cannot be set up (image not found included), 126/127 when the
command cannot run, 128+N after signal N, else the process's own code.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

from ocikit.commands import runflags
from ocikit.commands.common import get_store, parse_platform, print_json, table
from ocikit.commands.exits import setup_errors
from ocikit.commands.runflags import DETACH, FLAG, MULTI, RUN_FLAGS, Flag
from ocikit.errors import OcikitError, UsageError

F = TypeVar("F", bound=Callable[..., Any])

EXIT_SETUP = 125


def _click_option(flag: Flag) -> Callable[[F], F]:
    kw: dict[str, Any] = {"help": flag.help or None, "metavar": flag.metavar}
    if flag.kind == FLAG:
        kw["is_flag"] = True
    else:
        kw["default"] = flag.default
        kw["multiple"] = flag.kind == MULTI
    if flag.choices:
        kw["type"] = click.Choice(list(flag.choices))
        kw["show_default"] = flag.show_default
    elif flag.integer:
        kw["type"] = int
    elif flag.existing_file:
        kw["type"] = click.Path(exists=True, dir_okay=False)
    option: Callable[[F], F] = click.option(*flag.names, flag.dest, **kw)
    return option


def run_options(f: F) -> F:
    for flag in reversed(RUN_FLAGS):
        f = _click_option(flag)(f)
    return f


def _options(kw: dict[str, Any], command: tuple[str, ...]) -> Any:
    return runflags.run_options(kw, command, parse_platform(kw["platform"]))


class _LazyRenderer:
    """Progress that draws only once there is progress to show.

    A stored image reports nothing, so ``run`` then writes nothing of its own
    to the terminal (no cursor codes before the container's output) and never
    starts the renderer's thread, as ``docker run`` of a present image.
    """

    def __init__(self) -> None:
        self._r: Any = None

    def __call__(self, ev: Any) -> None:
        if self._r is None:
            from ocikit.commands.render import make_renderer

            self._r = make_renderer("auto")
        self._r(ev)

    def close(self) -> None:
        if self._r is not None:
            from ocikit.commands.render import close_renderer

            close_renderer(self._r)
            self._r = None


def _create(ctx: click.Context, image: str, command: tuple[str, ...], kw: dict[str, Any]) -> Any:
    from ocikit.commands.common import make_client
    from ocikit.containers import create

    opts = _options(kw, command)
    renderer = _LazyRenderer()
    try:
        with setup_errors():
            return create(get_store(ctx), image, opts,
                          client_factory=lambda: make_client(renderer), progress=renderer)
    finally:
        renderer.close()


_CTX = {"ignore_unknown_options": False, "allow_interspersed_args": False}


@click.command(context_settings=_CTX)
@_click_option(DETACH)
@run_options
@click.argument("image")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@click.pass_context
def run(ctx: click.Context, /, detach: bool, image: str, command: tuple[str, ...],
        **kw: Any) -> None:
    """Create and start a container; in the foreground its exit code is ocikit's."""
    from ocikit.oci.runtime.containers import run_foreground, start_detached

    container = _create(ctx, image, command, kw)
    if detach:
        start_detached(container)
        click.echo(container.id)
        return
    code = run_foreground(container)
    ctx.exit(code)


@click.command(context_settings=_CTX)
@run_options
@click.argument("image")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@click.pass_context
def create(ctx: click.Context, /, image: str, command: tuple[str, ...], **kw: Any) -> None:
    """Create a container without starting it; prints its id."""
    container = _create(ctx, image, command, kw)
    click.echo(container.id)


def _get(ctx: click.Context, name: str) -> Any:
    from ocikit.oci.runtime.containers import get_container

    return get_container(get_store(ctx).containers_dir, name)


def _each(ctx: click.Context, names: tuple[str, ...], action: Callable[[str], None], *,
          exit_code: int | None = None) -> None:
    """Apply ``action`` to every name as docker does: echo each success, report each
    failure on its own line, go on, and exit with the failure's code at the end."""
    failed: OcikitError | None = None
    for n in names:
        try:
            action(n)
            click.echo(n)
        except OcikitError as e:
            click.echo(f"ocikit: {e}", err=True)
            failed = e
    if failed is not None:
        ctx.exit(exit_code if exit_code is not None else failed.exit_code)


@click.command()
@click.option("-a", "--attach", is_flag=True, help="attach and wait, exit with its code")
@click.option("-i", "--interactive", is_flag=True, help="attach stdin")
@click.argument("names", nargs=-1, required=True)
@click.pass_context
def start(ctx: click.Context, attach: bool, interactive: bool, names: tuple[str, ...]) -> None:
    """Start created or stopped containers."""
    from ocikit.oci.runtime.containers import run_foreground, start_detached

    if attach:
        if len(names) != 1:
            raise UsageError("start -a takes exactly one container")
        c = _get(ctx, names[0])
        ctx.exit(run_foreground(c))

    def one(n: str) -> None:
        c = _get(ctx, n)
        # docker: starting a running container changes nothing and succeeds
        if c.state().status != "running":
            start_detached(c)

    # without -a a failed start is docker's exit 1, not run's 125/126/127
    _each(ctx, names, one, exit_code=1)


@click.command()
@click.option("-t", "--time", "timeout", type=int, default=None,
              help="seconds to wait before SIGKILL (default: the container's, 10)")
@click.argument("names", nargs=-1, required=True)
@click.pass_context
def stop(ctx: click.Context, timeout: int | None, names: tuple[str, ...]) -> None:
    """Stop running containers: StopSignal (SIGTERM), then SIGKILL after the timeout."""
    from ocikit.oci.runtime.containers import stop as do_stop

    _each(ctx, names, lambda n: do_stop(_get(ctx, n), timeout))


@click.command()
@click.option("-s", "--signal", "sig", default="SIGKILL", show_default=True)
@click.argument("names", nargs=-1, required=True)
@click.pass_context
def kill(ctx: click.Context, sig: str, names: tuple[str, ...]) -> None:
    """Send a signal to running containers."""
    from ocikit.oci.runtime.containers import kill as do_kill

    _each(ctx, names, lambda n: do_kill(_get(ctx, n), sig))


@click.command()
@click.option("-f", "--force", is_flag=True, help="kill a running container first")
@click.option("-v", "--volumes", is_flag=True, help="ignored (named volumes outlive containers)")
@click.argument("names", nargs=-1, required=True)
@click.pass_context
def rm(ctx: click.Context, force: bool, volumes: bool, names: tuple[str, ...]) -> None:
    """Remove containers (their writable layers; images and volumes stay)."""
    from ocikit.oci.runtime.containers import remove

    _each(ctx, names, lambda n: remove(_get(ctx, n), force=force))


def _epoch(rfc3339: str) -> float | None:
    import calendar
    import time

    try:
        return float(calendar.timegm(time.strptime(rfc3339[:19], "%Y-%m-%dT%H:%M:%S")))
    except ValueError:
        return None


def human_duration(seconds: float) -> str:
    """docker's (go-units) HumanDuration: "5 seconds", "About a minute", "3 hours"."""
    s = int(seconds)
    if s < 1:
        return "Less than a second"
    if s == 1:
        return "1 second"
    if s < 60:
        return f"{s} seconds"
    minutes = round(seconds / 60)
    if minutes == 1:
        return "About a minute"
    if minutes < 60:
        return f"{minutes} minutes"
    hours = round(seconds / 3600)
    if hours == 1:
        return "About an hour"
    if hours < 48:
        return f"{hours} hours"
    if hours < 24 * 7 * 2:
        return f"{hours // 24} days"
    if hours < 24 * 30 * 2:
        return f"{hours // (24 * 7)} weeks"
    if hours < 24 * 365 * 2:
        return f"{hours // (24 * 30)} months"
    return f"{hours // (24 * 365)} years"


def _ago(rfc3339: str, now: float) -> str:
    t = _epoch(rfc3339)
    return "" if t is None else f"{human_duration(max(0.0, now - t))} ago"


def _status_text(s: Any, now: float) -> str:
    """docker ps's STATUS: "Up 3 minutes", "Exited (1) 2 seconds ago", "Created"."""
    if s.status == "running":
        t = _epoch(s.started_at)
        return "Up" if t is None else f"Up {human_duration(max(0.0, now - t))}"
    if s.status == "exited":
        ago = _ago(s.finished_at, now)
        return f"Exited ({s.exit_code})" + (f" {ago}" if ago else "")
    return str(s.status).capitalize()


def _ports_text(c: Any) -> str:
    """docker ps's PORTS: 0.0.0.0:8080->80/tcp."""
    return ", ".join(f"{'[' + p.host_ip + ']' if ':' in p.host_ip else p.host_ip or '0.0.0.0'}"
                     f":{p.host_port}->{p.container_port}/{p.protocol}" for p in c.spec.ports)


@click.command()
@click.option("-a", "--all", "show_all", is_flag=True, help="also stopped containers")
@click.option("-q", "--quiet", is_flag=True, help="ids only")
@click.option("--json", "as_json", is_flag=True, help="JSON output")
@click.option("--no-trunc", is_flag=True)
@click.pass_context
def ps(ctx: click.Context, show_all: bool, quiet: bool, as_json: bool, no_trunc: bool) -> None:
    """List containers (running ones unless -a)."""
    import time

    from ocikit.oci.runtime.containers import list_containers

    cs = list_containers(get_store(ctx).containers_dir, all=show_all)
    if quiet:
        for c in cs:
            click.echo(c.id if no_trunc else c.short_id)
        return
    now = time.time()
    states = {c.id: c.state() for c in cs}
    if as_json:
        print_json([{"Id": c.id, "Name": c.name, "Image": c.spec.image,
                     "Command": list(c.spec.process.args), "Created": c.spec.created,
                     "State": states[c.id].status, "Status": _status_text(states[c.id], now),
                     "ExitCode": states[c.id].exit_code, "Pid": states[c.id].pid,
                     "Ports": _ports_text(c)} for c in cs])
        return

    def cmd(c: Any) -> str:
        s = " ".join(c.spec.process.args)
        return '"' + (s if no_trunc or len(s) <= 20 else s[:19] + "…") + '"'

    click.echo(table([[c.id if no_trunc else c.short_id, c.spec.image, cmd(c),
                       _ago(c.spec.created, now), _status_text(states[c.id], now),
                       _ports_text(c), c.name]
                      for c in cs],
                     ["CONTAINER ID", "IMAGE", "COMMAND", "CREATED", "STATUS", "PORTS",
                      "NAMES"]))


@click.command(name="exec", context_settings=_CTX)
@click.option("-i", "--interactive", is_flag=True)
@click.option("-t", "--tty", is_flag=True)
@click.option("-e", "--env", multiple=True, metavar="K=V")
@click.option("-u", "--user", default=None)
@click.option("-w", "--workdir", default=None)
@click.argument("name")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@click.pass_context
def exec_(ctx: click.Context, interactive: bool, tty: bool, env: tuple[str, ...],
          user: str | None, workdir: str | None, name: str, command: tuple[str, ...]) -> None:
    """Run a command in a running container."""
    from ocikit.oci.runtime.containers import exec_in
    from ocikit.oci.runtime.options import merge_env
    from ocikit.oci.runtime.spec import ProcessSpec

    c = _get(ctx, name)
    p = c.spec.process
    process = ProcessSpec(args=command, env=merge_env(p.env, env),
                          cwd=workdir if workdir is not None else p.cwd,
                          user=user if user is not None else p.user,
                          terminal=tty, interactive=interactive)
    ctx.exit(exec_in(c, process))


@click.command()
@click.option("-f", "--follow", is_flag=True, help="keep printing new output")
@click.argument("name")
@click.pass_context
def logs(ctx: click.Context, follow: bool, name: str) -> None:
    """The output of a detached container."""
    from ocikit.oci.runtime.containers import write_logs

    c = _get(ctx, name)
    sys.stdout.flush()
    sys.stderr.flush()
    # as docker: what the container wrote to stderr comes out on stderr
    write_logs(c, sys.stdout.fileno(), sys.stderr.fileno(), follow=follow)


@click.group()
def container() -> None:
    """Container inspection: inspect, diff, ls."""


@container.command(name="inspect")
@click.argument("names", nargs=-1, required=True)
@click.pass_context
def container_inspect(ctx: click.Context, names: tuple[str, ...]) -> None:
    """JSON of containers, with docker's key names."""
    print_json([_get(ctx, n).inspect() for n in names])


@container.command(name="diff")
@click.argument("name")
@click.pass_context
def container_diff(ctx: click.Context, name: str) -> None:
    """A/C/D lines of the container's changes against its image, as docker diff."""
    from ocikit.oci.runtime.commit import container_diff as changes

    c = _get(ctx, name)
    for ch in changes(c.spec.upper_dir, c.lower_dirs()):
        click.echo(str(ch))


container.add_command(ps, name="ls")
container.add_command(rm, name="rm")


@click.command()
@click.option("-a", "--author", default="", help="the author recorded in the image")
@click.option("-m", "--message", default="", help="a comment for the history entry")
@click.argument("name")
@click.argument("ref")
@click.pass_context
def commit(ctx: click.Context, author: str, message: str, name: str, ref: str) -> None:
    """A new image whose top layer is the container's changes."""
    from ocikit.containers import commit as do_commit
    from ocikit.oci.reference import Reference

    reference = Reference.parse(ref)
    desc = do_commit(get_store(ctx), _get(ctx, name), reference, author=author,
                     message=message)
    click.echo(str(desc.digest))


@click.group()
def volume() -> None:
    """Named volumes: create, ls, rm."""


@volume.command(name="create")
@click.argument("name")
@click.pass_context
def volume_create(ctx: click.Context, name: str) -> None:
    from ocikit.oci.runtime.volumes import create_volume

    create_volume(get_store(ctx).volumes_dir, name)
    click.echo(name)


@volume.command(name="ls")
@click.option("--json", "as_json", is_flag=True)
@click.option("-q", "--quiet", is_flag=True)
@click.pass_context
def volume_ls(ctx: click.Context, as_json: bool, quiet: bool) -> None:
    from ocikit.oci.runtime.volumes import list_volumes

    root = get_store(ctx).volumes_dir
    names = list_volumes(root)
    if as_json:
        print_json([{"Name": n, "Mountpoint": os.path.join(root, n, "_data")} for n in names])
    elif quiet:
        for n in names:
            click.echo(n)
    else:
        click.echo(table([[n] for n in names], ["VOLUME NAME"]))


@volume.command(name="rm")
@click.option("-f", "--force", is_flag=True)
@click.argument("names", nargs=-1, required=True)
@click.pass_context
def volume_rm(ctx: click.Context, force: bool, names: tuple[str, ...]) -> None:
    from ocikit.oci.runtime.containers import list_containers
    from ocikit.oci.runtime.volumes import remove_volume

    store = get_store(ctx)

    def one(n: str) -> None:
        users = [c.name for c in list_containers(store.containers_dir)
                 if any(m.kind == "volume" and m.name == n for m in c.spec.mounts)]
        remove_volume(store.volumes_dir, n, in_use_by=() if force else users)

    _each(ctx, names, one)
