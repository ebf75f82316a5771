"""Commands that write elsewhere: push, copy, login, logout."""

from __future__ import annotations

import re
import sys
from typing import Any

import click

from ocikit.commands.common import get_store, make_client, parse_platform, platform_option
from ocikit.commands.render import MODES, close_renderer, make_renderer
from ocikit.errors import AuthError, UsageError

_SIZE_RE = re.compile(r"^\s*(\d+)\s*([kmg]?)(i?b?)\s*$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """``1048576``, ``512k``, ``16M``, ``16MiB``, ``1G`` -> bytes (binary units)."""
    m = _SIZE_RE.match(text)
    if not m:
        raise UsageError(f"invalid size {text!r} (want e.g. 16M)")
    return int(m.group(1)) << {"": 0, "k": 10, "m": 20, "g": 30}[m.group(2).lower()]


def _chunk_option(f: Any) -> Any:
    return click.option("--chunk-size", "chunk_size", metavar="SIZE", default=None,
                        help="upload blobs larger than this in chunks of it (default 32M)")(f)


def _progress_option(f: Any) -> Any:
    return click.option("--progress", "progress_mode", type=click.Choice(MODES),
                        default="auto", show_default=True,
                        help="how to show progress on stderr")(f)


def _report(result: Any, quiet: bool) -> None:
    if result.source_digest is None:
        click.echo(f"note: {result.source} has no manifest; the one made for {result.dest} "
                   f"has digest {result.digest}", err=True)
    elif result.converted:
        click.echo(f"note: converted for {result.dest}: digest changed from "
                   f"{result.source_digest} to {result.digest}", err=True)
    if not quiet:
        if result.up_to_date:
            state = "already up to date"
        else:
            state = (f"{result.uploaded} blobs sent, {result.mounted} mounted, "
                     f"{result.existing} already there")
        click.echo(f"{result.dest}: {state}; digest {result.digest}", err=True)
    click.echo(str(result.digest))


@click.command()
@click.option("-q", "--quiet", is_flag=True, help="print only the digest, no progress")
@platform_option()
@click.option("--referrers", is_flag=True,
              help="also push referrers (signatures, SBOMs) of the image")
@_chunk_option
@_progress_option
@click.argument("src")
@click.argument("dest", required=False)
@click.pass_context
def push(ctx: click.Context, quiet: bool, platform: str | None, referrers: bool,
         chunk_size: str | None, progress_mode: str, src: str, dest: str | None) -> None:
    """Upload a stored image (or oci:DIR[:TAG], docker-archive:FILE) to a registry.

    Prints the digest of what was pushed.
    """
    from ocikit.push import push as do_push
    from ocikit.registry.upload import DEFAULT_CHUNK_SIZE

    store = get_store(ctx)
    renderer = make_renderer(progress_mode, quiet)
    try:
        result = do_push(src, dest, store, make_client(renderer),
                         platform=parse_platform(platform), referrers=referrers,
                         progress=renderer,
                         chunk_size=parse_size(chunk_size) if chunk_size else DEFAULT_CHUNK_SIZE)
    finally:
        close_renderer(renderer)
    _report(result, quiet)


@click.command()
@click.option("-q", "--quiet", is_flag=True, help="print only the digest, no progress")
@platform_option()
@click.option("--referrers", is_flag=True,
              help="also copy referrers (signatures, SBOMs, attestations)")
@_chunk_option
@_progress_option
@click.argument("src")
@click.argument("dest")
@click.pass_context
def copy(ctx: click.Context, quiet: bool, platform: str | None, referrers: bool,
         chunk_size: str | None, progress_mode: str, src: str, dest: str) -> None:
    """Copy an image between registries, oci:DIR[:TAG] and docker-archive:FILE.

    An index is copied whole, every platform with it, unless --platform
    picks one. Prints the digest at the destination.
    """
    from ocikit.copy import copy as do_copy
    from ocikit.registry.upload import DEFAULT_CHUNK_SIZE

    store = get_store(ctx)
    renderer = make_renderer(progress_mode, quiet)
    client = make_client(renderer)
    try:
        result = do_copy(src, dest, store=store, client=lambda: client,
                         platform=parse_platform(platform), referrers=referrers,
                         progress=renderer,
                         chunk_size=parse_size(chunk_size) if chunk_size else DEFAULT_CHUNK_SIZE)
    finally:
        close_renderer(renderer)
        client.close()
    _report(result, quiet)


def _read_password_stdin() -> str:
    data = sys.stdin.read()
    # one trailing newline (echo, a here-string) is not part of the password
    if data.endswith("\r\n"):
        data = data[:-2]
    elif data.endswith("\n"):
        data = data[:-1]
    return data


@click.command()
@click.option("-u", "--username", metavar="USER", help="user name")
@click.option("-p", "--password", metavar="PASSWORD", hidden=True,
              help="password (insecure: use --password-stdin)")
@click.option("--password-stdin", is_flag=True, help="read the password from stdin")
@click.argument("host", required=False, default="docker.io")
def login(username: str | None, password: str | None, password_stdin: bool,
          host: str) -> None:
    """Check credentials against a registry and store them in docker's config.json."""
    from ocikit.registry.config import normalize_host
    from ocikit.registry.credentials import Credential, save_credentials

    registry = normalize_host(host)
    if not registry:
        raise UsageError(f"invalid registry {host!r}")
    if password is not None and password_stdin:
        raise UsageError("--password and --password-stdin are mutually exclusive")
    if password is not None:
        click.echo("WARNING! Using --password via the CLI is insecure. Use --password-stdin.",
                   err=True)
    if password_stdin:
        if not username:
            raise UsageError("--password-stdin needs --username")
        password = _read_password_stdin()
    if not username:
        if not sys.stdin.isatty():
            raise UsageError("no username: give -u USER (stdin is not a terminal)")
        username = click.prompt("Username", err=True)
    if password is None:
        if not sys.stdin.isatty():
            raise UsageError("no password: use --password-stdin (stdin is not a terminal)")
        password = click.prompt("Password", hide_input=True, err=True)
    if not password:
        raise UsageError("empty password")
    client = make_client()
    try:
        client.ping(registry, Credential(username, password))
    except AuthError as e:
        raise AuthError(f"login to {registry} failed: {e}", registry=registry,
                        status=e.status) from None
    finally:
        client.close()
    path = save_credentials(registry, username, password)
    click.echo(f"credentials saved in {path}", err=True)
    click.echo("Login Succeeded")


@click.command()
@click.argument("host", required=False, default="docker.io")
def logout(host: str) -> None:
    """Remove a registry's credentials from docker's config.json."""
    from ocikit.registry.config import normalize_host
    from ocikit.registry.credentials import remove_credentials

    registry = normalize_host(host)
    if remove_credentials(registry):
        click.echo(f"Removing login credentials for {registry}")
    else:
        click.echo(f"Not logged in to {registry}")
